"""Covering a batch's (patient, study) needs with few screens (:func:`cover`, for :mod:`screener.engine._affects`)."""

from __future__ import annotations

import polars as pl

__all__ = ["CALL_COST", "STUDY_COST", "cover"]

#: The cost model of one screen call, in patient x study evaluations: a call costs ``CALL_COST`` plus
#: ``STUDY_COST`` per study plus one per pair (measured on the sample studies: about 10 ms a call, 2.5 ms a study
#: and 20 us a pair).
CALL_COST = 500
STUDY_COST = 125


def cover(
    pairs: pl.DataFrame, everything: pl.Series, open_ids: list[str]
) -> list[tuple[pl.Series, frozenset[str] | None]]:
    """Screens ``(patients, studies)`` covering every ``(patient_id, study_id)`` of ``pairs`` and every open
    study for the patients of ``everything`` (``None``: every open study), at about the least cost.

    Studies that need the same patients form one group (replicas of a study, say); then the two groups whose
    merge saves the most are merged (their patients and studies united: each patient is screened against the
    other group's studies too), while a merge saves anything. Vectorised over patients; the loop is over the
    groups (at most one per study, plus one)."""
    groups: list[tuple[pl.Series, list[str]]] = []
    if pairs.height:
        families = (
            pairs.group_by("study_id")
            .agg(pl.col("patient_id").sort())
            .group_by("patient_id")
            .agg(pl.col("study_id").sort())
            .sort(pl.col("study_id").list.first())
        )
        groups = [(pl.Series("patient_id", ids, dtype=pl.String), sids) for ids, sids in families.iter_rows()]
    if everything.len():
        groups.append((everything, list(open_ids)))
    if len(groups) > 1:
        groups = _merge(groups, open_ids)
    full = frozenset(open_ids)
    out: list[tuple[pl.Series, frozenset[str] | None]] = []
    for ids, sids in groups:
        only = frozenset(sids)
        out.append((ids.unique().sort(), None if only == full else only))
    return out


def _merge(groups: list[tuple[pl.Series, list[str]]], open_ids: list[str]) -> list[tuple[pl.Series, list[str]]]:
    """Greedy merging of ``groups`` under the cost model (numpy over the patient x group incidence)."""
    import numpy as np

    patients = pl.concat([ids for ids, _ in groups]).unique()
    code = {sid: k for k, sid in enumerate(open_ids)}
    n = len(groups)
    members = np.zeros((patients.len(), n), dtype=np.float64)
    studies = np.zeros((n, len(open_ids)), dtype=np.float64)
    lookup = patients.to_frame().with_row_index("_i")
    for g, (ids, sids) in enumerate(groups):
        rows = ids.to_frame().join(lookup, on="patient_id", how="inner")["_i"].to_numpy()
        members[rows, g] = 1.0
        studies[g, [code[s] for s in sids]] = 1.0
    alive = list(range(n))
    while len(alive) > 1:
        m, t = members[:, alive], studies[alive]
        p, s = m.sum(axis=0), t.sum(axis=1)
        cost = CALL_COST + STUDY_COST * s + p * s
        pu = p[:, None] + p[None, :] - m.T @ m
        su = s[:, None] + s[None, :] - t @ t.T
        saving = cost[:, None] + cost[None, :] - (CALL_COST + STUDY_COST * su + pu * su)
        np.fill_diagonal(saving, -np.inf)
        a, b = np.unravel_index(int(np.argmax(saving)), saving.shape)
        if saving[a, b] <= 0:
            break
        ga, gb = alive[a], alive[b]
        members[:, ga] = np.maximum(members[:, ga], members[:, gb])
        studies[ga] = np.maximum(studies[ga], studies[gb])
        alive.remove(gb)
    out = []
    for g in alive:
        ids = patients.filter(pl.Series(members[:, g] > 0))
        out.append((ids, [sid for sid, k in code.items() if studies[g, k] > 0]))
    return out
