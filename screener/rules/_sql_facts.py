"""The fact side of the SQL lowering (:mod:`screener.rules.sql`): membership, unit conversion, per-feature stats.

Everything is DuckDB-flavoured SQL text that :mod:`sqlglot` parses and transpiles. Facts are read once: one
``GROUP BY patient_id`` whose aggregates carry ``FILTER (WHERE ...)`` clauses select each feature's facts
(concept membership, look-back window inclusive at both ends, planned/ordered facts skipped), as
:mod:`screener.rules.features` does with joins.
"""

from __future__ import annotations

from datetime import UTC, datetime

from screener.errors import RuleError
from screener.rules.concepts import PREFIX_SYSTEMS, ConceptSet, normalise_code
from screener.rules.ir import NOT_DONE, Feat
from screener.rules.units import _DROP, conversions_to

__all__ = ["SUPPORTED_TRANSFORMS", "FeatureSQL", "q", "ts"]

#: the transforms the SQL lowering supports (others raise a RuleError naming the construct)
SUPPORTED_TRANSFORMS = frozenset(
    [
        *("ever", "within", "count", "latest", "earliest", "min", "max", "mean", "days_since", "days_since_first"),
        *("change", "pct_change", "latest_code", "on_now"),
    ]
)
_DAY_US = 86_400_000_000


def q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ts(t: datetime) -> str:
    """A UTC instant as a SQL TIMESTAMPTZ literal (microsecond precision)."""
    return f"CAST({q(t.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f+00:00'))} AS TIMESTAMPTZ)"


def _norm_code(col: str) -> str:
    return f"upper(replace(trim({col}), '.', ''))"


def _norm_unit(col: str) -> str:
    text = f"replace(replace(lower(trim({col})), 'µ', 'u'), 'μ', 'u')"
    for ch in _DROP:
        text = f"replace({text}, {q(ch)}, '')"
    return f"coalesce(CASE WHEN {text} = '1' THEN '' ELSE {text} END, '')"


def _hit(pairs: tuple[tuple[str, str], ...]) -> str:
    by_system: dict[str, list[str]] = {}
    for system, code in pairs:
        by_system.setdefault(system, []).append(normalise_code(code))
    terms = []
    for system, codes in sorted(by_system.items()):
        if system in PREFIX_SYSTEMS:
            match = " OR ".join(f"starts_with(_nc, {q(c)})" for c in sorted(set(codes)))
        else:
            match = f"_nc IN ({', '.join(q(c) for c in sorted(set(codes)))})"
        terms.append(f"(system = {q(system)} AND ({match}))")
    return " OR ".join(terms) if terms else "FALSE"


def membership(c: ConceptSet) -> str:
    """True when the fact row (with ``_nc``, its normalised code) is in ``c``, exclusions applied; never null."""
    inside = _hit(c.codes)
    if c.exclude:
        inside = f"({inside}) AND NOT ({_hit(c.exclude)})"
    return f"coalesce({inside}, FALSE)"


def factors(c: ConceptSet) -> tuple[str, str]:
    """``(a, b)`` over a unit row (``_nu``, its normalised spelling): the value in ``c``'s unit is
    ``value * a + b``; both null for a unit that does not convert."""
    table = sorted(conversions_to(c.unit, c.analyte).items())
    a = " ".join(f"WHEN {q(u)} THEN {x!r}" for u, (x, _) in table)
    b = " ".join(f"WHEN {q(u)} THEN {y!r}" for u, (_, y) in table)
    return f"CASE _nu {a} END", f"CASE _nu {b} END"


