"""Screen every patient in a :class:`PatientState` against studies in one vectorised pass.

How (no Python loop over patients):

1. Every concept-set feature (concept meaning x window) any study uses is collected once and shared.
2. Concept membership: facts are joined to an expanded code table. ICD10/ATC/OPCS4 codes are prefixes
   (compared without dots, upper-cased): one join per distinct prefix length; other systems match exactly.
   Explicit exclusions are anti-joined.
3. Numeric facts are converted to the concept's unit by a join with a conversion table; values in unknown or
   unconvertible units are left out of the numbers and counted (``n_unk``).
4. Facts are joined to each feature's window ``[now - w, now]`` (inclusive) and aggregated per
   (patient, feature) in one ``group_by``, then pivoted to one row per patient.
5. Each study's criteria are Polars expressions over that row (see :mod:`screener.rules.compiler`).
"""

from __future__ import annotations

import itertools
import json
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import numpy as np
import polars as pl

from screener.rules.compiler import NOW_COL, TRANSFORM_STATS, Feat, Plan, lower, stat_col
from screener.rules.model import PREFIX_SYSTEMS, ConceptSet, Criterion, Study, normalise_code, normalise_code_expr
from screener.rules.units import conversions_to, normalise_unit_expr
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
    "screen_with_counts",
]

CRITERIA_DTYPE = pl.List(
    pl.Struct({"name": pl.String, "group": pl.String, "result": pl.Boolean, "evidence": pl.String})
)
TS = pl.Datetime("us", "UTC")

_STAT_DTYPES: dict[str, pl.DataType] = {
    "n": pl.UInt32(),
    "last_t": TS,
    "last_code": pl.String(),
    "latest_v": pl.Float64(),
    "latest_t": TS,
    "earliest_v": pl.Float64(),
    "earliest_t": TS,
    "min_v": pl.Float64(),
    "min_t": TS,
    "max_v": pl.Float64(),
    "max_t": TS,
    "mean_v": pl.Float64(),
    "n_num": pl.UInt32(),
    "n_unk": pl.UInt32(),
}


def _features(studies: Sequence[Study]) -> dict[str, list[Feat]]:
    """feature key -> the Feat nodes sharing it (same concept meaning and window)."""
    out: dict[str, list[Feat]] = {}
    for s in studies:
        for f in s.features():
            out.setdefault(f.key, []).append(f)
    return out


def _member_table(concepts: dict[str, ConceptSet]) -> pl.DataFrame | None:
    """The code table of :func:`_membership` (``None`` when no concept has a code)."""
    rows: list[dict[str, Any]] = []
    for key, c in concepts.items():
        for excl, pairs in ((False, c.codes), (True, c.exclude)):
            for system, code in pairs:
                rows.append(
                    {
                        "_ckey": key,
                        "system": system,
                        "_code": normalise_code(code),
                        "_prefix": system in PREFIX_SYSTEMS,
                        "_excl": excl,
                    }
                )
    if not rows:
        return None
    return pl.DataFrame(rows).with_columns(pl.col("_code").str.len_chars().alias("_len"))


def _membership(
    facts: pl.LazyFrame, concepts: dict[str, ConceptSet], table: pl.DataFrame | None = None
) -> pl.LazyFrame:
    """``(_fid, _ckey)`` pairs: fact ``_fid`` belongs to concept ``_ckey`` (exclusions applied)."""
    if table is None:
        table = _member_table(concepts)
    if table is None:
        return pl.LazyFrame(schema={"_fid": pl.UInt32, "_ckey": pl.String})
    coded = facts.select("_fid", "system", normalise_code_expr(pl.col("code")).alias("_code")).filter(
        pl.col("_code").is_not_null()
    )
    parts: list[pl.LazyFrame] = []
    exact = table.filter(~pl.col("_prefix")).select("_ckey", "system", "_code", "_excl")
    if exact.height:
        parts.append(coded.join(exact.lazy(), on=["system", "_code"], how="inner").select("_fid", "_ckey", "_excl"))
    prefix = table.filter(pl.col("_prefix"))
    # One join per distinct prefix length: the fact code cut to that length must equal the prefix.
    for n in sorted(set(prefix["_len"].to_list())):
        t = prefix.filter(pl.col("_len") == n).select("_ckey", "system", pl.col("_code").alias("_p"), "_excl")
        parts.append(
            coded.filter(pl.col("system").is_in(list(PREFIX_SYSTEMS)) & (pl.col("_code").str.len_chars() >= n))
            .with_columns(pl.col("_code").str.slice(0, n).alias("_p"))
            .join(t.lazy(), on=["system", "_p"], how="inner")
            .select("_fid", "_ckey", "_excl")
        )
    hits = pl.concat(parts, how="vertical")
    included = hits.filter(~pl.col("_excl")).select("_fid", "_ckey").unique()
    if not any(c.exclude for c in concepts.values()):
        return included
    excluded = hits.filter(pl.col("_excl")).select("_fid", "_ckey").unique()
    return included.join(excluded, on=["_fid", "_ckey"], how="anti")


