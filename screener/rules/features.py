"""Facts -> one row of per-feature statistics per patient, in one vectorised pass (no Python loop over patients).

1. Every feature (concept set x filter x window x transform family, :attr:`Feat.key`) any study uses is
   collected once and shared between studies.
2. Fact rows: concept membership, unit conversion and per-fact filters (:mod:`screener.rules._facts`).
3. Each fact row is joined to the features of its concept and kept when the feature selects it: a look-back
   ``[now - w, now]`` (inclusive) on ``occurred_at``; for periods (``exposure_days``, ``on_now``) on the
   period's end; ``upcoming`` reads planned/ordered facts in ``[now, now + w]``. Every other transform skips
   planned/ordered facts unless its filter reads ``.status``.
   (:mod:`screener.rules._select`; integer keys for patients, concepts and features, one sort by time).
4. Statistics per (patient, feature) in a few ``group_by``s (:mod:`screener.rules._aggregate`), scattered to one
   row per person (in ``state.persons`` order) with columns ``<feature key>:<stat>``.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

import numpy as np
import polars as pl

from screener.rules._aggregate import PLAIN_STATS, STAT_DTYPES, AggPlan, aggregate
from screener.rules._attributes import NOW_COL, attributes
from screener.rules._facts import FACT_COLUMNS, constant, conversions, filter_expr, member_table, uses
from screener.rules._select import RowPlan, Selection, fact_columns, fid_bits, keyed_fact_rows
from screener.rules.ir import Feat, Field, Source, collect_attributes
from screener.rules.lower import TRANSFORM_STATS, stat_col
from screener.rules.model import Study
from screener.state import PatientState

__all__ = ["ENGINE", "NOW_COL", "TS", "FeatureStats", "attributes", "feature_frame", "feature_stats", "screen_columns"]

TS = pl.Datetime("us", "UTC")

#: Polars engine for every query here: the in-memory engine runs these wide, many-expression queries ~3x
#: faster than the streaming engine Polars 2 picks by default.
ENGINE: Literal["in-memory"] = "in-memory"


def _selections(studies: Sequence[Study]) -> tuple[dict[str, list[Feat]], list[Selection]]:
    feats: dict[str, list[Feat]] = {}
    for s in studies:
        for f in s.features():
            feats.setdefault(f.key, []).append(f)
    sel: list[Selection] = []
    for key, group in feats.items():
        f = group[0]
        own = len(sel)
        sel.append(Selection(key, f.source, f.mode, f, own))
        if f.other is not None:
            sel.append(Selection(f.other_key, f.other, "other", f, own))
    return feats, sel


@dataclass
class _FeaturePlan:
    """Everything :func:`feature_frame` needs that depends only on the studies (built once per study set)."""

    feats: dict[str, list[Feat]]
    columns: list[str]
    dtypes: dict[str, pl.DataType]
    rows: RowPlan
    agg: AggPlan
    #: selection index -> its ``(statistic, column)`` pairs
    widen: dict[int, list[tuple[str, str]]]


#: study set (a tuple of studies, compared by identity) -> its feature plan; recent sets are kept (the engine
#: screens each batch against the studies it can affect: a few dozen distinct sets per rules version)
_FEATURE_PLANS: dict[tuple[Study, ...], _FeaturePlan] = {}
_FEATURE_PLANS_MAX = 64


def _feature_plan(studies: Sequence[Study]) -> _FeaturePlan:
    key = tuple(studies)
    plan = _FEATURE_PLANS.get(key)
    if plan is not None:
        return plan
    feats, selections = _selections(studies)
    stats_needed: dict[str, set[str]] = {}
    for fkey, group in feats.items():
        needed = stats_needed.setdefault(fkey, set())
        needed.update(s for f in group for s in TRANSFORM_STATS[f.transform])
        if group[0].filter is not None or (group[0].other is not None and group[0].other.filter is not None):
            needed.add("n_funk")
    concepts = {sel.source.concept.key: sel.source.concept for sel in selections}
    ckeys = {k: i for i, k in enumerate(concepts)}
    columns: list[str] = []
    widen: dict[int, list[tuple[str, str]]] = {}
    for i, sel in enumerate(selections):
        if sel.mode != "other":
            pairs = [(st, stat_col(sel.feat, st)) for st in sorted(stats_needed[sel.key])]
            widen[i] = pairs
            columns += [c for _, c in pairs]
    attrs = sorted({a for s in selections for a in _filter_attrs(s.source)})
    encounters = any(
        uses(s.source.filter, lambda n: isinstance(n, Field) and n.name == "encounter") for s in selections
    )
    ahead = max(
        (
            f.window.end(datetime(2000, 1, 1)) - datetime(2000, 1, 1)
            for f in (s.feat for s in selections)
            if f.mode == "upcoming" and f.window is not None
        ),
        default=timedelta(0),
    )
    conv = conversions(concepts).collect()
    conv = conv.select(pl.col("_ckey").replace_strict(ckeys, return_dtype=pl.UInt32).alias("_ck"), "_unit", "_a", "_b")
    agg = _agg_plan(selections, stats_needed)
    rows = RowPlan(
        selections,
        concepts,
        ckeys,
        member_table(concepts),
        conv,
        {i: filter_expr(s.source.filter) for i, s in enumerate(selections) if s.source.filter is not None},
        attrs,
        tuple(i for i, (_fids, stats, _gneg) in enumerate(agg.plain) if "latest_c" in stats),
        encounters,
        ahead,
        agg.slots,
    )
    plan = _FeaturePlan(
        feats,
        columns,
        {c: STAT_DTYPES[c.rsplit(":", 1)[1]] for c in columns},
        rows,
        agg,
        widen,
    )
    if len(_FEATURE_PLANS) >= _FEATURE_PLANS_MAX:
        _FEATURE_PLANS.pop(next(iter(_FEATURE_PLANS)))
    _FEATURE_PLANS[key] = plan
    return plan


def _agg_plan(selections: Sequence[Selection], stats_needed: dict[str, set[str]]) -> AggPlan:
    plain: dict[tuple[tuple[str, ...], str | None], list[int]] = {}
    cont: dict[str, list[int]] = {}
    for i, sel in enumerate(selections):
        f = sel.feat
        if sel.mode in ("plain", "upcoming"):
            stats = tuple(sorted(stats_needed[sel.key] & PLAIN_STATS))
            gneg = f.gap.offset(-1) if "n_ep" in stats and f.gap is not None else None
            if stats:
                plain.setdefault((stats, gneg), []).append(i)
        elif sel.mode == "continuous":
            assert f.gap is not None  # the type check requires it
            cont.setdefault(f.gap.offset(-1), []).append(i)
    modes = {s.mode for s in selections}
    # each selection's slot (:attr:`AggPlan.slots`): its plain group, its continuous group, periods, relations
    # (both sides), or none (a plain feature needing no plain statistic)
    slot = dict.fromkeys(range(len(selections)), len(plain) + len(cont) + 2)
    for g, fids in enumerate([*plain.values(), *cont.values()]):
        slot.update(dict.fromkeys(fids, g))
    for i, sel in enumerate(selections):
        if sel.mode == "period":
            slot[i] = len(plain) + len(cont)
        elif sel.mode in ("after", "before", "other"):
            slot[i] = len(plain) + len(cont) + 1
    return AggPlan(
        tuple((tuple(fids), stats, gneg) for (stats, gneg), fids in plain.items()),
        tuple((tuple(fids), gneg) for gneg, fids in cont.items()),
        "period" in modes,
        tuple(m for m in ("after", "before") if m in modes),
        any("n_funk" in v for v in stats_needed.values()),
        frozenset().union(*stats_needed.values()),
        fid_bits(len(selections)),
        tuple(slot[i] for i in range(len(selections))),
        tuple(
            (i, w.offset(-1) if w else None, w.offset(1) if w else None)
            for i, (sel, w) in enumerate((s, s.feat.window) for s in selections)
            if sel.mode in ("after", "before")
        ),
    )


def _filter_attrs(source: Source) -> set[str]:
    return collect_attributes(source.filter) if source.filter is not None else set()


#: the fact columns :func:`screener.rules._attributes.registrations` reads
_REGISTRATION_COLUMNS = ("patient_id", "kind", "occurred_at", "ended_at", "status")


def screen_columns(studies: Sequence[Study]) -> list[str]:
    """The fact columns (of :data:`screener.rules._facts.FACT_COLUMNS`, in its order) a screen of ``studies``
    reads: a reader of facts (a Parquet scan) may leave the others out, the results are the same (a missing
    column is read as nulls, and none of these studies reads it)."""
    need = fact_columns(_feature_plan(studies).rows)
    if any("registered_days" in s.attributes() for s in studies):
        need.update(_REGISTRATION_COLUMNS)
    return [c for c in FACT_COLUMNS if c in need]


def feature_frame(state: PatientState, studies: Sequence[Study], now: datetime) -> pl.DataFrame:
    """One row per person of ``state.persons``, in its order: ``patient_id`` and the ``<feature>:<stat>``
    columns (null where the patient has no fact in the feature)."""
    return feature_stats(state, studies, now).wide()


def feature_stats(state: PatientState, studies: Sequence[Study], now: datetime) -> FeatureStats:
    """The statistics of :func:`feature_frame`, aggregated but not yet widened: :meth:`FeatureStats.wide` builds
    the columns asked for, for every person or some (the evidence of a few matched rows needs few cells)."""
    fp = _feature_plan(studies)
    ids = state.persons["patient_id"]
    if not fp.feats or state.facts.height == 0:
        return FeatureStats([], fp, ids)
    rows, codes = keyed_fact_rows(state, fp.rows, now)
    return FeatureStats(aggregate(rows, fp.agg, now, ENGINE, codes), fp, ids)


class FeatureStats:
    """The (patient, feature) statistics of one screen (:func:`screener.rules._aggregate.aggregate` frames),
    widened to ``<feature>:<stat>`` columns on demand: one pivot per frame (on the feature, ``_pid`` being the
    person's row) for the columns asked, not a Python step per column."""

    def __init__(self, frames: Sequence[pl.DataFrame], plan: _FeaturePlan, ids: pl.Series) -> None:
        self._plan = plan
        self._ids = ids
        self._frames = list(frames)
        self._source: dict[str, tuple[int, int, str]] = {}  # column name -> (its frame, its feature, its statistic)
        #: per frame, built on first use: ``_pid``, ``_fid`` (int64), the rows ordered by feature, each feature's start
        self._index: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
        for k, frame in enumerate(self._frames):
            have = set(frame.columns)
            for fid in frame.get_column("_fid").unique().to_list():
                for stat, name in plan.widen.get(int(fid), ()):
                    if stat in have:
                        self._source[name] = (k, int(fid), stat)  # a later frame's wins, as a later scatter would

    @property
    def columns(self) -> list[str]:
        """Every ``<feature>:<stat>`` column, in :meth:`wide` order."""
        return self._plan.columns

    def wide(self, columns: Collection[str] | None = None, rows: pl.Series | None = None) -> pl.DataFrame:
        """``patient_id`` and the statistic columns (those in ``columns``, default all, in :attr:`columns`
        order), one row per person in ``state.persons`` order, or only the persons at positions ``rows``
        (UInt32, in that order). Null where the patient has no fact in the feature."""
        at = None if rows is None else rows.to_numpy().astype(np.int64)
        if at is not None and not bool(np.all(at[1:] > at[:-1])):  # (increasing: distinct, as a match mask gives)
            uniq, back = np.unique(at, return_inverse=True)
            if uniq.size < at.size:  # a person asked twice
                once = self.wide(columns, pl.Series(uniq, dtype=pl.UInt32))
                return once[pl.Series(back.astype(np.uint32))]
        ids = self._ids if rows is None else self._ids.gather(rows)
        n = ids.len()
        names = [c for c in self._plan.columns if columns is None or c in columns]
        asked: dict[int, list[tuple[str, int, str]]] = {}
        for name in names:
            hit = self._source.get(name)
            if hit is not None:
                asked.setdefault(hit[0], []).append((name, hit[1], hit[2]))
        pos: np.ndarray | None = None  # each person's row in the result (-1: not asked), when not everyone's
        if at is not None and asked:
            pos = np.full(self._ids.len(), -1, dtype=np.int64)
            pos[at] = np.arange(at.size, dtype=np.int64)
        got: dict[str, pl.Series] = {}
        for k, cols in asked.items():
            got.update(self._pivot(k, cols, n, pos))
        nulls: dict[pl.DataType, pl.Series] = {}
        out = [ids]
        for name in names:
            col = got.get(name)
            if col is None:
                dtype = self._plan.dtypes[name]
                if dtype not in nulls:
                    nulls[dtype] = constant("", None, dtype, n)
                col = nulls[dtype].alias(name)
            out.append(col)
        return pl.DataFrame(out)

    def _frame_index(self, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Frame ``k``'s ``_pid`` and ``_fid`` as int64, its row numbers ordered by feature, and where each feature's
        rows start in that order (``fid + 1`` entries past the largest): built once per frame, so a call for a few
        features (a study's evidence) reads only their rows."""
        got = self._index.get(k)
        if got is None:
            frame = self._frames[k]
            pid = frame.get_column("_pid").to_numpy().astype(np.int64)
            fid = frame.get_column("_fid").to_numpy().astype(np.int64)
            order = np.argsort(fid, kind="stable")
            starts = np.searchsorted(fid[order], np.arange(int(fid.max()) + 2))
            got = self._index[k] = (pid, fid, order, starts)
        return got

    def _pivot(self, k: int, cols: list[tuple[str, int, str]], n: int, pos: np.ndarray | None) -> dict[str, pl.Series]:
        """The columns ``cols`` (``name, feature, statistic``) of aggregate frame ``k``, ``n`` rows (the persons,
        or the asked ones: ``pos``, each person's row or -1): per statistic, one scatter of its values into every
        asked column at once (a column-major index into null cells), cut into the columns. Only the asked
        features' rows are read when they are fewer than half the frame."""
        frame = self._frames[k]
        pid, fid, order, starts = self._frame_index(k)
        feats = sorted({f for _n, f, _s in cols if f + 1 < starts.size})
        picked = int(sum(starts[f + 1] - starts[f] for f in feats))
        at: np.ndarray | None = None  # the frame rows read, when not all of them
        if 2 * picked < frame.height:
            at = np.concatenate([order[starts[f] : starts[f + 1]] for f in feats]) if feats else order[:0]
            pid, fid = pid[at], fid[at]
        if pos is not None:  # the asked persons' rows, at their new positions
            pid = pos[pid]
        by_stat: dict[str, list[tuple[str, int]]] = {}
        for name, f, stat in cols:
            by_stat.setdefault(stat, []).append((name, f))
        # the statistics asked for the same features (most of a frame's: its features all have its statistics)
        # share their cells, and their values are gathered in one go
        by_feats: dict[tuple[int, ...], list[str]] = {}
        for stat, named in by_stat.items():
            by_feats.setdefault(tuple(f for _n, f in named), []).append(stat)
        out: dict[str, pl.Series] = {}
        for feats_asked, stats in by_feats.items():
            slot = np.full(starts.size, -1, dtype=np.int64)
            slot[list(feats_asked)] = np.arange(len(feats_asked), dtype=np.int64)
            j = slot[fid]
            ok = (j >= 0) & (pid >= 0)
            hit = np.flatnonzero(ok) if at is None else at[ok]  # the frame rows that land in some cell
            values = pl.DataFrame([frame.get_column(stat) for stat in stats])
            if hit.size < frame.height:
                values = values[pl.Series(hit, dtype=pl.UInt32)]
            cells = pl.Series(j[ok] * n + pid[ok], dtype=pl.UInt64) if hit.size else None
            for stat in stats:
                named = by_stat[stat]
                dtype = self._plan.dtypes[named[0][0]]
                got = values.get_column(stat)
                # a scatter of the values into null cells (a gather of every cell from the values and an appended
                # null row costs about twice as much: most cells are null)
                every = constant(stat, None, got.dtype, len(named) * n)
                if cells is not None:
                    every.scatter(cells, got)
                if every.dtype != dtype:
                    every = every.cast(dtype)
                for i, (name, _f) in enumerate(named):
                    out[name] = every.slice(i * n, n).alias(name)
        return out
