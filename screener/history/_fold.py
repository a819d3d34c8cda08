"""Reading a partition's history from a :class:`~screener.history.store.HistoryStore`: the segments folded over
the base with the engine's own semantics (:func:`fold`, which :meth:`HistoryStore.view` and
:meth:`HistoryStore.compact` use), and the one-read load of a pruned state from a base with segments
(:func:`load_folded`, for :meth:`HistoryStore.load`). Functions of the store's read primitives (``_scan``,
``_read_frame``, ``manifest``); they raise what those raise, and :class:`StoreError` where the store's methods
would."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import polars as pl

from screener.history._errors import StoreError
from screener.history._frames import CONTROL_SCHEMA, Parallel, keys_expr
from screener.history._frames import fact_rows_schema as _fact_rows_schema
from screener.history._frames import upd_schema as _upd_schema
from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA, RETRACTED_SCHEMA, FactFilter, PatientState, apply_frames

if TYPE_CHECKING:
    from screener.history.store import HistoryStore

__all__ = ["fold", "load_folded", "read_segments"]


def fold(
    store: HistoryStore, d: str, doc: dict[str, Any], parallel: Parallel = "auto"
) -> tuple[pl.LazyFrame, pl.LazyFrame, pl.DataFrame, int]:
    """The history of the partition in folder ``d`` with manifest ``doc``, as :meth:`HistoryStore.view` returns
    it: the base scanned lazily, the segments folded in (eagerly) for just the patients they touch."""
    base = doc.get("base")
    base_p = store._scan([f"{d}/{base}/persons.parquet"] if base else [], PERSONS_SCHEMA)
    base_f = store._scan([f"{d}/{base}/facts.parquet"] if base else [], FACTS_SCHEMA, parallel)
    base_r = (
        store._read_frame(f"{d}/{base}/retracted.parquet", RETRACTED_SCHEMA)
        if base
        else pl.DataFrame(schema=RETRACTED_SCHEMA)
    )
    segs = list(doc["segments"])
    if not segs:
        return base_p, base_f, base_r, int(doc["offset"])
    upd, facts, control = read_segments(store, d, segs)
    merged_away = control.filter(pl.col("op") == "merge")["arg"]
    referenced = pl.concat([control.filter(pl.col("op") == "retract")["arg"], facts["event_id"]])
    owners = (
        base_f.filter(pl.col("event_id").is_in(referenced.implode())).select("patient_id").collect()["patient_id"]
        if referenced.len()
        else pl.Series("patient_id", [], dtype=pl.String)
    )
    affected = (
        pl.concat([upd["patient_id"], facts["patient_id"], control["patient_id"], merged_away, owners])
        .drop_nulls()
        .unique()
        .implode()
    )
    sub = PatientState(
        persons=base_p.filter(pl.col("patient_id").is_in(affected)).collect(),
        facts=base_f.filter(pl.col("patient_id").is_in(affected)).collect(),
        retracted=base_r,
    )
    new, _ = apply_frames(sub, upd, facts, control)
    persons = pl.concat([base_p.filter(~pl.col("patient_id").is_in(affected)), new.persons.lazy()])
    facts_view = pl.concat([base_f.filter(~pl.col("patient_id").is_in(affected)), new.facts.lazy()])
    return persons, facts_view, new.retracted, int(doc["offset"])


def read_segments(store: HistoryStore, d: str, segs: Iterable[str]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """Every segment's frames concatenated in order, ``seq`` renumbered to stay increasing across them."""
    upds, factss, controls = [], [], []
    shift = 0
    for seg in segs:
        u = store._read_frame(f"{d}/{seg}/upd.parquet", _upd_schema())
        f = store._read_frame(f"{d}/{seg}/facts.parquet", _fact_rows_schema())
        c = store._read_frame(f"{d}/{seg}/control.parquet", CONTROL_SCHEMA)
        top = max((int(x["seq"].max()) for x in (u, f, c) if x.height), default=-1)  # type: ignore[arg-type]  # polars types Series.max() as any scalar: seq is an integer column
        upds.append(u.with_columns(pl.col("seq") + shift))
        factss.append(f.with_columns(pl.col("seq") + shift))
        controls.append(c.with_columns(pl.col("seq") + shift))
        shift += top + 1
    return pl.concat(upds), pl.concat(factss), pl.concat(controls)


def load_folded(store: HistoryStore, partition: int, keep: FactFilter) -> tuple[PatientState, int] | None:
    """:meth:`HistoryStore.load` with a key filter of a partition that has a base and segments, reading the base once:
    one scan of its key columns and event ids (the distinct keys the filter judges, the owners of the event
    ids the segments retract or send again), then one read of the rows kept or of a patient the segments
    touch, split in memory (the fold of :meth:`HistoryStore.view`, collected, read the base's rows twice: once for the
    touched patients, once for the rest). ``None``: nothing to fold (no base, or no segments)."""
    assert keep.expr is not None and keep.keys is not None
    doc = store.manifest(partition)
    if doc is None or not doc.get("base") or not doc["segments"]:
        return None
    d, base = store._dir(partition), doc["base"]
    try:
        base_f = store._scan([f"{d}/{base}/facts.parquet"], FACTS_SCHEMA, "prefiltered")
        upd, facts, control = read_segments(store, d, doc["segments"])
        referenced = pl.concat([control.filter(pl.col("op") == "retract")["arg"], facts["event_id"]])
        distinct, owners = pl.collect_all(
            [
                base_f.select(keep.keys).unique(),
                base_f.filter(pl.col("event_id").is_in(referenced.implode())).select("patient_id"),
            ]
        )
        touched = [upd["patient_id"], facts["patient_id"], control["patient_id"], owners["patient_id"]]
        merged_away = control.filter(pl.col("op") == "merge")["arg"]
        affected = pl.concat([*touched, merged_away]).drop_nulls().unique().implode()
        allowed = FactFilter(keep.expr)(distinct).select(keep.keys)
        wanted = keys_expr(keep.keys, allowed)
        if keep.since is not None:
            wanted = wanted & (pl.col("occurred_at") >= pl.lit(keep.since).cast(FACTS_SCHEMA["occurred_at"]))
        # The touched patients' rows unpruned: the fold needs them all, as the engine's apply does.
        rows = base_f.filter(wanted | pl.col("patient_id").is_in(affected))
        persons_q = store._scan([f"{d}/{base}/persons.parquet"], PERSONS_SCHEMA)
        all_persons, rows_f = pl.collect_all([persons_q, rows])
        retracted = store._read_frame(f"{d}/{base}/retracted.parquet", RETRACTED_SCHEMA)
    except StoreError:
        raise
    except Exception as exc:
        raise StoreError(f"history unreadable ({type(exc).__name__})", url=store.url, partition=partition) from exc
    mine = pl.col("patient_id").is_in(affected)
    sub = PatientState(persons=all_persons.filter(mine), facts=rows_f.filter(mine), retracted=retracted)
    new, _ = apply_frames(sub, upd, facts, control)
    kept = FactFilter(keep.expr, keep.since)(new.facts)
    state = PatientState(
        persons=pl.concat([all_persons.filter(~mine), new.persons]),
        facts=pl.concat([rows_f.filter(~mine), kept]),
        retracted=new.retracted,
    )
    return state, int(doc["offset"])