def _conversions(concepts: dict[str, ConceptSet]) -> pl.LazyFrame:
    rows = []
    for key, c in concepts.items():
        for spelling, (a, b) in conversions_to(c.unit, c.analyte).items():
            rows.append({"_ckey": key, "_unit": spelling, "_a": a, "_b": b})
    return pl.LazyFrame(rows, schema={"_ckey": pl.String, "_unit": pl.String, "_a": pl.Float64, "_b": pl.Float64})


@dataclass
class _FeaturePlan:
    """Everything :func:`feature_frame` needs that depends only on the studies (built once per study set)."""

    feats: dict[str, list[Feat]]
    stats_needed: dict[str, set[str]]
    concepts: dict[str, ConceptSet]
    columns: list[str]
    empty: pl.DataFrame
    member_table: pl.DataFrame | None
    conversions: pl.DataFrame


#: study set (a tuple of studies, compared by identity) -> its feature plan; a few recent sets are kept
_FEATURE_PLANS: dict[tuple[Study, ...], _FeaturePlan] = {}
_FEATURE_PLANS_MAX = 16

#: Polars engine for every query here: the in-memory engine runs these wide, many-expression queries ~3x
#: faster than the streaming engine Polars 2 picks by default.
ENGINE: Literal["in-memory"] = "in-memory"


def _feature_plan(studies: Sequence[Study]) -> _FeaturePlan:
    key = tuple(studies)
    plan = _FEATURE_PLANS.get(key)
    if plan is not None:
        return plan
    feats = _features(studies)
    stats_needed: dict[str, set[str]] = {}
    concepts: dict[str, ConceptSet] = {}
    for fkey, group in feats.items():
        concepts[group[0].concept.key] = group[0].concept
        stats_needed.setdefault(fkey, set()).update(s for f in group for s in TRANSFORM_STATS[f.transform])
    columns = [stat_col(feats[k][0], s) for k in feats for s in sorted(stats_needed[k])]
    empty = pl.DataFrame(schema={"patient_id": pl.String, **{c: _STAT_DTYPES[c.rsplit(":", 1)[1]] for c in columns}})
    plan = _FeaturePlan(
        feats, stats_needed, concepts, columns, empty, _member_table(concepts), _conversions(concepts).collect()
    )
    if len(_FEATURE_PLANS) >= _FEATURE_PLANS_MAX:
        _FEATURE_PLANS.pop(next(iter(_FEATURE_PLANS)))
    _FEATURE_PLANS[key] = plan
    return plan


#: up to this many (patient, feature) rows, :func:`feature_frame` widens them with a single pivot
_ONE_PIVOT = 20_000


