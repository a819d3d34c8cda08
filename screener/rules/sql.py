"""Lower compiled studies (their typed IR, :mod:`screener.rules.ir`) to one SQL query, through SQLGlot.

:func:`to_sql` returns a query over two relations, ``facts`` and ``persons`` (the state frames, CONTRACT.md
"Fact frame columns"; as DuckDB relations on Polars frames, Parquet files or Spark tables), giving one row per
(study, patient): ``study_id, patient_id, outcome, criteria``, where ``criteria`` is the list of every
criterion's value (true/false/null) in :meth:`Study.all_criteria` order (:func:`criterion_names`).

Three-valued semantics as in :mod:`screener.rules.lower`: SQL NULL is unknown and SQL's AND/OR/NOT are Kleene,
like Polars' boolean operators; comparisons with NULL are NULL; arithmetic that divides by zero or overflows is
NULL (never infinity); ``cond ? a : b`` with an unknown test is unknown. The query is written in DuckDB's
dialect, parsed by SQLGlot and generated for the target dialect (``duckdb``, ``spark``).

A construct the lowering does not support raises :class:`~screener.errors.RuleError` naming the study file,
criterion and construct: never a wrong answer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlglot
from sqlglot import exp

from screener.errors import RuleError
from screener.rules._sql_facts import literal, q, ts
from screener.rules._sql_features import FeatureSQL
from screener.rules.ir import BOOL, IR, Arr, Attr, Bin, Cond, Feat, Lit, Not
from screener.rules.model import Criterion, Study

__all__ = ["SQL_ATTRIBUTES", "SqlSteps", "clear_cache", "criterion_names", "to_sql", "to_sql_steps"]

_CMP = ("==", "!=", "<", "<=", ">", ">=")

#: the person attributes the SQL lowering supports
SQL_ATTRIBUTES = frozenset(
    [
        *("age", "age_days", "age_months", "sex", "ethnic_group", "imd_decile", "imd_quintile", "setting"),
        *("site", "registered_days"),
    ]
)


def criterion_names(study: Study) -> list[str]:
    """The names of the entries of a row's ``criteria`` list for ``study``, in order."""
    return [c.name for c in study.all_criteria()]


def _attributes(now: datetime) -> list[str]:
    """``_a_<name>`` columns of the per-patient frame, from ``persons`` (``p``) and registrations (``r``)."""
    today = now.astimezone(UTC).date()
    b = "p.birth_date"
    before = f"(month({b}) > {today.month} OR (month({b}) = {today.month} AND day({b}) > {today.day}))"
    age = f"CAST({today.year} - year({b}) - CASE WHEN {before} THEN 1 ELSE 0 END AS DOUBLE)"
    months = (
        f"CAST({today.year * 12 + today.month - 1} - (year({b}) * 12 + month({b}) - 1) "
        f"- CASE WHEN day({b}) > {today.day} THEN 1 ELSE 0 END AS DOUBLE)"
    )
    decile = "CAST(p.imd_decile AS DOUBLE)"
    return [
        f"{age} AS _a_age",
        f"CAST(date_diff('day', {b}, DATE {q(today.isoformat())}) AS DOUBLE) AS _a_age_days",
        f"{months} AS _a_age_months",
        "p.sex AS _a_sex",
        "p.ethnic_group AS _a_ethnic_group",
        f"{decile} AS _a_imd_decile",
        f"floor(({decile} + 1) / 2) AS _a_imd_quintile",
        "p.setting AS _a_setting",
        "p.site AS _a_site",
        "r._reg_days AS _a_registered_days",
        f"{b} AS _birth",
    ]


class _Stages:
    """Per-study column assignments in stages, so an operand used twice (arithmetic's finiteness check, a
    conditional's test, a group's members) is computed once: stage ``k`` selects every column of stage
    ``k - 1`` plus its own."""

    def __init__(self) -> None:
        self.stages: list[list[str]] = []
        self.count = 0

    def bind(self, text: str, level: int) -> tuple[str, int]:
        """Put ``text`` in stage ``level`` (it reads columns of earlier stages only); returns its column and
        the first stage that can read it."""
        while len(self.stages) <= level:
            self.stages.append([])
        name = f"_x{self.count}"
        self.count += 1
        self.stages[level].append(f"{text} AS {name}")
        return name, level + 1


