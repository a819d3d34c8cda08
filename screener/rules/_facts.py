"""Fact rows for the feature aggregation: concept membership, unit conversion, per-fact filters.

Concept membership: facts are joined to an expanded code table. ICD10/ATC/OPCS4 codes are prefixes (compared
without dots, upper-cased): one join per distinct prefix length; other systems match exactly. Explicit
exclusions are anti-joined. Numeric facts are converted to the concept's unit by a join with a conversion
table; values in unknown or unconvertible units are left out of the numbers and counted (``_unk``).

A per-fact filter (``set[PRED]``) lowers to a Polars expression over the fact rows (:func:`filter_expr`):
three-valued like the criteria; a fact whose PRED is unknown is left out and counted.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

import polars as pl

from screener.rules.concepts import PREFIX_SYSTEMS, ConceptSet, normalise_code, normalise_code_expr
from screener.rules.ir import IR, NUM, STR, Arr, Attr, Bin, Cond, Field, Lit, Not, QualIn, children
from screener.rules.units import conversions_to

__all__ = ["FACT_COLUMNS", "conversions", "ensure_columns", "filter_expr", "member_table", "membership"]

TS = pl.Datetime("us", "UTC")

#: the fact-frame columns the rules read, with their types (a frame missing one gets it as nulls)
FACT_COLUMNS: dict[str, pl.DataType] = {
    "patient_id": pl.String(),
    "event_id": pl.String(),
    "kind": pl.String(),
    "system": pl.String(),
    "code": pl.String(),
    "value": pl.Float64(),
    "unit": pl.String(),
    "occurred_at": TS,
    "status": pl.String(),
    "setting": pl.String(),
    "ended_at": TS,
    "qualifiers": pl.List(pl.String()),
    "dose_value": pl.Float64(),
    "dose_unit": pl.String(),
    "route": pl.String(),
    "ref_low": pl.Float64(),
    "ref_high": pl.Float64(),
    "value_code": pl.String(),
    "encounter_id": pl.String(),
    "location": pl.String(),
}


def ensure_columns(facts: pl.DataFrame) -> pl.DataFrame:
    """``facts`` with every column of :data:`FACT_COLUMNS` (missing ones added as nulls, e.g. an old frame)."""
    missing = [pl.lit(None, dtype=t).alias(c) for c, t in FACT_COLUMNS.items() if c not in facts.columns]
    return facts.with_columns(missing) if missing else facts


def member_table(concepts: dict[str, ConceptSet]) -> pl.DataFrame | None:
    """The code table of :func:`membership` (``None`` when no concept has a code)."""
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


def membership(facts: pl.LazyFrame, concepts: dict[str, ConceptSet], table: pl.DataFrame | None = None) -> pl.LazyFrame:
    """``(_fid, _ckey)`` pairs: fact ``_fid`` belongs to concept ``_ckey`` (exclusions applied)."""
    if table is None:
        table = member_table(concepts)
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


def conversions(concepts: dict[str, ConceptSet]) -> pl.LazyFrame:
    rows = []
    for key, c in concepts.items():
        for spelling, (a, b) in conversions_to(c.unit, c.analyte).items():
            rows.append({"_ckey": key, "_unit": spelling, "_a": a, "_b": b})
    return pl.LazyFrame(rows, schema={"_ckey": pl.String, "_unit": pl.String, "_a": pl.Float64, "_b": pl.Float64})


def _finite(e: pl.Expr) -> pl.Expr:
    """Arithmetic that overflows or divides by zero is unknown, never infinity."""
    return pl.when(e.is_finite()).then(e).otherwise(None)


_ARITH: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    "+": lambda a, b: a + b,
    "-": lambda a, b: a - b,
    "*": lambda a, b: a * b,
    "/": lambda a, b: a / b,
    "//": lambda a, b: (a / b).floor(),
    "%": lambda a, b: a - (a / b).floor() * b,
    "^": lambda a, b: a.pow(b),
}
_CMP: dict[str, Callable[[pl.Expr, pl.Expr], pl.Expr]] = {
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}


def arith(op: str, a: pl.Expr, b: pl.Expr) -> pl.Expr:
    """``a op b`` (numbers); a non-finite result (overflow, division by zero) is unknown."""
    return _finite(_ARITH[op](a, b).cast(pl.Float64))


def _converted(col: str) -> pl.Expr:
    return pl.col(col) * pl.col("_a") + pl.col("_b")


def _field(name: str) -> pl.Expr:
    if name == "value":
        return pl.col("_v")
    if name in ("ref_low", "ref_high"):
        return _converted(name)
    if name == "dose":
        return pl.col("dose_value")
    if name == "encounter":
        return pl.col("encounter_id")
    if name == "duration_days":
        return (pl.col("ended_at") - pl.col("occurred_at")).dt.total_microseconds().cast(pl.Float64) / 86_400e6
    return pl.col(name)


def member_expr(concept: ConceptSet, system: pl.Expr, code: pl.Expr) -> pl.Expr:
    """True when ``(system, code)`` is in ``concept`` (exclusions applied); null inputs are not members."""

    def hit(pairs: tuple[tuple[str, str], ...]) -> pl.Expr:
        norm = normalise_code_expr(code)
        out = pl.lit(False)
        for sys_, value in pairs:
            v = normalise_code(value)
            match = norm.str.starts_with(v) if sys_ in PREFIX_SYSTEMS else norm == v
            out = out | ((system == sys_) & match)
        return out.fill_null(False)

    return hit(concept.codes) & ~hit(concept.exclude) if concept.exclude else hit(concept.codes)


def _qualifier_in(concept: ConceptSet) -> pl.Expr:
    parts = pl.element().str.splitn("|", 2)
    inner = member_expr(concept, parts.struct.field("field_0"), parts.struct.field("field_1"))
    q = pl.col("qualifiers")
    return pl.when(q.is_null()).then(None).otherwise(q.list.eval(inner).list.any())


def filter_expr(ir: IR) -> pl.Expr:
    """The filter ``ir`` over fact rows (columns of :func:`screener.rules.features` rows). Null = unknown."""
    if isinstance(ir, Lit):
        dtype = {NUM: pl.Float64, STR: pl.String}.get(ir.type, pl.Boolean)
        return pl.lit(ir.value, dtype=dtype)
    if isinstance(ir, Field):
        return _field(ir.name)
    if isinstance(ir, Attr):
        return pl.col(f"_attr_{ir.name}")
    if isinstance(ir, QualIn):
        return _qualifier_in(ir.concept)
    if isinstance(ir, Not):
        return ~filter_expr(ir.operand)
    if isinstance(ir, Cond):
        t = filter_expr(ir.test)
        return pl.when(t.is_null()).then(None).when(t).then(filter_expr(ir.then)).otherwise(filter_expr(ir.other))
    if isinstance(ir, Bin):
        if ir.op == "in":
            assert isinstance(ir.right, Arr)
            left = filter_expr(ir.left)
            dtype = {NUM: pl.Float64, STR: pl.String}.get(ir.right.elem, pl.Boolean)
            values = pl.Series(list(ir.right.values), dtype=dtype)
            return pl.when(left.is_null()).then(None).otherwise(left.is_in(values.implode()))
        if isinstance(ir.left, Field) and ir.left.name == "encounter" and _is_current(ir.right):
            return _current(ir.op)
        if isinstance(ir.right, Field) and ir.right.name == "encounter" and _is_current(ir.left):
            return _current(ir.op)
        a, b = filter_expr(ir.left), filter_expr(ir.right)
        if ir.op == "&&":
            return a & b
        if ir.op == "||":
            return a | b
        if ir.op in _CMP:
            return _CMP[ir.op](a, b)
        return arith(ir.op, a, b)
    raise TypeError(f"cannot lower filter {ir!r}")


def _is_current(ir: IR) -> bool:
    return isinstance(ir, Lit) and ir.value == "current"


def _current(op: str) -> pl.Expr:
    """``.encounter == 'current'``: the fact's encounter is one of a visit ongoing at now (``_enc_now``)."""
    here = pl.when(pl.col("encounter_id").is_null()).then(None).otherwise(pl.col("_enc_now").fill_null(False))
    return here if op == "==" else ~here