def feature_frame(state: PatientState, studies: Sequence[Study], now: datetime) -> pl.DataFrame:
    """One row per patient with facts in some feature; columns ``patient_id`` and ``<feature>:<stat>``."""
    fp = _feature_plan(studies)
    feats, stats_needed, concepts, columns, empty = fp.feats, fp.stats_needed, fp.concepts, fp.columns, fp.empty
    if not feats or state.facts.height == 0:
        return empty
    windows = []
    for key, group in feats.items():
        f0 = group[0]
        windows.append({"_fkey": key, "_ckey": f0.concept.key, "_start": f0.window.start(now) if f0.window else None})
    # Concept membership is decided once per distinct (system, code), not per fact: far fewer string operations.
    codes = state.facts.select("system", "code").unique().with_row_index("_fid")
    pairs = _membership(codes.lazy(), concepts, fp.member_table)
    code_concepts = codes.lazy().join(pairs, on="_fid", how="inner").select("system", "code", "_ckey")
    units = (
        state.facts.lazy()
        .select(pl.col("unit").unique())
        .with_columns(normalise_unit_expr(pl.col("unit")).alias("_unit"))
    )
    wins = pl.LazyFrame(windows, schema={"_fkey": pl.String, "_ckey": pl.String, "_start": TS})
    rows = (
        state.facts.lazy()
        .filter(pl.col("occurred_at") <= now)
        .select("patient_id", "event_id", "system", "code", "value", "unit", "occurred_at")
        .join(code_concepts, on=["system", "code"], how="inner")
        # Units normalised once per distinct spelling, like codes.
        .join(units, on="unit", how="left", nulls_equal=True)
        .join(fp.conversions.lazy(), on=["_ckey", "_unit"], how="left")
        .with_columns(
            (pl.col("value") * pl.col("_a") + pl.col("_b")).alias("_v"),
            (pl.col("value").is_not_null() & pl.col("_a").is_null()).alias("_unk"),
        )
        .join(wins, on="_ckey", how="inner")
        .filter(pl.col("_start").is_null() | (pl.col("occurred_at") >= pl.col("_start")))
        # Rows keep their order inside each group, so one sort by time makes first/last mean earliest/latest.
        .sort(["occurred_at", "event_id"])
    )
    v = pl.col("_v")
    t = pl.col("occurred_at")
    has_v = v.is_not_null()
    aggs = {
        "n": pl.len().cast(pl.UInt32),
        "last_t": t.max(),
        "last_code": pl.col("code").last(),
        "latest_v": v.drop_nulls().last(),
        "latest_t": t.filter(has_v).last(),
        "earliest_v": v.drop_nulls().first(),
        "earliest_t": t.filter(has_v).first(),
        "min_v": v.min(),
        "min_t": t.filter(v == v.min()).last(),
        "max_v": v.max(),
        "max_t": t.filter(v == v.max()).last(),
        "mean_v": v.mean(),
        "n_num": v.count().cast(pl.UInt32),
        "n_unk": pl.col("_unk").sum().cast(pl.UInt32),
    }
    # Only the statistics some transform of these studies reads.
    wanted = set().union(*stats_needed.values())
    agg_q = rows.group_by(["patient_id", "_fkey"]).agg(e.alias(k) for k, e in aggs.items() if k in wanted)
    agg = agg_q.collect(engine=ENGINE)
    if agg.height == 0:
        return empty
    if agg.height <= _ONE_PIVOT:
        # Few rows (the engine's micro-batches): one pivot of every statistic costs less than a pivot per
        # statistic, whose fixed costs dominate; the statistics no transform reads are dropped below.
        sep = "\x1f"
        names = sorted(wanted)
        wide = agg.pivot(on="_fkey", index="patient_id", values=names, separator=sep)
        if len(names) == 1:  # a single statistic's columns are named by the feature alone
            wide = wide.rename({c: f"{c}:{names[0]}" for c in wide.columns if c != "patient_id"})
        else:
            wide = wide.rename({c: "{1}:{0}".format(*c.split(sep, 1)) for c in wide.columns if sep in c})
    else:
        # One pivot per statistic over only the features that need it (a pivot of every statistic for every
        # feature costs several times more on large frames).
        by_stat: dict[str, list[str]] = {}
        for key, stats in stats_needed.items():
            for stat in stats:
                by_stat.setdefault(stat, []).append(key)
        wide = agg.select("patient_id").unique()
        for stat, keys in sorted(by_stat.items()):
            part = agg.filter(pl.col("_fkey").is_in(keys)).pivot(on="_fkey", index="patient_id", values=stat)
            part = part.rename({c: f"{c}:{stat}" for c in part.columns if c != "patient_id"})
            wide = wide.join(part, on="patient_id", how="left")
    schema, present = empty.schema, set(wide.columns)
    missing = [pl.lit(None, dtype=schema[c]).alias(c) for c in columns if c not in present]
    return wide.with_columns(missing).select(["patient_id", *columns])