class _Lowering:
    def __init__(self, study: Study, features: FeatureSQL) -> None:
        self.study = study
        self.features = features
        self.stages = _Stages()

    def where(self, c: Criterion) -> str:
        line = f":{c.line}" if c.line else ""
        return f"{self.study.path}{line}: criterion '{c.name}'"

    def expr(self, ir: IR, where: str) -> tuple[str, int]:
        """``(sql, level)``: the SQL of ``ir`` and the first stage that can evaluate it."""
        if isinstance(ir, Lit):
            return literal(ir.value, ir.type, where), 0
        if isinstance(ir, Attr):
            if ir.name not in SQL_ATTRIBUTES:
                raise RuleError(f"{where}: the SQL lowering does not support the attribute '{ir.name}' yet")
            return f"_a_{ir.name}", 0
        if isinstance(ir, Feat):
            return self.features.leaf(ir, where), 0
        if isinstance(ir, Not):
            v, lvl = self.expr(ir.operand, where)
            return f"(NOT {v})", lvl
        if isinstance(ir, Cond):
            (t, l1), (a, l2), (b, l3) = (self.expr(x, where) for x in (ir.test, ir.then, ir.other))
            return self.stages.bind(f"CASE WHEN {t} IS NULL THEN NULL WHEN {t} THEN {a} ELSE {b} END", max(l1, l2, l3))
        if isinstance(ir, Bin):
            if ir.op == "in":
                if not isinstance(ir.right, Arr):
                    raise RuleError(f"{where}: the SQL lowering supports 'in' on a literal list only")
                v, lvl = self.expr(ir.left, where)
                items = [literal(x, ir.right.elem, where) for x in ir.right.values]
                return (
                    f"({v} IN ({', '.join(items)}))" if items else f"CASE WHEN {v} IS NULL THEN NULL ELSE FALSE END"
                ), lvl
            (a, l1), (b, l2) = self.expr(ir.left, where), self.expr(ir.right, where)
            level = max(l1, l2)
            if ir.op == "&&":
                return f"({a} AND {b})", level
            if ir.op == "||":
                return f"({a} OR {b})", level
            if ir.op in _CMP:
                op = {"==": "=", "!=": "<>"}.get(ir.op, ir.op)
                return f"({a} {op} {b})", level
            return self._arith(ir.op, a, b, level, where)
        raise RuleError(f"{where}: the SQL lowering does not support {type(ir).__name__} nodes yet")

    def _arith(self, op: str, a: str, b: str, level: int, where: str) -> tuple[str, int]:
        a, b = f"CAST({a} AS DOUBLE)", f"CAST({b} AS DOUBLE)"
        raw = {
            "+": f"{a} + {b}",
            "-": f"{a} - {b}",
            "*": f"{a} * {b}",
            "/": f"CASE WHEN {b} = 0 THEN NULL ELSE {a} / {b} END",
            "//": f"CASE WHEN {b} = 0 THEN NULL ELSE floor({a} / {b}) END",
            "%": f"CASE WHEN {b} = 0 THEN NULL ELSE {a} - floor({a} / {b}) * {b} END",
            "^": f"power({a}, {b})",
        }.get(op)
        if raw is None:
            raise RuleError(f"{where}: the SQL lowering does not support the operator '{op}'")
        col, lvl = self.stages.bind(raw, level)
        # Non-finite (overflow, a negative base to a fractional power) is unknown, like Polars' path (NaN sorts
        # above every number in DuckDB and Spark, so the test is false for NaN and infinities alike).
        return self.stages.bind(f"CASE WHEN abs({col}) <= 1.7976931348623157e308 THEN {col} END", lvl)

    def criterion(self, c: Criterion, cols: dict[str, tuple[str, int]]) -> tuple[str, int]:
        where = self.where(c)
        if c.kind == "expr":
            assert c.ir is not None
            if c.ir.type != BOOL:
                raise RuleError(f"{where}: a criterion must be true/false")
            text, lvl = self.expr(c.ir, where)
        elif c.kind == "setting":
            items = ", ".join(q(s) for s in self.study.settings)
            text, lvl = f"CASE WHEN _a_setting IS NULL THEN NULL ELSE _a_setting IN ({items}) END", 0
        else:
            kids = [self.criterion(k, cols) for k in c.children]
            lvl = max((k[1] for k in kids), default=0)
            names = [k[0] for k in kids]
            if c.kind == "any":
                text = "(" + " OR ".join(["FALSE", *names]) + ")"
            elif c.kind == "all":
                text = "(" + " AND ".join(["TRUE", *names]) + ")"
            elif c.kind == "at_least":
                t = " + ".join(["0", *(f"CASE WHEN {n} THEN 1 ELSE 0 END" for n in names)])
                u = " + ".join(["0", *(f"CASE WHEN {n} IS NULL THEN 1 ELSE 0 END" for n in names)])
                k = c.at_least
                text = f"CASE WHEN {t} >= {k} THEN TRUE WHEN {t} + {u} < {k} THEN FALSE ELSE NULL END"
            else:
                raise RuleError(f"{where}: the SQL lowering does not support '{c.kind}' groups")
        col, lvl = self.stages.bind(text, lvl)
        cols[c.name] = (col, lvl)
        return col, lvl

    def study_sql(self, base: str, prefix: str) -> tuple[list[str], str]:
        """The study's CTEs (over ``base``) and its final SELECT."""
        cols: dict[str, tuple[str, int]] = {}
        for c in self.study.criteria:
            self.criterion(c, cols)
        inc = [cols[c.name][0] for c in self.study.include]
        exc = [cols[c.name][0] for c in self.study.exclude]
        bad = " OR ".join(["FALSE", *(f"{n} IS FALSE" for n in inc), *(f"{n} IS TRUE" for n in exc)])
        good = " AND ".join(["TRUE", *(f"{n} IS TRUE" for n in inc), *(f"{n} IS FALSE" for n in exc)])
        outcome = f"CASE WHEN {bad} THEN 'ineligible' WHEN {good} THEN 'eligible' ELSE 'possible' END"
        ctes, source = [], base
        for k, stage in enumerate(self.stages.stages):
            name = f"{prefix}_{k}"
            body = ", ".join(stage) if stage else "1 AS _pad"
            ctes.append(f"{name} AS (SELECT *, {body} FROM {source})")
            source = name
        crit = ", ".join(cols[n][0] for n in criterion_names(self.study))
        final = (
            f"SELECT {q(self.study.id)} AS study_id, patient_id, {outcome} AS outcome, "
            f"[{crit}] AS criteria FROM {source}"
        )
        return ctes, final


