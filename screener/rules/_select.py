"""Fact rows for the feature aggregation: each fact joined to the features that select it.

Everything is keyed by small integers so the joins, the sort and the ``group_by`` of :mod:`screener.rules._aggregate`
never hash a string per row: ``_pid`` (the patient's row in ``state.persons``), ``_sc`` (the distinct (system, code)
pair), ``_ck`` (the concept set's index) and ``_fid`` (the selection's index in :attr:`FeaturePlan.selections`;
``_own`` is the feature a relation's other side belongs to).

1. Concept membership once per distinct ``(system, code)``, unit normalisation once per distinct spelling.
2. The facts in some concept (one row per fact, however many concepts hold its code), sorted by
   ``(occurred_at, event_id)`` once: every later step keeps that order, so first/last mean earliest/latest inside
   each (patient, feature) group without another sort.
3. The window join runs on a narrow frame (row number, pair, times, status) against each selection once per pair of
   its concept; only the selected rows gather the fact columns, and their unit conversion from a dense
   (concept, spelling) table.
4. Per-fact filters run on their own feature's rows only and are scattered back into ``_keep`` (order kept).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from screener.rules._attributes import attributes
from screener.rules._facts import FACT_COLUMNS, constant, current_encounters, ensure_columns
from screener.rules._keys import KeyMemo, Keys, code_concepts, conversion, keys_of
from screener.rules.ir import NOT_DONE, Feat, Source
from screener.state import PatientState

__all__ = ["MODES", "Selection", "fact_columns", "fact_rows", "fid_bits", "keyed_fact_rows", "windows"]

TS = pl.Datetime("us", "UTC")
ENGINE: Any = "in-memory"

#: how a selection picks fact rows (:attr:`screener.rules.ir.Feat.mode`, plus ``other``: a relation's other side)
MODES = ("plain", "period", "continuous", "upcoming", "after", "before", "other")
MODE = pl.Enum(MODES)


def fid_bits(selections: int) -> int:
    """The bits of ``_fid`` in the packed group key ``_g = _pid << bits | _fid``."""
    return max(selections, 1).bit_length()


@dataclass(frozen=True)
class Selection:
    """How one feature (or the other side of a relation) selects fact rows."""

    key: str
    source: Source
    mode: str
    feat: Feat
    own: int  # the index of the feature this selection's rows count for (itself, or the relation it is a side of)


def windows(
    selections: Sequence[Selection], ckeys: dict[str, int], now: datetime, slots: Sequence[int] | None = None
) -> pl.DataFrame:
    """One row per selection: ``_fid, _own, _ck, _mode`` and the bounds and flags :func:`fact_rows` reads (and
    ``_slot``, when ``slots`` are given). Built column by column (rows of dicts cost a micro-batch about 1 ms)."""
    n = len(selections)
    start: list[datetime | None] = [None] * n
    end: list[datetime] = [now] * n
    cov: list[datetime | None] = [None] * n
    wneg: list[str | None] = [None] * n
    wpos: list[str | None] = [None] * n
    for i, s in enumerate(selections):
        w, mode = s.feat.window, s.mode
        if w is None:
            continue
        wneg[i], wpos[i] = w.offset(-1), w.offset(1)
        if mode == "continuous":
            cov[i] = w.start(now)
        if mode == "upcoming":
            start[i], end[i] = now, w.end(now)
        elif mode in ("plain", "period"):
            start[i] = w.start(now)
    modes = [s.mode for s in selections]
    columns: list[pl.Series] = [
        pl.Series("_fid", range(n), dtype=pl.UInt32),
        pl.Series("_own", [s.own for s in selections], dtype=pl.UInt32),
        pl.Series("_ck", [ckeys[s.source.concept.key] for s in selections], dtype=pl.UInt32),
        pl.Series("_mode", modes, dtype=MODE),
        pl.Series("_start", start, dtype=TS),
        pl.Series("_end", end, dtype=TS),
        pl.Series("_future", [m == "upcoming" for m in modes], dtype=pl.Boolean),
        pl.Series("_byend", [m == "period" for m in modes], dtype=pl.Boolean),
        pl.Series("_skip", [not s.source.reads_status for s in selections], dtype=pl.Boolean),
        pl.Series("_wneg", wneg, dtype=pl.String),
        pl.Series("_wpos", wpos, dtype=pl.String),
        pl.Series("_cov", cov, dtype=TS),
    ]
    if slots is not None:
        columns.append(pl.Series("_slot", slots or [0] * n, dtype=pl.UInt32))
    return pl.DataFrame(columns)


@dataclass(frozen=True)
class RowPlan:
    """What :func:`fact_rows` needs from the feature plan (built once per study set)."""

    selections: Sequence[Selection]
    concepts: dict[str, Any]
    ckeys: dict[str, int]
    member_table: pl.DataFrame | None
    conversions: pl.DataFrame  # _ck, _unit, _a, _b
    filters: dict[int, pl.Expr]  # _fid -> the filter over fact rows
    filter_attrs: Sequence[str]
    #: the slots whose rows carry the fact's ``value_code`` as ``_vc`` (those computing ``latest_c``, ``latest_code``)
    value_code: Sequence[int]
    needs_encounters: bool
    look_ahead: timedelta
    slots: Sequence[int] = ()  # per selection, the slot the rows are sorted by (:attr:`AggPlan.slots`)
    #: the codes and unit spellings judged so far (:class:`KeyMemo`): state, not part of the plan's value
    memo: KeyMemo = field(default_factory=lambda: KeyMemo(), compare=False, repr=False)


def _pend(now: datetime) -> pl.Expr:
    """A period's end: ``ended_at``, else the start when stopped/completed (one day), else now."""
    ended = pl.col("ended_at")
    return (
        pl.when(ended.is_not_null())
        .then(ended)
        .when(pl.col("status").is_in(("stopped", "completed")).fill_null(False))
        .then(pl.col("occurred_at"))
        .otherwise(pl.lit(now, dtype=TS))
        .alias("_pend")
    )


