"""The fact rows of the SQL lowering (:mod:`screener.rules.sql`): membership, unit conversion, per-fact filters.

Everything is DuckDB-flavoured SQL text that :mod:`sqlglot` parses and transpiles. :func:`rows_ctes` writes the
CTEs ending in ``_rows``: one row per (fact, concept set it belongs to) that some feature can read, as
:mod:`screener.rules.features` builds with joins. Membership and units are decided once per distinct
(system, code) and unit spelling, not per fact. Each filtered source (``set[PRED]``) is a column ``_k<j>``: the
filter's three-valued value on the rows of its concept set (null = unknown: left out by every feature).

The SQL expects a UTC session time zone (calendar windows and dates are taken in it).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime

from screener.errors import RuleError
from screener.rules.concepts import PREFIX_SYSTEMS, ConceptSet, normalise_code
from screener.rules.ir import BOOL, NOT_DONE, NUM, STR, Source
from screener.rules.units import _DROP, conversions_to
from screener.rules.windows import Window

__all__ = ["DAY_US", "day", "literal", "member_sql", "q", "rows_ctes", "shift", "ts"]

DAY_US = 86_400_000_000
_UNITS = {
    "m": ("MINUTE", 1),
    "h": ("HOUR", 1),
    "d": ("DAY", 1),
    "w": ("DAY", 7),
    "mo": ("MONTH", 1),
    "y": ("MONTH", 12),
}


def q(text: str) -> str:
    """A SQL string literal."""
    return "'" + text.replace("'", "''") + "'"


def ts(t: datetime) -> str:
    """A UTC instant as a SQL TIMESTAMPTZ literal (microsecond precision)."""
    return f"CAST({q(t.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f+00:00'))} AS TIMESTAMPTZ)"


def shift(col: str, w: Window, sign: int) -> str:
    """``col + sign * w`` in SQL: exact for minutes to weeks, calendar months (day clamped) as
    :meth:`Window.shift` does."""
    unit, k = _UNITS[w.unit]
    return f"({col} {'+' if sign > 0 else '-'} INTERVAL {w.amount * k} {unit})"


def day(col: str) -> str:
    """The UTC calendar day of instant ``col`` as a whole number (days since 1970-01-01)."""
    return f"CAST(floor(CAST(epoch_us({col}) AS DOUBLE) / {DAY_US}) AS BIGINT)"


def literal(value: object, type_: str, where: str) -> str:
    """A typed literal (numbers are DOUBLE, like the Polars path's Float64)."""
    if value is None:
        return "NULL"
    if type_ == BOOL:
        return "TRUE" if value else "FALSE"
    if type_ == NUM:
        return f"CAST({float(value)!r} AS DOUBLE)"  # type: ignore[arg-type]  # a NUM literal is an int or a float
    if type_ == STR:
        return q(str(value))
    raise RuleError(f"{where}: the SQL lowering does not support a {type_} literal")


def _norm_code(col: str) -> str:
    return f"upper(replace(trim({col}), '.', ''))"


def _norm_unit(col: str) -> str:
    text = f"replace(replace(lower(trim({col})), 'µ', 'u'), 'μ', 'u')"
    for ch in _DROP:
        text = f"replace({text}, {q(ch)}, '')"
    return f"coalesce(CASE WHEN {text} = '1' THEN '' ELSE {text} END, '')"


def _hit(pairs: tuple[tuple[str, str], ...], system: str, code: str) -> str:
    by_system: dict[str, list[str]] = {}
    for sys_, value in pairs:
        by_system.setdefault(sys_, []).append(normalise_code(value))
    terms = []
    for sys_, codes in sorted(by_system.items()):
        if sys_ in PREFIX_SYSTEMS:
            match = " OR ".join(f"starts_with({code}, {q(c)})" for c in sorted(set(codes)))
        else:
            match = f"{code} IN ({', '.join(q(c) for c in sorted(set(codes)))})"
        terms.append(f"({system} = {q(sys_)} AND ({match}))")
    return " OR ".join(terms) if terms else "FALSE"


def member_sql(c: ConceptSet, system: str = "system", code: str = "_nc") -> str:
    """True when ``(system, code)`` (``code`` already normalised) is in ``c``, exclusions applied; never null."""
    inside = _hit(c.codes, system, code)
    if c.exclude:
        inside = f"({inside}) AND NOT ({_hit(c.exclude, system, code)})"
    return f"coalesce({inside}, FALSE)"


def _values(rows: list[str], columns: str, empty: str) -> str:
    """A literal table ``SELECT * FROM (VALUES ...) AS t(columns)`` (no row: one typed row filtered out)."""
    if not rows:
        return f"SELECT * FROM (VALUES ({empty})) AS t({columns}) WHERE FALSE"
    return f"SELECT * FROM (VALUES {', '.join(rows)}) AS t({columns})"


def rows_ctes(
    facts: str,
    now: datetime,
    until: datetime,
    concepts: Mapping[int, ConceptSet],
    filters: Mapping[int, tuple[int, Source, str]],
    *,
    attrs: bool,
    encounters: bool,
) -> list[str]:
    """CTEs ending in ``_rows``: ``patient_id, _ck`` (the concept), ``occurred_at, ended_at, status, code``,
    ``_v`` (the value in the concept's unit), ``_done`` (not planned/ordered), ``_pend`` (the period's end:
    ``ended_at``, else ``occurred_at`` when stopped/completed, else now), ``_lc`` (value code, else code),
    ``_ord`` (the position in the patient's (occurred_at, event_id) order: latest/earliest break ties as Polars
    does) and one ``_k<j>`` per filter ``j -> (concept index, source, filter SQL)``, over facts up to ``until``.

    ``attrs``/``encounters``: a filter reads person attributes (``_attrs`` joined as ``a``) or the current
    encounters (``_enc`` joined as ``e``)."""
    # ``_nc`` is an aggregate so that DuckDB cannot push a membership filter below the grouping (it would
    # then test every fact row instead of every distinct code).
    distinct = (
        f"_dcodes AS MATERIALIZED (SELECT system, code, min({_norm_code('code')}) AS _nc FROM {facts} "
        "WHERE code IS NOT NULL GROUP BY system, code)"
    )
    # The code lists and unit conversions are literal tables joined once (a CASE or a UNION branch per concept
    # set costs the planners more than running the query).
    table = sorted(
        {
            (system, normalise_code(code), i, system in PREFIX_SYSTEMS, excl)
            for i, c in concepts.items()
            for excl, pairs in ((False, c.codes), (True, c.exclude))
            for system, code in pairs
        }
    )
    ctab = _values(
        [
            f"({q(sy)}, {q(co)}, {i}, {'TRUE' if p else 'FALSE'}, {'TRUE' if x else 'FALSE'})"
            for sy, co, i, p, x in table
        ],
        "system, _p, _ck, _prefix, _excl",
        "CAST(NULL AS VARCHAR), CAST(NULL AS VARCHAR), 0, FALSE, FALSE",
    )
    codes = (
        "SELECT system, code, _ck FROM (SELECT d.system, d.code, t._ck, t._excl FROM _dcodes AS d JOIN "
        f"({ctab}) AS t ON d.system = t.system AND CASE WHEN t._prefix THEN starts_with(d._nc, t._p) "
        "ELSE d._nc = t._p END) AS _h GROUP BY system, code, _ck HAVING bool_or(_excl) = FALSE"
    )
    dunits = f"_dunits AS MATERIALIZED (SELECT unit, min({_norm_unit('unit')}) AS _nu FROM {facts} GROUP BY unit)"
    conv = _values(
        [
            f"({q(u)}, {i}, CAST({a!r} AS DOUBLE), CAST({b!r} AS DOUBLE))"
            for i, c in concepts.items()
            for u, (a, b) in sorted(conversions_to(c.unit, c.analyte).items())
        ],
        "_nu, _ck, _a, _b",
        "CAST(NULL AS VARCHAR), 0, CAST(NULL AS DOUBLE), CAST(NULL AS DOUBLE)",
    )
    units = f"SELECT d.unit, t._ck, t._a, t._b FROM _dunits AS d JOIN ({conv}) AS t ON d._nu = t._nu"
    not_done = ", ".join(q(s) for s in sorted(NOT_DONE))
    keep = "".join(f", CASE WHEN c._ck = {ci} THEN ({sql}) END AS _k{j}" for j, (ci, _, sql) in filters.items())
    joins = ""
    if attrs:
        joins += " LEFT JOIN _attrs AS a ON a.patient_id = f.patient_id"
    if encounters:
        joins += " LEFT JOIN _enc AS e ON e.patient_id = f.patient_id AND e._eid = f.encounter_id"
    pend = (
        "CASE WHEN f.ended_at IS NOT NULL THEN f.ended_at WHEN f.status IN ('stopped', 'completed') "
        f"THEN f.occurred_at ELSE {ts(now)} END"
    )
    rows = (
        "_rows AS MATERIALIZED (SELECT f.patient_id, c._ck, f.occurred_at, f.ended_at, f.status, f.code, "
        f"(f.status IS NULL OR f.status NOT IN ({not_done})) AS _done, f.value * u._a + u._b AS _v, "
        f"{pend} AS _pend, coalesce(f.value_code, f.code) AS _lc, "
        f"row_number() OVER (PARTITION BY f.patient_id ORDER BY f.occurred_at, f.event_id) AS _ord{keep} "
        f"FROM {facts} AS f JOIN _codes AS c ON c.system = f.system AND c.code = f.code "
        f"LEFT JOIN _units AS u ON u._ck = c._ck AND f.unit IS NOT DISTINCT FROM u.unit{joins} "
        f"WHERE f.occurred_at <= {ts(until)})"
    )
    out = [distinct, f"_codes AS MATERIALIZED ({codes})", dunits, f"_units AS MATERIALIZED ({units})"]
    if encounters:
        out.append(
            "_enc AS MATERIALIZED (SELECT DISTINCT patient_id, coalesce(encounter_id, event_id) AS _eid "
            f"FROM {facts} WHERE kind = 'visit' AND occurred_at <= {ts(now)} "
            f"AND (ended_at IS NULL OR ended_at >= {ts(now)}))"
        )
    return [*out, rows]


def registrations_sql(facts: str, now: datetime) -> str:
    """``(patient_id, _reg_days)``: whole days since the earliest registration covering now."""
    t = ts(now)
    not_done = ", ".join(q(s) for s in sorted(NOT_DONE))
    return (
        f"SELECT patient_id, floor(CAST(epoch_us({t}) - epoch_us(min(occurred_at)) AS DOUBLE) / {DAY_US}) "
        f"AS _reg_days FROM {facts} WHERE kind = 'registration' AND occurred_at <= {t} "
        f"AND (ended_at IS NULL OR ended_at >= {t}) AND (status IS NULL OR status NOT IN ({not_done})) "
        "GROUP BY patient_id"
    )