def _attributes(persons: pl.DataFrame, now: datetime) -> pl.LazyFrame:
    b = pl.col("birth_date")
    today = now.astimezone(UTC).date()
    before_birthday = (b.dt.month() > today.month) | ((b.dt.month() == today.month) & (b.dt.day() > today.day))
    age = (pl.lit(today.year) - b.dt.year().cast(pl.Int32) - before_birthday.cast(pl.Int32)).cast(pl.Float64)
    decile = pl.col("imd_decile").cast(pl.Float64)
    return persons.lazy().select(
        "patient_id",
        pl.lit(now, dtype=TS).alias(NOW_COL),
        age.alias("_attr_age"),
        (pl.lit(today) - b).dt.total_days().cast(pl.Float64).alias("_attr_age_days"),
        pl.col("sex").alias("_attr_sex"),
        pl.col("ethnic_group").alias("_attr_ethnic_group"),
        decile.alias("_attr_imd_decile"),
        ((decile + 1) / 2).floor().alias("_attr_imd_quintile"),
        pl.col("setting").alias("_attr_setting"),
        pl.col("site").alias("_attr_site"),
    )


def compile_criterion(c: Criterion, study: Study, now: datetime, plan: Plan) -> tuple[pl.Expr, pl.Expr, int]:
    """``(result, evidence, level)`` of one criterion (groups recurse; three-valued); see :class:`Plan`."""
    if c.kind == "expr":
        assert c.ir is not None
        return lower(c.ir, now, plan)
    if c.kind == "setting":
        s = pl.col("_attr_setting")
        value = pl.when(s.is_null()).then(None).otherwise(s.is_in(list(study.settings)))
        evidence = (
            pl.when(s.is_null()).then(pl.lit("setting unknown")).otherwise(pl.concat_str([pl.lit("setting "), s]))
        )
        return value.cast(pl.Boolean), evidence, 0
    parts = [compile_criterion(child, study, now, plan) for child in c.children]
    values = [p[0] for p in parts]
    level = max(p[2] for p in parts)
    if c.kind == "any":
        value = values[0]
        for v in values[1:]:
            value = value | v
    elif c.kind == "all":
        value = values[0]
        for v in values[1:]:
            value = value & v
    else:
        true_n = pl.sum_horizontal([v.fill_null(False).cast(pl.Int32) for v in values])
        unk_n = pl.sum_horizontal([v.is_null().cast(pl.Int32) for v in values])
        value = (
            pl.when(true_n >= c.at_least)
            .then(pl.lit(True))
            .when(true_n + unk_n < c.at_least)
            .then(pl.lit(False))
            .otherwise(pl.lit(None, dtype=pl.Boolean))
        )
    shown = [
        pl.concat_str(
            [
                pl.lit(f"{child.name}: "),
                pl.when(v.is_null()).then(pl.lit("unknown")).when(v).then(pl.lit("yes")).otherwise(pl.lit("no")),
                pl.lit(" ("),
                e.fill_null(""),
                pl.lit(")"),
            ]
        )
        for child, (v, e, _lvl) in zip(c.children, parts, strict=True)
    ]
    head = {"any": "any of", "all": "all of", "at_least": f"at least {c.at_least} of"}[c.kind]
    evidence = pl.concat_str([pl.lit(f"{head}: "), pl.concat_str(shown, separator="; ")])
    return plan.bind(value.cast(pl.Boolean), evidence, level)


def study_frame(base: pl.LazyFrame, study: Study, now: datetime, *, nested: bool = False) -> pl.LazyFrame:
    """The study over the per-patient frame: ``patient_id, outcome`` and per criterion ``<name>`` (Boolean,
    null = unknown) and ``<name>:evidence``. Top-level criteria only, unless ``nested`` (then depth first).
    """
    plan = Plan()
    named: list[tuple[Criterion, pl.Expr, pl.Expr]] = []
    top = {id(c) for c in study.criteria}
    for c in study.all_criteria() if nested else list(study.criteria):
        value, evidence, level = compile_criterion(c, study, now, plan)
        v, e, _ = plan.bind(value.cast(pl.Boolean), evidence.fill_null(""), level)
        named.append((c, v, e))
    outcome = _outcome([(c, v) for c, v, _e in named if id(c) in top])
    cols = [pl.col("patient_id"), outcome.alias("outcome")]
    for c, v, e in named:
        cols += [v.alias(c.name), e.alias(f"{c.name}:evidence")]
    return plan.apply(base).select(cols)


Evidence = Literal["all", "matches", "none", "outcomes"]
EVIDENCE_MODES: tuple[str, ...] = ("all", "matches", "none", "outcomes")
#: outcomes whose rows get evidence in ``evidence="matches"`` mode (the ones the engine stores)
MATCH_OUTCOMES: tuple[str, ...] = ("eligible", "possible")
Rows = Literal["all", "matches"]
ROW_MODES: tuple[str, ...] = ("all", "matches")