def _concept_facts(
    facts: pl.DataFrame, persons: pl.DataFrame, keys: Keys, now: datetime, rp: RowPlan, periods: bool
) -> pl.LazyFrame:
    """The facts in some concept (one row per fact), narrow: ``_r0`` (the fact's row in ``facts``), ``_pid``, ``_sc``
    (its (system, code) pair, :class:`screener.rules._keys.Keys`), ``_u`` (its unit spelling), ``occurred_at``, ``_nd``
    (planned or ordered: not done), ``value`` and, for periods, ``ended_at``, ``_active`` and ``_pend``; sorted by time
    then event id. Other fact columns are gathered later, for the rows that need them only (a random gather of strings
    costs more than everything else here). A fact in several concepts is still one row: the window join of
    :func:`fact_rows` pairs it with its concepts' features by ``_sc``."""
    # the distinct spellings of units and (system, code) pairs get small integer keys before the sort, so the
    # sort carries no string column but its tie-break (``event_id``)
    pids = persons.lazy().select("patient_id", pl.int_range(pl.len(), dtype=pl.UInt32).alias("_pid"))
    cols = list(_CONCEPT_FACT_COLUMNS)
    keyed: list[str | pl.Expr] = ["_r0", "_pid", "_sc", "_u", "occurred_at", "event_id", _ND, "value"]
    return (
        facts.lazy()
        .select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_r0"), *cols, *(["ended_at"] if periods else []))
        # a one-column membership test first: most facts are in no concept, and the join below hashes two
        .filter(pl.col("code").is_in(keys.pairs["code"].implode()) & (pl.col("occurred_at") <= now + rp.look_ahead))
        .join(keys.pairs.lazy(), on=["system", "code"], how="inner")
        .join(keys.spellings.lazy(), on="unit", how="left", nulls_equal=True)
        .join(pids, on="patient_id", how="inner")
        .select(*keyed, *([*_PERIOD, _pend(now)] if periods else []))
        .sort(["occurred_at", "event_id"])
        .drop("event_id")
    )


#: the fact columns :func:`_concept_facts` reads (and ``ended_at`` for periods)
_CONCEPT_FACT_COLUMNS = ("patient_id", "system", "code", "unit", "occurred_at", "event_id", "status", "value")
#: the fact columns :func:`screener.rules._facts.current_encounters` reads
_ENCOUNTER_COLUMNS = ("patient_id", "kind", "occurred_at", "ended_at", "encounter_id", "event_id")


