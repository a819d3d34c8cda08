"""Per-fact filters (``set[PRED]``) lowered to SQL over one fact row, as :func:`screener.rules._facts.filter_expr`
lowers them to Polars: three-valued (SQL NULL = unknown), fields in the set's unit, arithmetic that divides by
zero or overflows unknown.

The expression reads the fact as ``f`` (the facts relation), its unit conversion as ``u`` (``_a``, ``_b``), the
person attributes as ``a`` (``_a_<name>``) and the current encounters as ``e`` (``_eid``), the joins of
:func:`screener.rules._sql_facts.rows_ctes`.
"""

from __future__ import annotations

from screener.errors import RuleError
from screener.rules._sql_facts import DAY_US, literal, member_sql
from screener.rules.concepts import ConceptSet
from screener.rules.ir import IR, Arr, Attr, Bin, Cond, Field, Lit, Not, QualIn

__all__ = ["filter_sql", "reads_attributes", "reads_encounter"]

_CMP = {"==": "=", "!=": "<>", "<": "<", "<=": "<=", ">": ">", ">=": ">="}
_MAX = "1.7976931348623157e308"


def _field(name: str) -> str:
    if name in ("value", "ref_low", "ref_high"):
        return f"(f.{name} * u._a + u._b)"
    if name == "dose":
        return "f.dose_value"
    if name == "encounter":
        return "f.encounter_id"
    if name == "duration_days":
        return f"(CAST(epoch_us(f.ended_at) - epoch_us(f.occurred_at) AS DOUBLE) / {DAY_US})"
    return f"f.{name}"


def _qualifier_in(concept: ConceptSet) -> str:
    """Some element ``'SYSTEM|code'`` of the fact's qualifiers is in the set; unknown when qualifiers are null."""
    x = "_qx"
    bar = f"strpos({x}, '|')"
    member = member_sql(
        concept,
        system=f"substr({x}, 1, {bar} - 1)",
        code=f"upper(replace(trim(substr({x}, {bar} + 1)), '.', ''))",
    )
    test = f"CASE WHEN {bar} > 0 THEN {member} ELSE FALSE END"
    return (
        "CASE WHEN f.qualifiers IS NULL THEN NULL "
        f"ELSE array_length(list_filter(f.qualifiers, lambda {x}: {test})) > 0 END"
    )


def _arith(op: str, a: str, b: str, where: str) -> str:
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
        raise RuleError(f"{where}: the SQL lowering does not support the operator '{op}' in a filter")
    return f"CASE WHEN abs({raw}) <= {_MAX} THEN {raw} END"


def _is_current(ir: IR) -> bool:
    return isinstance(ir, Lit) and ir.value == "current"


def filter_sql(ir: IR, where: str) -> str:
    """The SQL of filter ``ir`` over one fact row (null = unknown)."""
    if isinstance(ir, Lit):
        return literal(ir.value, ir.type, where)
    if isinstance(ir, Field):
        return _field(ir.name)
    if isinstance(ir, Attr):
        return f"a._a_{ir.name}"
    if isinstance(ir, QualIn):
        return _qualifier_in(ir.concept)
    if isinstance(ir, Not):
        return f"(NOT {filter_sql(ir.operand, where)})"
    if isinstance(ir, Cond):
        t = filter_sql(ir.test, where)
        a, b = filter_sql(ir.then, where), filter_sql(ir.other, where)
        return f"CASE WHEN {t} IS NULL THEN NULL WHEN {t} THEN {a} ELSE {b} END"
    if isinstance(ir, Bin):
        if ir.op == "in":
            if not isinstance(ir.right, Arr):
                raise RuleError(f"{where}: the SQL lowering supports 'in' on a literal list only")
            v = filter_sql(ir.left, where)
            items = [literal(x, ir.right.elem, where) for x in ir.right.values]
            return f"({v} IN ({', '.join(items)}))" if items else f"CASE WHEN {v} IS NULL THEN NULL ELSE FALSE END"
        for f_, lit in ((ir.left, ir.right), (ir.right, ir.left)):
            if isinstance(f_, Field) and f_.name == "encounter" and _is_current(lit):
                here = "CASE WHEN f.encounter_id IS NULL THEN NULL ELSE e._eid IS NOT NULL END"
                return here if ir.op == "==" else f"(NOT {here})"
        a, b = filter_sql(ir.left, where), filter_sql(ir.right, where)
        if ir.op == "&&":
            return f"({a} AND {b})"
        if ir.op == "||":
            return f"({a} OR {b})"
        if ir.op in _CMP:
            return f"({a} {_CMP[ir.op]} {b})"
        return _arith(ir.op, a, b, where)
    raise RuleError(f"{where}: the SQL lowering does not support {type(ir).__name__} nodes in a filter")


def _walk(ir: IR) -> list[IR]:
    out = [ir]
    if isinstance(ir, Bin):
        out += _walk(ir.left) + _walk(ir.right)
    elif isinstance(ir, Not):
        out += _walk(ir.operand)
    elif isinstance(ir, Cond):
        out += _walk(ir.test) + _walk(ir.then) + _walk(ir.other)
    return out


def reads_attributes(ir: IR) -> bool:
    """True when filter ``ir`` reads a person attribute."""
    return any(isinstance(n, Attr) for n in _walk(ir))


def reads_encounter(ir: IR) -> bool:
    """True when filter ``ir`` reads ``.encounter`` (the current-encounter test joins ``_enc``)."""
    return any(isinstance(n, Field) and n.name == "encounter" for n in _walk(ir))
