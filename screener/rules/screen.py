"""Screen every patient in a :class:`PatientState` against studies in one vectorised pass.

How (no Python loop over patients): :mod:`screener.rules.features` aggregates the facts into one row of
statistics per patient; :mod:`screener.rules.criteria` evaluates each study's criteria over that row;
:mod:`screener.rules.results` builds the result rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime

import polars as pl

from screener.rules._facts import ensure_columns
from screener.rules._plan import plan_of
from screener.rules.criteria import compiled, staged, study_frame
from screener.rules.features import ENGINE, FeatureStats, attributes, feature_stats
from screener.rules.model import Study
from screener.rules.results import (
    CRITERIA_DTYPE,
    EVIDENCE_MODES,
    MATCH_OUTCOMES,
    ROW_MODES,
    Evidence,
    Rows,
    _assemble,
    _counts_frame,
    _long,
    _masked_rows,
    _outcome_rows,
    _outcome_sums,
    _plain,
    _result,
    criteria_json,
)
from screener.state import PatientState

__all__ = [
    "CRITERIA_DTYPE",
    "EVIDENCE_MODES",
    "MATCH_OUTCOMES",
    "ROW_MODES",
    "Evidence",
    "Rows",
    "criteria_json",
    "screen",
    "screen_detail",
    "screen_with_counts",
]


#: ``evidence="matches"``: up to this many matched patients, every matched study's evidence is built in one frame
_SMALL_UNION = 2000
#: up to this many patients, result rows are built by one query for all studies (:func:`_long`), above it study
#: by study (:func:`_assemble`, cheaper per row but with a fixed cost per study)
_SMALL_CALL = 256
#: True: the studies' common expressions are evaluated once (:mod:`screener.rules._shared`); False evaluates every
#: study's own (the reference the tests compare with)
_SHARE = True
#: The micro-batch queries (a few hundred rows, hundreds of expressions) cost the same per expression whatever
#: the rows; the optimiser's passes over them cost more than they save there (about 11 % of a batch's screen, 50
#: studies, ~170 patients). Type coercion and checks stay on: the results are the same.
_UNOPTIMISED = pl.QueryOptFlags.none()


def _registrations(state: PatientState, studies: Sequence[Study]) -> pl.DataFrame | None:
    """The facts to read ``registered_days`` from, when some study uses it (else ``None``: no scan)."""
    if any("registered_days" in s.attributes() for s in studies):
        return ensure_columns(state.facts)
    return None


_Inputs = tuple[pl.DataFrame, FeatureStats]


def _inputs(state: PatientState, studies: Sequence[Study], now: datetime) -> _Inputs:
    """The attributes (one row per person, ``state.persons`` order) and the feature statistics."""
    attrs = attributes(state.persons, now, _registrations(state, studies)).collect(engine=ENGINE)
    return attrs, feature_stats(state, studies, now)


def _base(
    state: PatientState,
    studies: Sequence[Study],
    now: datetime,
    inputs: tuple[pl.DataFrame, FeatureStats] | None = None,
) -> pl.DataFrame:
    """One row per person (``state.persons`` order): the attributes, then every feature statistic."""
    attrs, stats = inputs or _inputs(state, studies, now)
    return pl.concat([attrs, stats.wide().drop("patient_id")], how="horizontal")


def _columns(frame: pl.DataFrame, names: Iterable[str]) -> pl.DataFrame:
    """``frame``'s columns ``names``, picked by name (a ``select`` on the wide frame plans over all its columns)."""
    return pl.DataFrame([frame.get_column(c) for c in names])


def _matched_rows(
    full: pl.DataFrame,
    stats: FeatureStats,
    names: Sequence[str],
    mask: pl.Series,
    sources: Mapping[str, str] | None = None,
) -> pl.DataFrame:
    """The columns ``names`` of the rows of ``full`` where ``mask`` is true: those ``full`` has (or holds under
    the name ``sources`` gives, :mod:`screener.rules._shared`), and the feature statistics it was built without
    (only the evidence reads them), widened for these rows only."""
    have = set(full.columns)
    src = sources or {}
    picked = [c for c in names if c in have or src.get(c) in have]
    at = mask.arg_true()
    # (a gather by position, not ``filter``: a DataFrame filter plans a query, per study)
    part = pl.DataFrame([full.get_column(src.get(c, c)).alias(c) for c in picked])[at]
    missing = {c for c in names if c not in have and src.get(c) not in have}
    if not missing:
        return part
    extra = stats.wide(missing, at)
    # (by its columns: ``drop`` plans a query over the frame's columns, per study)
    return pl.DataFrame([*part.get_columns(), *extra.get_columns()[1:]])