def fact_columns(rp: RowPlan) -> set[str]:
    """The fact columns :func:`fact_rows` reads under ``rp`` (a frame without the others gives the same rows)."""
    need = set(_CONCEPT_FACT_COLUMNS)
    if {sel.mode for sel in rp.selections} & {"period", "continuous"}:
        need.add("ended_at")
    if rp.value_code:
        need.add("value_code")
    for e in rp.filters.values():
        need.update(c for c in e.meta.root_names() if c in FACT_COLUMNS)
    if rp.needs_encounters:
        need.update(_ENCOUNTER_COLUMNS)
    return need


_ND = pl.col("status").is_in(NOT_DONE).fill_null(False).alias("_nd")
#: for periods: the end, and whether the fact is active (no status counts as active)
_PERIOD: list[str | pl.Expr] = ["ended_at", (pl.col("status").fill_null("active") == "active").alias("_active")]


def fact_rows(state: PatientState, rp: RowPlan, now: datetime) -> pl.DataFrame:
    """Fact rows joined to the selections that select them, in time order, with ``_keep`` (the selection's
    filter: true without one, null = unknown), the converted value ``_v`` and ``_unk`` (a value in an unknown
    unit)."""
    return keyed_fact_rows(state, rp, now)[0]


def keyed_fact_rows(state: PatientState, rp: RowPlan, now: datetime) -> tuple[pl.DataFrame, pl.Series]:
    """:func:`fact_rows` and the code of each ``_sc`` (a row's ``code`` is ``codes[_sc]``: a statistic taking one
    row's code can take its integer ``_sc`` and look the code up after the ``group_by``)."""
    modes = {sel.mode for sel in rp.selections}
    periods = bool(modes & {"period", "continuous"})
    facts = ensure_columns(state.facts)
    status_nd = pl.col("_nd")
    t = pl.col("occurred_at")
    start = pl.col("_start")
    done = (~pl.col("_skip") | ~status_nd) & (
        start.is_null() | (pl.when(pl.col("_byend")).then(pl.col("_pend") >= start).otherwise(t >= start))
        if "period" in modes
        else start.is_null() | (t >= start)
    )
    selected = (t <= pl.col("_end")) & (
        pl.when(pl.col("_future")).then(status_nd & (t >= start)).otherwise(done) if "upcoming" in modes else done
    )
    win = windows(rp.selections, rp.ckeys, now, rp.slots)
    extra = (["_start"] if "period" in modes else []) + (["_cov"] if "continuous" in modes else [])
    keys = keys_of(facts, code_concepts(facts, rp), rp)
    cf = _concept_facts(facts, state.persons, keys, now, rp, periods).with_row_index("_row").collect(engine=ENGINE)
    # The window join multiplies rows (a fact per feature of its concepts): it runs on the columns it reads only,
    # and the selected rows, in time order within each slot, gather the rest by their row number (a forward scan).
    # ``_g`` packs (patient, feature) into one integer: the group_bys of :mod:`screener.rules._aggregate` hash
    # one column, not two. The rows are sorted by slot, then time (each aggregation reads one slice).
    fbits = fid_bits(len(rp.selections))
    narrow = cf.lazy().select("_row", "_pid", "_sc", "occurred_at", "_nd", *(["_pend"] if periods else []))
    # each selection once per (system, code) pair of its concept: the facts join it on their pair directly
    win = win.join(keys.concept_of, on="_ck", how="inner", maintain_order="left")
    # one join per slot, each keeping the time order, concatenated in slot order: no sort of the joined rows
    # (the selections cut by slot in one call; no pair in any concept: one empty join)
    by_slot = win.partition_by("_slot", as_dict=True) if win.height else {(None,): win}
    parts = []
    for _slot, w in sorted(by_slot.items(), key=lambda kv: -1 if kv[0][0] is None else kv[0][0]):
        parts.append(
            narrow.filter(pl.col("_sc").is_in(w["_sc"].unique().implode()))
            .join(w.lazy(), on="_sc", how="inner", maintain_order="left")
            .filter(selected)
            .select(
                "_row",
                "_ck",
                "_fid",
                "_own",
                "_mode",
                *extra,
                (pl.col("_pid").cast(pl.UInt64) * (1 << fbits) + pl.col("_fid")).alias("_g"),
                "_slot",
            )
        )
    picked = pl.concat(pl.collect_all(parts, engine=ENGINE), how="vertical", rechunk=True)
    rows = pl.concat([cf.drop("_row")[picked["_row"]], picked.drop("_row")], how="horizontal")
    a, b = conversion(keys, len(rp.ckeys), rows["_ck"], rows["_u"])
    rows = (
        rows.drop("_ck", "_u")
        .with_columns(a, b)
        .with_columns(
            (pl.col("value") * pl.col("_a") + pl.col("_b")).alias("_v"),
            (pl.col("value").is_not_null() & pl.col("_a").is_null()).alias("_unk"),
        )
    )
    # the code from the small pair table, not from the facts (a gather from a few hundred strings is cheap)
    rows = rows.with_columns(keys.pairs["code"].gather(rows["_sc"]).alias("code"))
    if rp.value_code:
        rows = rows.with_columns(_slot_value_codes(rows, facts, rp.value_code))
    if not rp.filters:
        return rows.with_columns(pl.lit(True).alias("_keep")), keys.pairs["code"]
    return rows.with_columns(_keep_column(rows, state, rp, now)), keys.pairs["code"]