@dataclass
class _Compiled:
    """One study's criteria compiled once, independent of ``now`` and of the patients (cached per study).

    Column names carry a prefix unique to the study object, so every study's stages can share one frame.
    ``values[level]``/``evidence[level]`` are :class:`Plan` stages; ``outcome`` is aliased ``<prefix>outcome``;
    ``criteria`` is ``(name, group, value column, evidence column)`` per top-level criterion.
    """

    values: list[list[pl.Expr]]
    evidence: list[list[pl.Expr]]
    outcome: pl.Expr
    outcome_col: str
    criteria: list[tuple[str, str, str, str]]
    #: columns of the values frame the evidence stages and the result rows read
    evidence_inputs: list[str]
    #: :func:`_result` expressions by (with evidence, with criteria list)
    results: dict[tuple[bool, bool], pl.Expr] = field(default_factory=dict)


_COMPILED: weakref.WeakKeyDictionary[Study, _Compiled] = weakref.WeakKeyDictionary()
_PREFIXES = itertools.count()


def _compiled(study: Study) -> _Compiled:
    hit = _COMPILED.get(study)
    if hit is not None:
        return hit
    prefix = f"_s{next(_PREFIXES)}_"
    plan = Plan(prefix=f"{prefix}x")
    named: list[tuple[Criterion, pl.Expr]] = []
    unused_now = datetime(2000, 1, 1, tzinfo=UTC)  # lowering reads the screening instant from NOW_COL
    for c in study.criteria:
        value, evidence, level = compile_criterion(c, study, unused_now, plan)
        v, _e, _ = plan.bind(value.cast(pl.Boolean), evidence.fill_null(""), level)
        named.append((c, v))
    outcome_col = f"{prefix}outcome"
    criteria = [(c.name, c.group, v.meta.output_name(), v.meta.output_name()[:-1] + "e") for c, v in named]
    made = {e.meta.output_name() for stage in plan.evidence for e in stage}
    reads = {r for stage in plan.evidence for e in stage for r in e.meta.root_names()} - made
    inputs = ["patient_id", outcome_col, *sorted(reads | {v for _n, _g, v, _e in criteria})]
    compiled = _Compiled(
        values=plan.values,
        evidence=plan.evidence,
        outcome=_outcome(named).alias(outcome_col),
        outcome_col=outcome_col,
        criteria=criteria,
        evidence_inputs=list(dict.fromkeys(inputs)),
    )
    _COMPILED[study] = compiled
    return compiled


def _outcome(named: Sequence[tuple[Criterion, pl.Expr]]) -> pl.Expr:
    """``eligible``/``possible``/``ineligible`` from the top-level criteria's values (three-valued)."""
    inc_false: list[pl.Expr] = []
    all_good: list[pl.Expr] = []
    for c, v in named:
        if c.group == "include":
            inc_false.append((v == False).fill_null(False))  # noqa: E712
            all_good.append(v.fill_null(False))
        else:
            inc_false.append(v.fill_null(False))
            all_good.append((~v).fill_null(False))
    bad = pl.any_horizontal(inc_false) if inc_false else pl.lit(False)
    good = pl.all_horizontal(all_good) if all_good else pl.lit(True)
    return pl.when(bad).then(pl.lit("ineligible")).when(good).then(pl.lit("eligible")).otherwise(pl.lit("possible"))


def _staged(frame: pl.LazyFrame, stage_lists: Sequence[list[list[pl.Expr]]]) -> pl.LazyFrame:
    """Apply several studies' plan stages level by level (one ``with_columns`` per level for all of them)."""
    depth = max((len(st) for st in stage_lists), default=0)
    for level in range(depth):
        # Shared leaf-evidence columns (same name, same expression) are computed once.
        exprs = {e.meta.output_name(): e for st in stage_lists if level < len(st) for e in st[level]}
        if exprs:
            frame = frame.with_columns(exprs.values())
    return frame


