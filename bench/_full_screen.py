"""Full screen: screener (from raw facts) against peer engines (from pre-aggregated features), same studies and
patients, outcomes checked equal before any timing counts.

Screener's figure is ``screen(PatientState(persons, facts), studies, now)`` over the whole population, optionally
in chunks of patients (the partitioning is inside the timed region). The peers run patient by patient on a
subset (``--peer-patients``) and their rate is scaled linearly to the full population: their cost per
patient-study is constant (one interpreted evaluation each), so the scaled figure is a fair estimate and far
cheaper to obtain than hours of real runs.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import polars as pl

from bench._features import compute_features, fact_lists, plan_studies
from bench._peers import PEERS, contexts, pyjexl_raw, raw_contexts, run_peer
from bench._stats import Timing, timed_runs

if TYPE_CHECKING:
    from screener.rules import Study
    from screener.state import PatientState

__all__ = ["MismatchError", "PeerResult", "compare_peers", "screen_outcomes"]


class MismatchError(AssertionError):
    """An engine's outcomes differ from screener's: no timing is reported."""


MODES = ("outcomes", "explain")


def _outcomes_only(state: PatientState, studies: Sequence[Study], now: datetime) -> pl.DataFrame:
    """Screener's public ``screen(..., evidence="outcomes")``: what the engine runs.

    Every (study, patient) gets its outcome and every criterion's result is computed; the criteria lists and
    evidence texts are built only for eligible and possible rows (the ones the engine stores).
    """
    from screener.rules import screen

    return screen(state, studies, now, evidence="outcomes").select("study_id", "patient_id", "outcome")


def screen_outcomes(
    persons: pl.DataFrame,
    facts: pl.DataFrame,
    studies: Sequence[Any],
    now: datetime,
    chunk: int | None = None,
    mode: str = "outcomes",
) -> pl.DataFrame:
    """``study_id, patient_id, outcome`` for every (study, patient), computed by screener from raw facts.

    ``mode="explain"`` calls :func:`screener.rules.screen` with ``evidence="all"`` (every criterion's value and
    evidence text, for every row); ``mode="outcomes"`` calls it with ``evidence="outcomes"``, as the engine
    does (:func:`_outcomes_only`). With ``chunk``, patients are screened ``chunk``
    at a time (facts partitioned by patient first, inside the timed region), which bounds memory.
    """
    from screener.rules import screen
    from screener.state import PatientState

    def one(p: pl.DataFrame, f: pl.DataFrame) -> pl.DataFrame:
        state = PatientState(persons=p, facts=f)
        if mode == "explain":
            return screen(state, studies, now).select("study_id", "patient_id", "outcome")
        return _outcomes_only(state, studies, now)

    if not chunk or persons.height <= chunk:
        return one(persons, facts)
    index = persons.select("patient_id", (pl.int_range(pl.len()) // chunk).cast(pl.Int32).alias("_chunk"))
    person_parts = persons.join(index, on="patient_id").partition_by("_chunk", as_dict=True, include_key=False)
    fact_parts = facts.join(index, on="patient_id").partition_by("_chunk", as_dict=True, include_key=False)
    parts = [one(p, fact_parts.get(key, facts.clear())) for key, p in person_parts.items()]
    return pl.concat(parts)


@dataclass
class PeerResult:
    name: str
    version: str
    note: str
    timing: Timing
    evaluations: int  # patients x studies per run
    every: bool = False  # every criterion evaluated (no early exit)
    context: str = "features"  # what it was given: features | encoded | facts
    outcome_counts: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.evaluations / self.timing.median


@dataclass
class Comparison:
    patients: int
    studies: int
    feature_columns: int
    features_seconds: float
    screener_subset: Timing
    screener_explain_subset: Timing
    peers: list[PeerResult]
    outcome_counts: dict[str, int]


def _expected(screened: pl.DataFrame, study_ids: Sequence[str], patient_ids: Sequence[str]) -> list[list[str]]:
    """Screener's outcomes as ``[study][patient]`` in the given orders."""
    order = pl.DataFrame({"patient_id": list(patient_ids)}).with_row_index("_p")
    out: list[list[str]] = []
    by_study = screened.partition_by("study_id", as_dict=True)
    for sid in study_ids:
        part = by_study.get((sid,))
        if part is None:
            raise MismatchError(f"screener returned no rows for study {sid}")
        aligned = order.join(part, on="patient_id", how="left").sort("_p")
        if aligned["outcome"].null_count():
            raise MismatchError(f"screener returned no row for some patients of study {sid}")
        out.append(aligned["outcome"].to_list())
    return out