def _slot_value_codes(rows: pl.DataFrame, facts: pl.DataFrame, slots: Sequence[int]) -> pl.Series:
    """``_vc``: the fact's ``value_code`` on the rows of ``slots`` (rows are sorted by slot: a slice each), null on
    the others (a random gather of strings for every row would cost more than the statistic that reads it)."""
    bounds = rows["_slot"].search_sorted(pl.Series([s for slot in slots for s in (slot, slot + 1)], dtype=pl.UInt32))
    codes = facts.get_column("value_code")
    parts: list[pl.Series] = []
    done = 0
    for lo, hi in zip(bounds[0::2].to_list(), bounds[1::2].to_list(), strict=True):
        parts += [constant("_vc", None, pl.String(), lo - done), codes.gather(rows["_r0"].slice(lo, hi - lo))]
        done = hi
    parts.append(constant("_vc", None, pl.String(), rows.height - done))
    return pl.concat([p.alias("_vc") for p in parts])


def _keep_column(rows: pl.DataFrame, state: PatientState, rp: RowPlan, now: datetime) -> pl.Series:
    """``_keep``: each filter evaluated on its own selection's rows only (a when/then chain would run every
    filter on every row), scattered back to the rows' positions. Each filter's rows gather only the fact columns
    that filter reads (most read one or two of them)."""
    keys = list(rp.filters)
    reads = {k: set(e.meta.root_names()) for k, e in rp.filters.items()}
    # only the row columns some filter reads (and the keys): the filtered rows are gathered, not every column
    row_cols = [c for c in rows.columns if c in set().union(*reads.values()) and c not in ("_fid", "_pid", "_r0")]
    found = rows.select("_fid", "_pid", "_r0", *row_cols).with_row_index("_i").filter(pl.col("_fid").is_in(keys))
    facts = ensure_columns(state.facts)
    attrs: pl.LazyFrame | None = None
    if rp.filter_attrs:
        attrs = (
            attributes(state.persons, now)
            .select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_pid"), *(f"_attr_{a}" for a in rp.filter_attrs))
            .collect(engine=ENGINE)
            .lazy()
        )
    enc: pl.LazyFrame | None = None
    if rp.needs_encounters:
        pids = state.persons.lazy().select("patient_id", pl.int_range(pl.len(), dtype=pl.UInt32).alias("_pid"))
        enc = (
            current_encounters(facts.lazy(), now)
            .join(pids, on="patient_id")
            .drop("patient_id")
            .collect(engine=ENGINE)
            .lazy()
        )
    queries = []
    for (fid,), part in found.partition_by("_fid", as_dict=True).items():
        need = reads[fid]
        gather = [c for c in FACT_COLUMNS if c in need and c not in part.columns]
        sub = (pl.concat([part, facts.select(gather)[part["_r0"]]], how="horizontal") if gather else part).lazy()
        if attrs is not None and any(c.startswith("_attr_") for c in need):
            sub = sub.join(attrs, on="_pid", how="left")
        if enc is not None and "_enc_now" in need:
            sub = sub.join(enc, on=["_pid", "encounter_id"], how="left")
        queries.append(sub.select("_i", rp.filters[fid].cast(pl.Boolean).alias("_keep")))
    kept = pl.collect_all(queries, engine=ENGINE)
    keep = constant("_keep", True, pl.Boolean(), rows.height)
    if kept:
        scattered = pl.concat(kept, how="vertical")
        keep.scatter(scattered["_i"], scattered["_keep"])
    return keep
