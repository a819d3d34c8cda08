"""The plan of a screen (:func:`screener.rules.screen.screen`, the ``"matches"``/``"outcomes"`` path): what it builds
from the compiled studies alone, whatever the rows, kept per study set so a micro-batch of a few patients does not
pay for planning 50 studies' shared stages and expression lists again (about a quarter of such a call)."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import polars as pl

from screener.rules._shared import SharedStages, shared_stages
from screener.rules.criteria import Compiled
from screener.rules.results import MATCH_OUTCOMES

__all__ = ["Plan", "plan_of"]


class Plan:
    """What a screen of ``comps`` (the ``"matches"``/``"outcomes"`` path) builds from the compiled studies alone,
    whatever the rows: kept per study set (:func:`plan_of`), so a micro-batch of a few patients does not pay for
    planning 50 studies' shared stages and expression lists again (about a quarter of such a call)."""

    def __init__(self, comps: Sequence[Compiled], share: bool) -> None:
        self.comps = tuple(comps)  # held: the cache is keyed by their ids
        self.share = share
        #: the statistics the values read
        self.reads = set().union(*(c.value_inputs for c in comps))
        kept_v = [name for c in comps for name in (c.outcome_col, *(k.value for k in c.criteria))]
        self.vshared = shared_stages(comps, [[*c.values, [c.outcome]] for c in comps], kept_v, share)
        self.matched = [pl.col(c.outcome_col).is_in(MATCH_OUTCOMES) for c in comps]
        #: the columns of the values frame the outcome queries read
        self.outcome_columns = list(dict.fromkeys(["patient_id", *(c.outcome_col for c in comps)]))
        self.sums = [
            *((pl.col(c.outcome_col) == "eligible").sum().alias(f"e{i}") for i, c in enumerate(comps)),
            *((pl.col(c.outcome_col) == "possible").sum().alias(f"p{i}") for i, c in enumerate(comps)),
        ]
        #: per tuple of study positions with a match: the evidence stages and the columns they need
        self.evidence: dict[tuple[int, ...], tuple[SharedStages, list[str]]] = {}

    def outcome_sums(self, full: pl.DataFrame) -> tuple[list[int], list[int]]:
        """Per study: the number of ``eligible`` and of ``possible`` rows of ``full`` (one pass)."""
        k = len(self.comps)
        sums = full.select(self.sums).row(0)
        return [int(x) for x in sums[:k]], [int(x) for x in sums[k:]]

    def evidence_of(self, hits: Sequence[int]) -> tuple[SharedStages, list[str]]:
        """The shared evidence stages of the studies at ``hits`` and the columns of the values frame they need."""
        key = tuple(hits)
        got = self.evidence.get(key)
        if got is None:
            comps = self.comps
            kept_e = [n for i in hits for k in comps[i].criteria for n in (k.evidence, k.expires) if n]
            eshared = shared_stages([comps[i] for i in hits], [comps[i].evidence for i in hits], kept_e, self.share)
            result_cols = [n for i in hits for n in (comps[i].outcome_col, *(k.value for k in comps[i].criteria))]
            need = list(dict.fromkeys(["patient_id", *result_cols, *sorted(eshared.reads)]))
            if len(self.evidence) >= _PLAN_EVIDENCE_SETS:
                self.evidence.clear()
            got = self.evidence[key] = (eshared, need)
        return got


#: Plans kept (:func:`plan_of`): study sets (a rules version, the narrowed re-screens' subsets) ...
_PLANS_KEPT = 64
#: ... and per plan, sets of matched studies
_PLAN_EVIDENCE_SETS = 256
_PLANS: dict[tuple[int, ...], Plan] = {}
_PLANS_LOCK = threading.Lock()


def plan_of(comps: Sequence[Compiled], share: bool) -> Plan:
    """The plan of a screen of ``comps``, built once per study set and ``share`` (the studies' common expressions
    evaluated once, :mod:`screener.rules._shared`)."""
    key = (int(share), *map(id, comps))
    plan = _PLANS.get(key)
    if plan is None:
        plan = Plan(comps, share)
        with _PLANS_LOCK:
            if len(_PLANS) >= _PLANS_KEPT:
                _PLANS.clear()
            _PLANS[key] = plan
    return plan