class FeatureSQL:
    """Collects the features of a set of studies (shared by key) and writes the facts aggregation."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.concepts: dict[str, tuple[int, ConceptSet]] = {}
        self.feats: dict[str, tuple[int, Feat]] = {}
        self.stats: dict[str, str] = {}  # column -> aggregate

    def _concept(self, c: ConceptSet) -> int:
        if c.key not in self.concepts:
            self.concepts[c.key] = (len(self.concepts), c)
        return self.concepts[c.key][0]

    def leaf(self, feat: Feat, where: str) -> str:
        """The SQL value of ``feat`` over the per-patient frame (its statistics become columns of ``agg``)."""
        t = feat.transform
        if t not in SUPPORTED_TRANSFORMS:
            raise RuleError(f"{where}: the SQL lowering does not support the transform '{t}' yet")
        if feat.filter is not None:
            raise RuleError(f"{where}: the SQL lowering does not support fact filters ('{feat.concept.name}[...]') yet")
        if feat.key not in self.feats:
            self.feats[feat.key] = (len(self.feats), feat)
        i = self.feats[feat.key][0]
        ci = self._concept(feat.concept)
        w = feat.window
        sel = f"_ck = {ci} AND _done"
        if w is not None:
            sel += f" AND occurred_at >= {ts(w.start(self.now))}"
        val = f"{sel} AND _v IS NOT NULL"
        now_us = f"epoch_us({ts(self.now)})"
        aggs = {
            "n": f"count(*) FILTER (WHERE {sel})",
            "last": f"max(occurred_at) FILTER (WHERE {sel})",
            "first": f"min(occurred_at) FILTER (WHERE {sel})",
            "latest": f"arg_max(_v, _ord) FILTER (WHERE {val})",
            "earliest": f"arg_min(_v, _ord) FILTER (WHERE {val})",
            "min": f"min(_v) FILTER (WHERE {val})",
            "max": f"max(_v) FILTER (WHERE {val})",
            "mean": f"avg(_v) FILTER (WHERE {val})",
            "n_num": f"count(_v) FILTER (WHERE {val})",
            "latest_code": f"arg_max(_lc, _ord) FILTER (WHERE {sel})",
            # on_now: a period still open now (ended later, or no end and active or no status)
            "on": f"count(*) FILTER (WHERE {sel} AND (ended_at >= {ts(self.now)} OR (ended_at IS NULL AND "
            "coalesce(status, 'active') = 'active')))",
        }

        def stat(name: str) -> str:
            self.stats[f"_f{i}_{name}"] = aggs[name]
            return f"_f{i}_{name}"

        if t in ("change", "pct_change"):
            first, last, n = stat("earliest"), stat("latest"), stat("n_num")
            if t == "change":
                return f"CASE WHEN coalesce({n}, 0) >= 2 THEN {last} - {first} END"
            return f"CASE WHEN coalesce({n}, 0) >= 2 AND {first} <> 0 THEN 100 * ({last} - {first}) / {first} END"
        if t == "on_now":
            return f"(coalesce({stat('on')}, 0) > 0)"
        names = {"ever": "n", "within": "n", "count": "n", "days_since": "last", "days_since_first": "first"}
        col = stat(names.get(t, t))
        if t in ("ever", "within"):
            return f"(coalesce({col}, 0) > 0)"
        if t == "count":
            return f"CAST(coalesce({col}, 0) AS DOUBLE)"
        if t in ("days_since", "days_since_first"):
            return f"floor(CAST({now_us} - epoch_us({col}) AS DOUBLE) / {_DAY_US})"
        return col

    def rows_ctes(self, facts: str) -> list[str]:
        """CTEs ending in ``_rows``: one row per (fact, concept it belongs to) that some feature can read, with
        ``_ck`` (the concept), ``_v`` (the value in the concept's unit), ``_done`` (not planned/ordered) and
        ``_ord`` (the position in (occurred_at, event_id) order: latest/earliest break ties as Polars does).

        Membership and units are decided once per distinct (system, code) and unit spelling, not per fact."""
        # ``_nc`` is an aggregate so that DuckDB cannot push a membership filter below the grouping (it would
        # then test every fact row instead of every distinct code).
        distinct = (
            f"_dcodes AS MATERIALIZED (SELECT system, code, min({_norm_code('code')}) AS _nc FROM {facts} "
            "WHERE code IS NOT NULL GROUP BY system, code)"
        )
        codes = " UNION ALL ".join(
            f"SELECT system, code, {i} AS _ck FROM _dcodes WHERE {membership(c)}" for i, c in self.concepts.values()
        )
        dunits = f"_dunits AS MATERIALIZED (SELECT unit, min({_norm_unit('unit')}) AS _nu FROM {facts} GROUP BY unit)"
        units = " UNION ALL ".join(
            f"SELECT * FROM (SELECT unit, {i} AS _ck, {fa} AS _a, {fb} AS _b FROM _dunits) AS _u WHERE _a IS NOT NULL"
            for i, c in self.concepts.values()
            for fa, fb in [factors(c)]
        )
        not_done = ", ".join(q(s) for s in sorted(NOT_DONE))
        rows = (
            "_rows AS MATERIALIZED (SELECT f.patient_id, c._ck, f.occurred_at, "
            f"(f.status IS NULL OR f.status NOT IN ({not_done})) AS _done, f.value * u._a + u._b AS _v, "
            "coalesce(f.value_code, f.code) AS _lc, f.ended_at, f.status, "
            "row_number() OVER (ORDER BY f.occurred_at, f.event_id) AS _ord "
            f"FROM {facts} AS f JOIN _codes AS c ON c.system = f.system AND c.code = f.code "
            "LEFT JOIN _units AS u ON u._ck = c._ck AND f.unit IS NOT DISTINCT FROM u.unit "
            f"WHERE f.occurred_at <= {ts(self.now)})"
        )
        return [distinct, f"_codes AS MATERIALIZED ({codes})", dunits, f"_units AS MATERIALIZED ({units})", rows]

    def agg_sql(self) -> str:
        """``patient_id`` and one column per statistic, over ``_rows``."""
        stats = ", ".join(f"{a} AS {c}" for c, a in self.stats.items())
        return f"SELECT patient_id, {stats} FROM _rows GROUP BY patient_id"

    def registrations_sql(self, facts: str) -> str:
        """``(patient_id, _reg_days)``: whole days since the earliest registration covering now."""
        now = ts(self.now)
        not_done = ", ".join(q(s) for s in sorted(NOT_DONE))
        return (
            f"SELECT patient_id, floor(CAST(epoch_us({now}) - epoch_us(min(occurred_at)) AS DOUBLE) / {_DAY_US}) "
            f"AS _reg_days FROM {facts} WHERE kind = 'registration' AND occurred_at <= {now} "
            f"AND (ended_at IS NULL OR ended_at >= {now}) AND (status IS NULL OR status NOT IN ({not_done})) "
            "GROUP BY patient_id"
        )
