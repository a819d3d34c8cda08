"""A rule change's new hot view from the current one plus only the facts it newly needs (the *delta*).

Reading a partition's whole history again costs the decoding of every fact (at 1M patients, 6M facts and 24
columns a partition: about 30 s of CPU for four, which a low-priority worker on a busy host took minutes to
get). When both the current and the new fact filters judge facts by their key columns alone (the rule
compiler's filters) and neither cuts facts by time, the new view is exactly

    new filter(current view)  +  the stored facts the new filter keeps and the current one does not

because the current view holds every fact the current filter keeps (nothing was pruned by time). The worker
reads the second part with the filter pushed into the Parquet scan (``parallel="prefiltered"``: the key columns
are decoded first, the others only for the rows kept), usually a small fraction of the partition (at 1M
patients and an added sample study: 10k of 6M facts, 2.6 s instead of 7 s plus the hand-back). The engine
applies it to a copy of the current view (:func:`add_delta`: the patients it touches go to the view's tail, so
neither a sort nor a new event-id index is needed) and the catch-up (what was applied since the store's offset,
re-applied: idempotent per event id) does the rest, as for a full load. A filter that drops stored facts the
current one keeps (a changed or removed study) loads the whole view as before.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import polars as pl

from screener.history import HistoryStore, StoreError
from screener.history.store import keys_expr
from screener.state import FactFilter, LiveState, events_to_frames

#: One delta as the worker returns it: the IPC file of the facts (``None``: load the whole view instead), the
#: store's offset and the gated patients (``None``: not asked for).
DeltaFile = tuple[str | None, int, pl.Series | None]


def delta_applies(old: FactFilter | None, new: FactFilter | None) -> bool:
    """True when the new view can be built from the current one (see the module): both filters judge the same
    key columns only, and neither cuts by time."""
    return (
        old is not None
        and new is not None
        and old.expr is not None
        and new.expr is not None
        and old.keys is not None
        and old.keys == new.keys
        and old.since is None
        and new.since is None
    )


def delta_facts(
    store: HistoryStore, partition: int, old: FactFilter, new: FactFilter
) -> tuple[pl.DataFrame | None, int] | None:
    """The stored facts of ``partition`` that ``new`` keeps and ``old`` does not, in the store's order (by
    patient), and the store's offset. The frame is ``None`` when ``new`` drops some stored facts that ``old``
    keeps (a changed or removed study: the view is then loaded whole); ``None`` when the store has nothing for
    the partition. Both filters as :func:`delta_applies` accepts them. :raises StoreError: unreadable."""
    got = delta_and_gated(store, partition, old, new, None)
    return None if got is None else (got[0], got[1])


def delta_and_gated(
    store: HistoryStore, partition: int, old: FactFilter, new: FactFilter, gates: list[list[pl.Expr]] | None
) -> tuple[pl.DataFrame | None, int, pl.Series | None] | None:
    """:func:`delta_facts` and, with ``gates``, the stored patients that pass them
    (:func:`screener.engine._narrow.gated_patients`), from one judging of the distinct keys and one collect (the
    scans shared): at 1M patients a separate gate scan cost about a second per partition."""
    from screener.engine._narrow import gate_queries, gated_union

    assert old.expr is not None and new.expr is not None and new.keys is not None
    got = store.view(partition, parallel="prefiltered")
    if got is None:
        return None
    _, facts, _, offset = got
    try:
        distinct = facts.select(new.keys).unique().collect()
        judged = distinct.select(
            *new.keys, new.expr.fill_null(False).alias("_new"), old.expr.fill_null(False).alias("_old")
        )
        if judged.filter(pl.col("_old") & ~pl.col("_new")).height:
            found = pl.collect_all(gate_queries(facts, gates, distinct)) if gates is not None else []
            return None, offset, gated_union(found) if gates is not None else None
        wanted = judged.filter(pl.col("_new") & ~pl.col("_old")).select(new.keys)
        read = [FactFilter(e).keys for study in gates or [] for e in study]
        if gates is None or any(k is None or not set(k) <= set(new.keys) for k in read):
            delta, *found = pl.collect_all(
                [facts.filter(keys_expr(new.keys, wanted)), *(gate_queries(facts, gates) if gates else [])]
            )
            return delta, offset, gated_union(found) if gates is not None else None
        # One read of the rows the delta or a gate keeps (the key columns decoded once, the others only for
        # those rows), split in memory.
        gate_keys = [[distinct.filter(e.fill_null(False)).select(new.keys) for e in study] for study in gates]
        every = pl.concat([wanted, *(k for study in gate_keys for k in study)]).unique()
        rows = facts.filter(keys_expr(new.keys, every)).collect()
        per_study = []
        for study in gate_keys:
            ids: pl.Series | None = None
            for keys in study:
                have = rows.filter(keys_expr(new.keys, keys))["patient_id"].unique()
                ids = have if ids is None else ids.filter(ids.is_in(have.implode()))
            if ids is not None:
                per_study.append(ids.to_frame())
        return rows.filter(keys_expr(new.keys, wanted)), offset, gated_union(per_study)
    except Exception as exc:
        raise StoreError(f"history unreadable ({type(exc).__name__})", url=store.url, partition=partition) from exc


def load_delta_file(
    store_cls: type[HistoryStore],
    url: str,
    options: dict[str, str],
    partition: int,
    old: FactFilter,
    new: FactFilter,
    gates: list[list[pl.Expr]] | None,
    out_dir: str,
) -> DeltaFile | str | None:
    """In the worker: :func:`delta_and_gated` with the frame written to ``out_dir`` as Arrow IPC (its path, or
    ``None`` as there; the gated patients come back pickled, a few per cent of the partition's). A string: why
    the store could not be read (read once more on a failure: a compaction replacing the files is the usual
    cause). The filters come without their judges (pickling)."""
    from screener.engine.views import read_twice

    store = store_cls(url, options)
    got = read_twice(lambda: delta_and_gated(store, partition, old, new, gates))
    if isinstance(got, str):
        return got
    if got is None:
        return None
    delta, offset, gated = got
    if delta is None:
        return None, offset, gated
    folder = Path(out_dir) / f"d{partition}-{uuid.uuid4().hex[:8]}"
    folder.mkdir(parents=True)
    path = folder / "facts.arrow"
    delta.write_ipc(path, compression="uncompressed")
    return str(path), offset, gated


def add_delta(view: LiveState, delta: pl.DataFrame, keep: FactFilter) -> pl.Series:
    """Apply ``delta`` (stored facts, already folded) to ``view`` as new facts, in place: they join the tail
    of the patients they belong to (a tail past its threshold is folded in here, on the rebuild thread). Returns
    those patients."""
    if delta.height == 0:
        return pl.Series("patient_id", [], dtype=pl.String)
    upd, empty, control = events_to_frames([])
    rows = delta.with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("seq")).select(empty.columns)
    return view.apply(upd, rows, control, keep=keep)