def _result(study: Study, comp: _Compiled, with_evidence: bool, criteria_list: bool = True) -> pl.Expr:
    """One study's result as a struct expression (``study_id, outcome, rule_hash, criteria``): the small-call
    counterpart of :func:`_assemble` (one query for every study; per-row structs of literals). Cached."""
    key = (with_evidence, criteria_list)
    hit = comp.results.get(key)
    if hit is None:
        hit = comp.results[key] = _result_expr(study, comp, with_evidence, criteria_list)
    return hit


def _result_expr(study: Study, comp: _Compiled, with_evidence: bool, criteria_list: bool) -> pl.Expr:
    if not criteria_list:
        criteria = pl.lit(None, dtype=CRITERIA_DTYPE)
    elif comp.criteria:
        none = pl.lit(None, dtype=pl.String)
        criteria = pl.concat_arr(
            [
                pl.struct(
                    pl.lit(name).alias("name"),
                    pl.lit(group).alias("group"),
                    pl.col(vcol).alias("result"),
                    (pl.col(ecol) if with_evidence else none).alias("evidence"),
                )
                for name, group, vcol, ecol in comp.criteria
            ]
        ).arr.to_list()
    else:
        criteria = pl.lit([], dtype=CRITERIA_DTYPE)
    return pl.struct(
        pl.lit(study.id).alias("study_id"),
        pl.col(comp.outcome_col).alias("outcome"),
        pl.lit(study.rule_hash or study.content_hash).alias("rule_hash"),
        criteria.cast(CRITERIA_DTYPE).alias("criteria"),
    )


def _long(frame: pl.LazyFrame, results: Sequence[pl.Expr]) -> pl.LazyFrame:
    """Study-major result rows from one struct column per study (patients in frame order within a study)."""
    return (
        frame.select(pl.col("patient_id"), *(r.alias(f"_r{i}") for i, r in enumerate(results)))
        .unpivot(index="patient_id", value_name="_r")
        .select(pl.col("patient_id"), pl.col("_r").struct.unnest())
        .select(["study_id", "patient_id", "outcome", "rule_hash", "criteria"])
    )


#: ``evidence="matches"``: up to this many matched patients, every matched study's evidence is built in one frame
_SMALL_UNION = 2000
#: up to this many patients, result rows are built by one query for all studies (:func:`_long`), above it study
#: by study (:func:`_assemble`, cheaper per row but with a fixed cost per study)
_SMALL_CALL = 256


def _assemble(
    frame: pl.DataFrame,
    study: Study,
    comp: _Compiled,
    with_evidence: bool,
    keep: pl.Expr | None = None,
    criteria_list: bool = True,
) -> pl.DataFrame:
    """One study's result rows (``study_id, patient_id, outcome, rule_hash, criteria``) from a frame holding its
    value (and, if ``with_evidence``, evidence) columns; only the rows where ``keep`` is true when given.

    The criteria lists are built flat and reshaped (criterion-major within a row): every criterion's result
    (and evidence) interleaved into one column of ``rows x criteria`` values, names and groups gathered from
    the study's short lists, then one struct column cut into rows of ``k``. Building the structs per row from
    broadcast literals costs several times more.
    """
    names = [n for n, _g, _v, _e in comp.criteria]
    vcols = [v for _n, _g, v, _e in comp.criteria]
    ecols = [e for _n, _g, _v, e in comp.criteria] if with_evidence else []
    if not criteria_list:
        vcols = []
    # Columns picked by name (a select on the wide frame would plan over every column of it).
    names_in = ["patient_id", comp.outcome_col, *dict.fromkeys([*vcols, *ecols])]
    part = pl.DataFrame([frame.get_column(c) for c in names_in])
    if keep is not None:
        part = part.filter(keep)
    n, k = part.height, len(names)
    if not criteria_list:
        criteria = pl.repeat(None, n, dtype=CRITERIA_DTYPE, eager=True).alias("criteria")
    elif k == 0 or n == 0:
        criteria = pl.Series("criteria", [[]] * n, dtype=CRITERIA_DTYPE)
    else:
        flat = part.select(
            pl.concat_arr(vcols).reshape((-1,)).alias("result"),
            (pl.concat_arr(ecols).reshape((-1,)) if ecols else pl.lit(None, dtype=pl.String)).alias("evidence"),
        )
        index = pl.Series(np.tile(np.arange(k, dtype=np.uint32), n))
        flat = flat.select(
            pl.Series("name", names, dtype=pl.String).gather(index),
            pl.Series("group", [g for _n, g, _v, _e in comp.criteria], dtype=pl.String).gather(index),
            pl.col("result").cast(pl.Boolean),
            pl.col("evidence").cast(pl.String),
        )
        criteria = flat.to_struct("criteria").reshape((n, k)).arr.to_list().cast(CRITERIA_DTYPE)
    return pl.DataFrame(
        {
            "study_id": pl.repeat(study.id, n, dtype=pl.String, eager=True),
            "patient_id": part.get_column("patient_id"),
            "outcome": part.get_column(comp.outcome_col),
            "rule_hash": pl.repeat(study.rule_hash or study.content_hash, n, dtype=pl.String, eager=True),
            "criteria": criteria,
        }
    )