def current_encounters(facts: pl.LazyFrame, now: datetime) -> pl.LazyFrame:
    """``(patient_id, encounter_id, _enc_now)``: encounters of visit facts ongoing at ``now``
    (occurred_at <= now and (ended_at null or ended_at >= now)); a visit without an encounter id is its own."""
    return (
        facts.filter(
            (pl.col("kind") == "visit")
            & (pl.col("occurred_at") <= now)
            & (pl.col("ended_at").is_null() | (pl.col("ended_at") >= now))
        )
        .select(
            "patient_id", pl.coalesce("encounter_id", "event_id").alias("encounter_id"), pl.lit(True).alias("_enc_now")
        )
        .unique(["patient_id", "encounter_id"])
    )


def uses(ir: IR | None, pred: Callable[[Any], bool]) -> bool:
    """True when some node of filter ``ir`` satisfies ``pred``."""
    if ir is None:
        return False
    if pred(ir):
        return True
    return any(uses(c, pred) for c in children(ir))


def constant(name: str, value: object, dtype: pl.DataType, n: int) -> pl.Series:
    """``n`` copies of ``value`` (``None``: nulls) as a Series of ``dtype``, built directly: ``pl.repeat(...,
    eager=True)`` runs a query on the thread pool per call, which a small screen paid for every column of its
    wide frame (hundreds of calls; slow on a busy host)."""
    if n == 0:
        return pl.Series(name, [], dtype=dtype)
    return pl.Series(name, [value], dtype=dtype).new_from_index(0, n)