@dataclass(frozen=True)
class SqlSteps:
    """The query of :func:`to_sql` as separate statements, for engines that re-plan a CTE at every reference
    (Spark): ``views`` in order, each ``(name, select, shared)`` (``shared``: read by several later steps, worth
    materialising, e.g. ``CACHE TABLE name AS select``; the others can be temporary views), then ``final``."""

    views: tuple[tuple[str, str, bool], ...]
    final: str


def _text(studies: Sequence[Study], now: datetime, facts: str, persons: str) -> str:
    """The query in DuckDB's dialect, as text (cheap: SQLGlot's parse and generation cost far more)."""
    if now.tzinfo is None:
        raise ValueError("to_sql() needs a timezone-aware 'now'")
    if not studies:
        raise ValueError("to_sql() needs at least one study")
    now = now.astimezone(UTC)
    features = FeatureSQL(now)
    parts = [(_Lowering(s, features), f"_s{i}") for i, s in enumerate(studies)]
    bodies = [lo.study_sql("_base", prefix) for lo, prefix in parts]
    ctes: list[str] = []
    if any("registered_days" in s.attributes() for s in studies):
        ctes.append(f"_reg AS ({features.registrations_sql(facts)})")
        attrs = _attributes(now)
        reg = " LEFT JOIN _reg AS r ON r.patient_id = p.patient_id"
    else:
        attrs = [
            a if not a.startswith("r.") else "CAST(NULL AS DOUBLE) AS _a_registered_days" for a in _attributes(now)
        ]
        reg = ""
    ctes.append(f"_attrs AS MATERIALIZED (SELECT p.patient_id, {', '.join(attrs)} FROM {persons} AS p{reg})")
    ctes += features.ctes(facts)
    joins, cols = "", [f"{ts(now)} AS _now"]
    if features.stats:
        joins += " LEFT JOIN _agg AS g ON g.patient_id = a.patient_id"
        cols += [f"g.{c}" for c in features.stats]
    if features.wcols:
        joins += " LEFT JOIN _wagg AS w ON w.patient_id = a.patient_id"
        cols += [f"w.{c}" for c in features.wcols]
    ctes.append(f"_base AS MATERIALIZED (SELECT a.*, {', '.join(cols)} FROM _attrs AS a{joins})")
    for study_ctes, _ in bodies:
        ctes += study_ctes
    return "WITH " + ", ".join(ctes) + " " + " UNION ALL ".join(final for _, final in bodies)