def _plain(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every column a plain Series: the in-memory engine mis-sizes expressions over broadcast
    ("scalar") columns, e.g. a literal carried through a join (length 1 against the frame's height)."""
    return pl.DataFrame(frame.get_columns())


def screen(
    state: PatientState, studies: Sequence[Study], now: datetime, *, evidence: Evidence = "all", rows: Rows = "all"
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

    Compiled expressions are cached per study object, and code tables per study set, so repeated calls (the
    engine's micro-batches) pay only for the patients.
    """
    return _screen(state, studies, now, evidence, rows, want_counts=False)[0]


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


def _counts_frame(
    studies: Sequence[Study], eligible: Sequence[int], possible: Sequence[int], patients: int
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "study_id": [s.id for s in studies],
            "eligible": list(eligible),
            "possible": list(possible),
            "ineligible": [patients - e - p for e, p in zip(eligible, possible, strict=True)],
        },
        schema={"study_id": pl.String, "eligible": pl.UInt32, "possible": pl.UInt32, "ineligible": pl.UInt32},
    )


def _outcome_sums(full: pl.DataFrame, comps: Sequence[_Compiled]) -> tuple[list[int], list[int]]:
    """Per study: the number of ``eligible`` and of ``possible`` rows of the values frame (one pass)."""
    k = len(comps)
    sums = full.select(
        *((pl.col(c.outcome_col) == "eligible").sum().alias(f"e{i}") for i, c in enumerate(comps)),
        *((pl.col(c.outcome_col) == "possible").sum().alias(f"p{i}") for i, c in enumerate(comps)),
    ).row(0)
    return [int(x) for x in sums[:k]], [int(x) for x in sums[k:]]


def _screen(
    state: PatientState, studies: Sequence[Study], now: datetime, evidence: str, rows: str, want_counts: bool
) -> tuple[pl.DataFrame, pl.DataFrame | None]:
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
    if not studies or state.persons.height == 0:
        zeros = [0] * len(studies)
        return pl.DataFrame(schema=schema), (_counts_frame(studies, zeros, zeros, 0) if want_counts else None)
    n_persons = state.persons.height
    comps = [_compiled(s) for s in studies]
    wide = feature_frame(state, studies, now)
    base = _attributes(state.persons, now).join(wide.lazy(), on="patient_id", how="left", maintain_order="left")
    base = _plain(base.collect(engine=ENGINE)).lazy()
    pairs = list(zip(studies, comps, strict=True))
    small = n_persons <= _SMALL_CALL
    if evidence == "all":
        stages = [[v + e for v, e in zip(c.values, c.evidence, strict=True)] for c in comps]
        full = _plain(_staged(base, stages).with_columns([c.outcome for c in comps]).collect(engine=ENGINE))
        counts = _counts_frame(studies, *_outcome_sums(full, comps), n_persons) if want_counts else None
        if small:
            return _long(full.lazy(), [_result(s, c, True) for s, c in pairs]).collect(engine=ENGINE), counts
        return pl.concat([_assemble(full, s, c, True) for s, c in pairs], how="vertical"), counts
    values = _staged(base, [c.values for c in comps]).with_columns([c.outcome for c in comps])
    match = pl.col("outcome").is_in(MATCH_OUTCOMES)
    if evidence == "none":
        keep = ["patient_id", *(c.outcome_col for c in comps), *(v for c in comps for _n, _g, v, _e in c.criteria)]
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
    full = _plain(values.collect(engine=ENGINE))
    matched = [pl.col(c.outcome_col).is_in(MATCH_OUTCOMES) for c in comps]
    eligible, possible = _outcome_sums(full, comps)
    match_counts = [e + p for e, p in zip(eligible, possible, strict=True)]
    counts_frame = _counts_frame(studies, eligible, possible, n_persons) if want_counts else None
    hits = [i for i, n in enumerate(match_counts) if n]
    with_ev: dict[int, pl.DataFrame] = {}
    if hits:
        union = full.filter(pl.any_horizontal(matched[i] for i in hits))
        if small or union.height * len(hits) <= 2 * sum(match_counts) or union.height <= _SMALL_UNION:
            # Few rows: one frame for every study with a match (a frame per study costs more than the extra rows).
            need = dict.fromkeys(col for i in hits for col in comps[i].evidence_inputs)
            ev = _staged(union.select(list(need)).lazy(), [comps[i].evidence for i in hits]).collect(engine=ENGINE)
            with_ev = dict.fromkeys(hits, ev)
        else:
            parts = [
                _staged(full.select(comps[i].evidence_inputs).filter(matched[i]).lazy(), [comps[i].evidence])
                for i in hits
            ]
            with_ev = dict(zip(hits, pl.collect_all(parts, engine=ENGINE), strict=True))
    shared = bool(hits) and with_ev[hits[0]] is with_ev[hits[-1]]  # one evidence frame for every study
    out: list[pl.DataFrame] = []
    if only_matches:
        pass  # the rows without a match are never built
    elif small:
        out.append(
            _long(full.lazy(), [_result(s, c, False, lists) for s, c in pairs]).filter(~match).collect(engine=ENGINE)
        )
    elif not lists:
        out.append(_outcome_rows(full, pairs).filter(~match))
    else:
        out += [
            _assemble(full, s, c, False, keep=~matched[i] if i in with_ev else None) for i, (s, c) in enumerate(pairs)
        ]
    if shared:
        ev = with_ev[hits[0]]
        out.append(_long(ev.lazy(), [_result(*pairs[i], True) for i in hits]).filter(match).collect(engine=ENGINE))
    else:
        out += [_assemble(with_ev[i], *pairs[i], True, keep=matched[i]) for i in hits]
    if not out:
        return pl.DataFrame(schema=schema), counts_frame
    return pl.concat(out, how="vertical"), counts_frame


def _outcome_rows(full: pl.DataFrame, pairs: Sequence[tuple[Study, _Compiled]]) -> pl.DataFrame:
    """Every (study, patient) row with ``criteria`` null, study by study, built in a few whole-frame steps."""
    n, k = full.height, len(pairs)
    study_index = pl.Series(np.repeat(np.arange(k, dtype=np.uint32), n))
    return pl.DataFrame(
        {
            "study_id": pl.Series([s.id for s, _c in pairs], dtype=pl.String).gather(study_index),
            "patient_id": pl.concat([full.get_column("patient_id")] * k, rechunk=False),
            "outcome": pl.concat([full.get_column(c.outcome_col) for _s, c in pairs], rechunk=False),
            "rule_hash": pl.Series([s.rule_hash or s.content_hash for s, _c in pairs], dtype=pl.String).gather(
                study_index
            ),
            "criteria": pl.repeat(None, n * k, dtype=CRITERIA_DTYPE, eager=True),
        }
    )


def screen_detail(state: PatientState, study: Study, now: datetime) -> pl.DataFrame:
    """Every criterion of one study, nested members included, one row per patient.

    Columns: ``patient_id``, ``outcome``, then per criterion (depth-first, plain names) ``<name>`` (Boolean,
    null = unknown) and ``<name>:evidence`` (String). Used by ``rules test`` and ``rules explain``.
    """
    if now.tzinfo is None:
        raise ValueError("screen_detail() needs a timezone-aware 'now'")
    now = now.astimezone(UTC)
    wide = feature_frame(state, [study], now)
    base = _attributes(state.persons, now).join(wide.lazy(), on="patient_id", how="left", maintain_order="left")
    return study_frame(base, study, now, nested=True).collect()


def criteria_json(criteria: Sequence[dict[str, Any]] | pl.Series | None) -> str:
    """Serialise one row's ``criteria`` list to JSON (``result`` null stays null) for storage."""
    if criteria is None:
        return "[]"
    items = criteria.to_list() if isinstance(criteria, pl.Series) else list(criteria)
    return json.dumps(
        [{"name": c["name"], "group": c["group"], "result": c["result"], "evidence": c["evidence"]} for c in items],
        separators=(",", ":"),
    )