def screen(
    state: PatientState,
    studies: Sequence[Study],
    now: datetime,
    *,
    evidence: Evidence = "all",
    rows: Rows = "all",
    known: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """Evaluate every patient in ``state.persons`` against every study, at time ``now`` (aware, UTC).

    Returns one row per (study, patient): ``study_id, patient_id, outcome, rule_hash, criteria`` (see
    rules-spec). Facts after ``now`` are ignored. Does not filter by study dates, consent or death.

    ``evidence`` chooses where the criteria's evidence texts are built (outcomes and every criterion's result
    are always computed for every row, identically in every mode; ``"outcomes"`` returns results only where
    it returns evidence):

    - ``"all"`` (default): on every row. Rows come study by study, patients in ``state.persons`` order.
    - ``"matches"``: only on rows whose outcome is ``eligible`` or ``possible`` (:data:`MATCH_OUTCOMES`);
      other rows carry ``evidence`` null.
    - ``"none"``: nowhere (``evidence`` null on every row); row order as ``"all"``.
    - ``"outcomes"``: as ``"matches"``, but the other rows' ``criteria`` is null (no list at all): every row
      still has its outcome. The cheapest mode when only the eligible/possible rows are kept (the engine).

    In ``"matches"`` and ``"outcomes"`` the row order is unspecified (each (study, patient) once).

    ``rows`` chooses which rows are returned: ``"all"`` (default) every (study, patient); ``"matches"`` only
    those with outcome ``eligible`` or ``possible``, exactly the rows (and row contents) of ``rows="all"``
    with that outcome under the same ``evidence``, except that ``evidence="all"`` is then the same as
    ``"matches"`` and ``"outcomes"`` (every returned row has its evidence) and the row order is unspecified.
    Every patient is still evaluated against every study; the other rows are never built. The cheapest call
    when only the matches are kept (the engine); :func:`screen_with_counts` also gives per-study counts.

    ``known`` (``study_id, patient_id``; only with ``rows="matches"``) names pairs whose row is returned whatever
    its outcome, with its criteria and evidence, as ``evidence="all"`` builds them: the engine's recorded matches,
    so that one screen gives both the matches and the rows of the known ones it now rules out.

    Compiled expressions are cached per study object, and code tables per study set, so repeated calls (the
    engine's micro-batches) pay only for the patients.
    """
    return _screen(state, studies, now, evidence, rows, want_counts=False, known=known)[0]


def screen_with_counts(
    state: PatientState,
    studies: Sequence[Study],
    now: datetime,
    *,
    evidence: Evidence = "outcomes",
    rows: Rows = "matches",
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """:func:`screen` plus the number of patients per study and outcome, whatever ``rows`` returns.

    The counts frame has one row per study (in ``studies`` order): ``study_id`` (str), ``eligible``,
    ``possible``, ``ineligible`` (UInt32); the three add up to ``state.persons.height``.
    """
    frame, counts = _screen(state, studies, now, evidence, rows, want_counts=True)
    assert counts is not None
    return frame, counts


def _screen(
    state: PatientState,
    studies: Sequence[Study],
    now: datetime,
    evidence: str,
    rows: str,
    want_counts: bool,
    known: pl.DataFrame | None = None,
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    if known is not None and rows != "matches":
        raise ValueError("known pairs need rows='matches'")
    if evidence not in EVIDENCE_MODES:
        raise ValueError(f"evidence must be one of {', '.join(EVIDENCE_MODES)}, got {evidence!r}")
    if rows not in ROW_MODES:
        raise ValueError(f"rows must be one of {', '.join(ROW_MODES)}, got {rows!r}")
    if now.tzinfo is None:
        raise ValueError("screen() needs a timezone-aware 'now'")
    now = now.astimezone(UTC)
    schema: dict[str, pl.DataType] = {
        "study_id": pl.String(),
        "patient_id": pl.String(),
        "outcome": pl.String(),
        "rule_hash": pl.String(),
        "criteria": CRITERIA_DTYPE,
    }
    only_matches = rows == "matches"
    if only_matches and evidence == "all":
        evidence = "matches"  # same returned rows: every match carries its evidence
    if known is not None and evidence == "none":
        evidence = "outcomes"  # the known rows carry their evidence
    if not studies or state.persons.height == 0:
        zeros = [0] * len(studies)
        return pl.DataFrame(schema=schema), (_counts_frame(studies, zeros, zeros, 0) if want_counts else None)
    n_persons = state.persons.height
    comps = [compiled(s) for s in studies]
    attrs, stats = inputs = _inputs(state, studies, now)
    plan = plan_of(comps, _SHARE) if evidence in ("matches", "outcomes") else None
    if evidence == "all":
        base = _plain(_base(state, studies, now, inputs)).lazy()
    else:
        # only the statistics the values read: the evidence's own are widened for the matched rows only
        reads = plan.reads if plan is not None else set().union(*(c.value_inputs for c in comps))
        # (plain Series side by side: a horizontal concat and a drop each plan over the ~500 columns)
        base = pl.DataFrame([*attrs.get_columns(), *stats.wide(reads).get_columns()[1:]]).lazy()
    pairs = list(zip(studies, comps, strict=True))
    small = n_persons <= _SMALL_CALL
    if evidence == "all":
        stages = [[v + e for v, e in zip(c.values, c.evidence, strict=True)] for c in comps]
        full = _plain(staged(base, stages).with_columns([c.outcome for c in comps]).collect(engine=ENGINE))
        counts = _counts_frame(studies, *_outcome_sums(full, comps), n_persons) if want_counts else None
        if small:
            return _long(full.lazy(), [_result(s, c, True) for s, c in pairs]).collect(engine=ENGINE), counts
        return pl.concat([_assemble(full, s, c, True) for s, c in pairs], how="vertical"), counts
    match = pl.col("outcome").is_in(MATCH_OUTCOMES)
    if evidence == "none":
        values = staged(base, [c.values for c in comps]).with_columns([c.outcome for c in comps])
        keep = ["patient_id", *(c.outcome_col for c in comps), *(k.value for c in comps for k in c.criteria)]
        full = _plain(values.select(list(dict.fromkeys(keep))).collect(engine=ENGINE))
        counts = _counts_frame(studies, *_outcome_sums(full, comps), n_persons) if want_counts else None
        if small:
            q = _long(full.lazy(), [_result(s, c, False) for s, c in pairs])
            return (q.filter(match) if only_matches else q).collect(engine=ENGINE), counts
        keeps = [pl.col(c.outcome_col).is_in(MATCH_OUTCOMES) if only_matches else None for c in comps]
        return pl.concat(
            [_assemble(full, s, c, False, keep=k) for (s, c), k in zip(pairs, keeps, strict=True)], how="vertical"
        ), counts
    lists = evidence == "matches"  # "outcomes": no criteria list on the rows without evidence
    # The studies' common expressions computed once (:mod:`screener.rules._shared`): the outcomes and the
    # criteria's values under their own names, any other value column under its source's.
    assert plan is not None
    vshared = plan.vshared
    values = base
    for stage in vshared.stages:
        values = values.with_columns(stage)
    raw = values.collect(engine=ENGINE, optimizations=_UNOPTIMISED)
    # The ids and outcomes as plain Series, for the queries over them; the other columns are picked by name (a
    # plain copy of every column, ~1,500 with 50 studies, costs more than the rest of a small call's queries).
    outs = pl.DataFrame([raw.get_column(c) for c in plan.outcome_columns])
    full = raw if only_matches else _plain(raw)
    eligible, possible = plan.outcome_sums(outs)
    match_counts = [e + p for e, p in zip(eligible, possible, strict=True)]
    counts_frame = _counts_frame(studies, eligible, possible, n_persons) if want_counts else None
    kept = _known_ids(outs, studies, known)  # study position -> its known patients here
    matched = [
        plan.matched[i] | pl.col("patient_id").is_in(kept[i].implode()) if i in kept else plan.matched[i]
        for i in range(len(comps))
    ]
    # (the known pairs' rows come with the matches, whatever their outcome)
    match_counts = [n + (kept[i].len() if i in kept else 0) for i, n in enumerate(match_counts)]
    hits = [i for i, n in enumerate(match_counts) if n]
    with_ev: dict[int, pl.DataFrame] = {}
    if hits:
        # the rows matched in each study and in some study (masks: filtering the wide frame would copy every column)
        masks = outs.select(
            *(matched[i].alias(f"_m{i}") for i in hits), pl.any_horizontal(matched[i] for i in hits).alias("_m")
        )
        union = masks.get_column("_m")
        n_union = int(union.sum())
        if small or n_union * len(hits) <= 2 * sum(match_counts) or n_union <= _SMALL_UNION:
            # Few rows: one frame for every study with a match (a frame per study costs more than the extra rows).
            eshared, need = plan.evidence_of(hits)
            rows_ev = _matched_rows(full, stats, need, union, vshared.sources).lazy()
            for stage in eshared.stages:
                rows_ev = rows_ev.with_columns(stage)
            ev = rows_ev.collect(engine=ENGINE, optimizations=_UNOPTIMISED)
            with_ev = dict.fromkeys(hits, ev)
        else:
            parts = [
                staged(
                    _matched_rows(
                        full, stats, comps[i].evidence_inputs, masks.get_column(f"_m{i}"), vshared.sources
                    ).lazy(),
                    [comps[i].evidence],
                )
                for i in hits
            ]
            with_ev = dict(zip(hits, pl.collect_all(parts, engine=ENGINE, optimizations=_UNOPTIMISED), strict=True))
    shared = bool(hits) and with_ev[hits[0]] is with_ev[hits[-1]]  # one evidence frame for every study
    out: list[pl.DataFrame] = []
    if only_matches:
        pass  # the rows without a match are never built
    elif small:
        out.append(
            _long(full.lazy(), [_result(s, c, False, lists) for s, c in pairs])
            .filter(~match)
            .collect(engine=ENGINE, optimizations=_UNOPTIMISED)
        )
    elif not lists:
        out.append(_outcome_rows(full, pairs).filter(~match))
    else:
        out += [
            _assemble(full, s, c, False, keep=~matched[i] if i in with_ev else None) for i, (s, c) in enumerate(pairs)
        ]
    if shared:
        ev = with_ev[hits[0]]
        # (the evidence frame's rows are the union's: each study's mask cut to them)
        at = masks.get_column("_m").arg_true()
        every = _masked_rows(ev, [(*pairs[i], masks.get_column(f"_m{i}").gather(at)) for i in hits])
        if kept:
            assert known is not None
            pairs_k = known.select(pl.col("study_id").cast(pl.String), pl.col("patient_id").cast(pl.String))
            rest = every.filter(~match).join(pairs_k, on=["study_id", "patient_id"], how="semi")
            out += [every.filter(match), rest]
        else:
            out.append(every)  # (without known pairs the masks are the matches)
    else:
        out += [_assemble(with_ev[i], *pairs[i], True, keep=matched[i]) for i in hits]
    if not out:
        return pl.DataFrame(schema=schema), counts_frame
    return pl.concat(out, how="vertical"), counts_frame


def _known_ids(full: pl.DataFrame, studies: Sequence[Study], known: pl.DataFrame | None) -> dict[int, pl.Series]:
    """Per study position, the patients of ``full`` that ``known`` names for that study (studies with none left out)."""
    if known is None or known.height == 0:
        return {}
    at = {s.id: i for i, s in enumerate(studies)}
    here = known.select(pl.col("study_id").cast(pl.String), pl.col("patient_id").cast(pl.String)).join(
        full.select("patient_id"), on="patient_id", how="semi"
    )
    here = here.filter(pl.col("study_id").is_in(list(at))).unique()
    return {
        at[sid]: group.get_column("patient_id")
        for (sid,), group in here.partition_by("study_id", as_dict=True, maintain_order=True).items()
    }


def screen_detail(state: PatientState, study: Study, now: datetime) -> pl.DataFrame:
    """Every criterion of one study, nested members included, one row per patient.

    Columns: ``patient_id``, ``outcome``, then per criterion (depth-first, plain names) ``<name>`` (Boolean,
    null = unknown) and ``<name>:evidence`` (String). Used by ``rules test`` and ``rules explain``.
    """
    if now.tzinfo is None:
        raise ValueError("screen_detail() needs a timezone-aware 'now'")
    now = now.astimezone(UTC)
    return study_frame(_base(state, [study], now).lazy(), study, now, nested=True).collect()
