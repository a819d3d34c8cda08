"""Load-time checks that catch criteria which would always be unknown or never true.

Each returns a message (``None`` when the expression is fine); the type checker raises it with the position.
"""

from __future__ import annotations

from screener.rules.concepts import ConceptSet
from screener.rules.ir import FIELD_KINDS, FIELDS, RANGES, SYSTEM_KINDS, TRANSFORMS, Attr, Feat, Lit

__all__ = ["field_not_carried", "never_true", "set_kinds", "transform_usage"]

_ARG_WORDS = {"w": "'WINDOW'", "w?": "an optional 'WINDOW'", "gap": "'GAP'", "src": "another concept set"}
_EXAMPLES = {
    "within": "('90d')",
    "episodes": "('14d', '1y')",
    "continuous": "('90d', '7d')",
    "after": "(other, '30d')",
    "before": "(other, '30d')",
    "upcoming": "('30d')",
}


def transform_usage(concept: str, name: str) -> str:
    """How ``name`` is called, in words and with an example."""
    spec = TRANSFORMS[name][1]
    if not spec:
        return f"no arguments: {concept}|{name}"
    words = ", ".join(_ARG_WORDS[a] for a in spec)
    example = _EXAMPLES.get(name, "('1y')")
    return f"{words}, e.g. {concept}|{name}{example}"


def set_kinds(concept: ConceptSet) -> frozenset[str] | None:
    """The fact kinds a concept set's codes can be recorded on (``None``: any kind, e.g. SNOMED)."""
    out: set[str] = set()
    for system, _code in concept.codes:
        kinds = SYSTEM_KINDS.get(system)
        if kinds is None:
            return None
        out |= kinds
    return frozenset(out)


def field_not_carried(field: str, concept: ConceptSet) -> str | None:
    """A message when no fact of ``concept``'s code systems ever carries ``field`` (e.g. ``.route`` on ICD-10)."""
    needs = FIELD_KINDS.get(field)
    kinds = set_kinds(concept)
    if needs is None or kinds is None or needs & kinds:
        return None
    systems = sorted({s for s, _c in concept.codes})
    usable = [f".{f}" for f in FIELDS if FIELD_KINDS.get(f) is None or FIELD_KINDS[f] & kinds]
    return (
        f"'.{field}' is never recorded on {'/'.join(systems)} codes ({', '.join(sorted(kinds))} facts) of concept "
        f"set '{concept.name}'; their fields: {', '.join(usable)}"
    )


def _range(node: object) -> tuple[str, tuple[float | None, float | None]] | None:
    if isinstance(node, Attr) and node.name in RANGES:
        return node.name, RANGES[node.name]
    if isinstance(node, Feat) and node.transform in RANGES:
        return f"{node.concept.name}|{node.transform}", RANGES[node.transform]
    return None


_FLIP = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def never_true(op: str, left: object, right: object) -> str | None:
    """A message when ``left op right`` can never be true: a number out of its range (``age > 150``,
    ``imd_decile > 10``, ``count < 0``). True/false compared with a number is a type error already."""
    if isinstance(left, Lit) and not isinstance(right, Lit):
        left, right, op = right, left, _FLIP.get(op, op)
    if not isinstance(right, Lit) or not isinstance(right.value, float):
        return None
    known = _range(left)
    if known is None:
        return None
    name, (lo, hi) = known
    c = right.value
    impossible = {
        ">": hi is not None and c >= hi,
        ">=": hi is not None and c > hi,
        "<": lo is not None and c <= lo,
        "<=": lo is not None and c < lo,
        "==": (hi is not None and c > hi) or (lo is not None and c < lo),
    }.get(op, False)
    if not impossible:
        return None
    shown = int(c) if c.is_integer() else c
    span = f"{lo:g} to {hi:g}" if lo is not None and hi is not None else f"at least {lo:g}"
    return f"'{name} {op} {shown}' can never be true ({name} is {span})"