def _check(
    peer: str,
    got: list[list[str]],
    expected: list[list[str]],
    study_ids: Sequence[str],
    patient_ids: Sequence[str],
    ctxs: list[list[dict[str, Any]]],
) -> None:
    bad: list[str] = []
    total = 0
    for s, (g_row, e_row) in enumerate(zip(got, expected, strict=True)):
        for p, (g, e) in enumerate(zip(g_row, e_row, strict=True)):
            if g != e:
                total += 1
                if len(bad) < 8:
                    bad.append(
                        f"  {study_ids[s]} / {patient_ids[p]}: {peer} says {g}, screener says {e}; "
                        f"features {ctxs[s][p]}"
                    )
    if total:
        raise MismatchError(
            f"{peer} disagrees with screener on {total} (study, patient) outcomes; "
            "no timing is reported:\n" + "\n".join(bad)
        )


def compare_peers(
    persons: pl.DataFrame, facts: pl.DataFrame, studies: Sequence[Any], now: datetime, peers: Sequence[str], runs: int
) -> Comparison:
    """Check every peer against screener on this population, then time each one ``runs`` times.

    :raises MismatchError: when any engine's outcome differs for any (study, patient).
    """
    from bench._stats import package_version

    plans, features, concepts = plan_studies(studies)
    t0 = time.perf_counter()
    frame = compute_features(persons, facts, features.values(), concepts, now)
    features_seconds = time.perf_counter() - t0
    patient_ids = frame["patient_id"].to_list()
    study_ids = [p.study_id for p in plans]

    screener_timing, screened = timed_runs(lambda: screen_outcomes(persons, facts, studies, now), runs)
    expected = _expected(screened, study_ids, patient_ids)
    counts = dict(screened.group_by("outcome").len().iter_rows())
    explain_timing, explained = timed_runs(lambda: screen_outcomes(persons, facts, studies, now, mode="explain"), runs)
    _check(
        "screen() with explanations",
        _expected(explained, study_ids, patient_ids),
        expected,
        study_ids,
        patient_ids,
        [[{} for _ in patient_ids] for _ in study_ids],
    )

    results: list[PeerResult] = []
    raw: tuple[pl.DataFrame, dict[str, Any]] | None = None
    for label in peers:
        name, every = label.removesuffix("+all"), label.endswith("+all")
        peer = pyjexl_raw(now) if name == "pyjexl-raw" else PEERS[name]
        if peer.context == "facts":
            if raw is None:
                raw = fact_lists(persons, facts, concepts, now)
            ctxs = [raw_contexts(raw[0], raw[1], plan) for plan in plans]
        else:
            ctxs = [contexts(frame, plan, features, encoded=peer.context == "encoded") for plan in plans]
        got = run_peer(peer, plans, ctxs, features, every=every)  # warm-up and correctness check, untimed
        _check(label, got, expected, study_ids, patient_ids, ctxs)
        timing, _ = timed_runs(functools.partial(run_peer, peer, plans, ctxs, features, every=every), runs)
        results.append(
            PeerResult(
                label,
                package_version(peer.package),
                peer.note,
                timing,
                len(patient_ids) * len(plans),
                every=every,
                context=peer.context,
            )
        )
    return Comparison(
        len(patient_ids), len(plans), len(features), features_seconds, screener_timing, explain_timing, results, counts
    )
