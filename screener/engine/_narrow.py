"""What a re-screen against a few studies (a rule change's) needs to screen: :class:`Narrowing`.

A rule change screens everyone against the added or changed studies only. Most patients cannot match them: the
sample studies each have an inclusion criterion such as ``t2dm|ever`` that is false for a patient with none of
its concept's facts, and most of a population has none. Two reductions, both exact:

* **the facts**: a patient's result for a study depends only on the facts its :meth:`Study.fact_filter` keeps
  (the contract the hot view is pruned by), so each chunk is screened with the facts the changed studies read,
  not the whole view's;
* **the patients**: a *gate* is a top-level inclusion criterion that reads no person attribute and at least one
  concept set. Its value for a patient depends only on the patient's facts in its concept sets (and, through
  ``.encounter`` filters, visits), so every patient with none of those facts gets the value an empty patient
  gets. When that value is false (evaluated once, on an empty patient, by the rules' own
  :func:`screener.rules.screen.screen_detail`), such a patient is ineligible for the study without being
  screened. A patient is screened when, for some study, it has facts for every gate of that study (a study
  without gates: every patient), or when it holds a known match for one of the studies (its match may have to
  be closed).

An ``ineligible`` result of a patient without a known match produces no row the engine records, so skipping it
changes nothing the worklist or the matches topic sees. The gate values are taken at one instant (the rule
change); a criterion over an empty fact set does not change with the clock.

Which patients pass the gates is found in one of two ways: chunk by chunk, from the chunk's facts
(:meth:`Narrowing.apply`); or, for a rule change, once per partition by the rebuild worker from the history
store (:func:`gated_patients`, a scan of the key columns at low priority) while the new view is built. The store
holds every fact up to the view's base offset, so its answer is a superset for the view as loaded; the patients
the catch-up touches are screened whatever their gates.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import polars as pl

from screener.history import HistoryStore, StoreError
from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA, RETRACTED_SCHEMA, FactFilter, PatientState, StateParts

__all__ = ["Narrowing", "narrowing", "safe_narrowing"]


@dataclass(frozen=True)
class Narrowing:
    """The facts and patients a screen against ``studies`` needs (see the module). Drive it from one thread
    (its filters cache what they judged)."""

    studies: frozenset[str]
    #: The facts any of the studies reads.
    facts: FactFilter
    #: Per study: the facts of each of its gates (``None``: no gate, every patient is screened for it).
    gates: tuple[tuple[FactFilter, ...] | None, ...]

    def gate_exprs(self) -> list[list[pl.Expr]] | None:
        """Per study, its gates' fact expressions (what the rebuild worker judges); ``None`` when some study has
        no gate (every patient may match)."""
        if any(g is None for g in self.gates):
            return None
        return [[gate.expr for gate in gates if gate.expr is not None] for gates in self.gates if gates is not None]

    def select(self, parts: StateParts, ids: pl.Series, keep: pl.Series | None = None) -> PatientState | None:
        """:meth:`apply` of the patients ``ids`` (sorted, unique) of a live view given as its parts, without
        copying the facts the studies do not read: the key columns of the patients' rows are gathered and
        judged first, then only the rows kept are gathered whole (at 1M patients, gathering every row of 20k
        patients took most of a chunk's time). ``None`` when the facts filter reads other columns than the
        keys (then :meth:`apply` the selected state)."""
        keys = self.facts.keys
        if keys is None:
            return None
        in_tail = ids.is_in(parts.tail_ids.implode()) if parts.tail_ids.len() else None
        main_ids = ids.filter(~in_tail) if in_tail is not None else ids
        persons = [_gather(parts.persons, main_ids)]
        rows = _rows(parts.facts, main_ids).alias("_row")
        judged = parts.facts.select(keys)[rows].with_columns(rows)
        facts = [parts.facts[self.facts(judged)["_row"]]]
        if in_tail is not None and in_tail.any():
            mine = pl.col("patient_id").is_in(ids.filter(in_tail).implode())
            persons.append(parts.tail_persons.filter(mine))
            facts.append(self.facts(parts.tail_facts.filter(mine)))
        state = PatientState(persons=pl.concat(persons), facts=pl.concat(facts), retracted=parts.retracted)
        return self.apply(state, keep, judged=True)

    def apply(self, state: PatientState, keep: pl.Series | None = None, *, judged: bool = False) -> PatientState:
        """``state`` restricted to the patients that may match one of the studies (and those in ``keep``: the
        known matches), with only the facts the studies read. Their screen gives the same eligible and possible
        rows as screening ``state`` whole; every patient left out is ineligible for every study. ``judged``: the
        facts are only those the studies read already."""
        facts = state.facts if judged else self.facts(state.facts)
        wanted: list[pl.Series] = []
        for gates in self.gates:
            if gates is None:
                return PatientState(persons=state.persons, facts=facts, retracted=state.retracted)
            ids: pl.Series | None = None
            for gate in gates:
                have = gate(facts)["patient_id"].unique()
                ids = have if ids is None else ids.filter(ids.is_in(have.implode()))
            assert ids is not None
            wanted.append(ids)
        if keep is not None:
            wanted.append(keep)
        ids = pl.concat(wanted).unique().implode() if wanted else pl.Series([], dtype=pl.String).implode()
        return PatientState(
            persons=state.persons.filter(pl.col("patient_id").is_in(ids)),
            facts=facts.filter(pl.col("patient_id").is_in(ids)),
            retracted=state.retracted,
        )


def _rows(frame: pl.DataFrame, ids: pl.Series) -> pl.Series:
    """The row numbers of ``frame`` (sorted by ``patient_id``) whose patient is in ``ids`` (sorted)."""
    col = frame["patient_id"]
    lo, hi = col.search_sorted(ids, side="left"), col.search_sorted(ids, side="right")
    return pl.int_ranges(lo, hi, dtype=pl.get_index_type(), eager=True).explode().drop_nulls()


def _gather(frame: pl.DataFrame, ids: pl.Series) -> pl.DataFrame:
    return frame[_rows(frame, ids)] if ids.len() and frame.height else frame.clear()


def _reads(feats: Sequence[Any]) -> pl.Expr:
    """The facts some of ``feats`` read (:meth:`Study.fact_filter`'s rule, for a subset of its features)."""
    from screener.rules.ir import filter_fields

    out = pl.lit(False)
    seen: set[str] = set()
    for f in feats:
        for concept in (f.concept, f.other.concept if f.other is not None else None):
            if concept is not None and concept.name not in seen:
                seen.add(concept.name)
                out = out | concept.fact_expr()
    if any("encounter" in filter_fields(s.filter) for f in feats for s in (f.source, f.other) if s and s.filter):
        out = out | (pl.col("kind") == "visit")
    return out


def _empty_patient() -> PatientState:
    persons = pl.DataFrame({c: [None] for c in PERSONS_SCHEMA}, schema=PERSONS_SCHEMA).with_columns(
        pl.lit("~empty").alias("patient_id")
    )
    return PatientState(
        persons=persons, facts=pl.DataFrame(schema=FACTS_SCHEMA), retracted=pl.DataFrame(schema=RETRACTED_SCHEMA)
    )


def _gates(study: Any, now: datetime) -> tuple[FactFilter, ...] | None:
    """The read facts of the study's gates (see the module), ``None`` when it has none."""
    from screener.rules.ir import collect_attributes, collect_features
    from screener.rules.screen import screen_detail

    found: list[tuple[str, list[Any]]] = []
    for c in study.include:
        if c.ir is None or c.children or collect_attributes(c.ir):
            continue
        feats = collect_features(c.ir)
        if feats:
            found.append((c.name, feats))
    if not found:
        return None
    detail = screen_detail(_empty_patient(), study, now)
    gates = tuple(FactFilter(_reads(feats)) for name, feats in found if detail[name][0] is False)
    return gates or None


def narrowing(studies: Sequence[Any], now: datetime) -> Narrowing | None:
    """The narrowing of a screen against ``studies`` at ``now``, or ``None`` when one of them is not a compiled
    study (a test double: then everything is screened)."""
    from screener.rules import Study

    if not studies or not all(isinstance(s, Study) for s in studies):
        return None
    reads = pl.lit(False)
    for s in studies:
        reads = reads | s.fact_filter()
    return Narrowing(
        studies=frozenset(s.id for s in studies),
        facts=FactFilter(reads),
        gates=tuple(_gates(s, now) for s in studies),
    )


def gated_patients(facts: pl.LazyFrame, gates: list[list[pl.Expr]]) -> pl.Series:
    """The patients of ``facts`` (stored facts, lazily) that have facts for every gate of some study
    (``gates``: per study, its gates' expressions, as :meth:`Narrowing.gate_exprs` gives them), sorted. Each
    gate is judged once per distinct key combination, the facts kept by an expression Polars pushes into the
    scan."""
    return gated_union(pl.collect_all(gate_queries(facts, gates)))


def gate_queries(
    facts: pl.LazyFrame, gates: list[list[pl.Expr]], distinct: pl.DataFrame | None = None
) -> list[pl.LazyFrame]:
    """:func:`gated_patients` as one query per study (collect them together, then :func:`gated_union`).
    ``distinct``: the facts' distinct key combinations when already known (on at least the gates' keys)."""
    from screener.history.store import keys_expr

    read = [FactFilter(e).keys for study in gates for e in study]
    if any(k is None for k in read):
        raise ValueError("a gate reads other columns than the fact keys")
    needed = {c for k in read if k is not None for c in k}
    if distinct is None or not needed <= set(distinct.columns):
        keys = [c for c in FactFilter.KEY_COLUMNS if c in needed]
        distinct = facts.select(keys).unique().collect()
    keys = distinct.columns
    per_study: list[pl.LazyFrame] = []
    for study in gates:
        ids: pl.LazyFrame | None = None
        for expr in study:
            wanted = distinct.filter(expr.fill_null(False))
            have = facts.filter(keys_expr(keys, wanted)).select("patient_id").unique()
            ids = have if ids is None else ids.join(have, on="patient_id", how="semi")
        if ids is not None:
            per_study.append(ids)
    return per_study


def gated_union(found: Sequence[pl.DataFrame]) -> pl.Series:
    """The patients of :func:`gate_queries`' results, sorted."""
    if not found:
        return pl.Series("patient_id", [], dtype=pl.String)
    return pl.concat([f["patient_id"] for f in found]).unique().sort()


def load_gated(
    store_cls: type[HistoryStore], url: str, options: dict[str, str], partition: int, gates: Any, out_dir: str
) -> pl.Series | str | None:
    """In the rebuild worker: :func:`gated_patients` of the partition's stored facts (``None``: the store has
    nothing for it; a string: why it could not be read, after a second try). ``out_dir`` is unused (the ids
    come back pickled: a few per cent of the partition's patients)."""
    from screener.engine.views import read_twice

    store = store_cls(url, options)

    def read() -> pl.Series | None:
        got = store.view(partition, parallel="prefiltered")
        if got is None:
            return None
        try:
            return gated_patients(got[1], gates)
        except Exception as exc:
            raise StoreError(f"history unreadable ({type(exc).__name__})", url=url, partition=partition) from exc

    return read_twice(read)


def safe_narrowing(studies: Sequence[Any], now: datetime) -> Narrowing | None:
    """:func:`narrowing`, or ``None`` (everything screened, logged) when building it fails: a study whose gates
    cannot be evaluated must cost the rule change its narrowing, never the rule change."""
    from screener.engine._base import log

    try:
        return narrowing(studies, now)
    except Exception as exc:
        log.warning("rescreen_narrowing_skipped", error_type=type(exc).__name__, error=str(exc)[:200])
        return None