#: How many lowered queries are kept (:func:`clear_cache`). SQLGlot's parse and generation take most of a
#: lowering (about 80 ms of 90 for one sample study), and the same studies at the same instant over the same
#: relations give the same text (a test lowers the query it then runs; a bench runs it again). Few are kept: the
#: parsed tree of many studies is large.
CACHE_SIZE = 16


@functools.lru_cache(maxsize=CACHE_SIZE)
def _parsed(text: str) -> exp.Expr:
    """The parsed query; shared, so never changed in place (callers copy or transform it)."""
    return sqlglot.parse_one(text, read="duckdb")


@functools.lru_cache(maxsize=CACHE_SIZE)
def _generated(text: str, dialect: str, pretty: bool) -> str:
    tree = _parsed(text)
    if dialect != "duckdb":
        tree = tree.transform(_portable)  # a copy
    return tree.sql(dialect=dialect, pretty=pretty)


def clear_cache() -> None:
    """Forget the lowered queries (the cache holds at most :data:`CACHE_SIZE` of each kind)."""
    for cached in (_parsed, _generated, _steps):
        cached.cache_clear()


def to_sql(
    studies: Sequence[Study],
    now: datetime,
    dialect: str = "duckdb",
    *,
    facts: str = "facts",
    persons: str = "persons",
    pretty: bool = False,
) -> str:
    """One query giving ``study_id, patient_id, outcome, criteria`` for every (study, patient) at ``now``.

    ``facts``/``persons`` name the relations (a table, a view, or e.g. ``read_parquet('f.parquet')`` for
    DuckDB). The session time zone must be UTC (calendar windows and dates are taken in it). Raises
    :class:`RuleError` for a construct the lowering does not support.
    """
    return _generated(_text(studies, now, facts, persons), dialect, pretty)


def to_sql_steps(
    studies: Sequence[Study], now: datetime, dialect: str = "spark", *, facts: str = "facts", persons: str = "persons"
) -> SqlSteps:
    """:func:`to_sql` as :class:`SqlSteps`: each CTE up to the per-patient base (``_base``) a statement of its own
    (shared ones marked), then the final query, which keeps the per-study CTEs (each read once) over them. CTE
    names start with ``_``, so they never shadow ``facts`` or ``persons``."""
    return _steps(_text(studies, now, facts, persons), dialect)


@functools.lru_cache(maxsize=CACHE_SIZE)
def _steps(text: str, dialect: str) -> SqlSteps:
    tree = _parsed(text).copy()  # cut below
    key = "with_" if "with_" in tree.args else "with"
    with_ = tree.args.get(key)
    assert isinstance(with_, exp.With)
    ctes = list(with_.expressions)
    cut = next(i for i, cte in enumerate(ctes) if cte.alias == "_base") + 1
    views = []
    for cte in ctes[:cut]:
        body = cte.this if dialect == "duckdb" else cte.this.transform(_portable)
        views.append((cte.alias, body.sql(dialect=dialect), bool(cte.args.get("materialized"))))
    with_.set("expressions", ctes[cut:])
    final = tree if dialect == "duckdb" else tree.transform(_portable)
    return SqlSteps(tuple(views), final.sql(dialect=dialect))


def _portable(node: exp.Expression) -> exp.Expression:
    """DuckDB-only spellings SQLGlot keeps as they are, rewritten for other engines."""
    if isinstance(node, exp.CTE) and node.args.get("materialized"):
        node.set("materialized", None)  # a hint only; Spark has no such syntax
    if isinstance(node, exp.Anonymous) and str(node.this).lower() == "epoch_us":
        return exp.UnixMicros(this=node.expressions[0])
    return node
