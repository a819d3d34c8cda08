"""The typed intermediate representation of a criterion, built by :mod:`screener.rules.typecheck`.

Types: ``bool``, ``num``, ``str``, ``list``. Nodes are frozen dataclasses; :data:`IR` is their union. The IR
lowers to Polars (:mod:`screener.rules.lower`) and is described in words (:mod:`screener.rules.render`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from screener.rules.concepts import ConceptSet
from screener.rules.windows import Window
from screener.vocab import ETHNIC_GROUPS, FACT_KINDS, NOT_DONE_STATUSES, ROUTES, SETTINGS, SEXES, STATUSES

__all__ = [
    "ATTRIBUTES",
    "BOOL",
    "FIELDS",
    "FIELD_KINDS",
    "FIELD_VALUES",
    "IR",
    "LIST",
    "LOOKBACK",
    "NOT_DONE",
    "NUM",
    "RANGES",
    "STR",
    "SYSTEM_KINDS",
    "TRANSFORMS",
    "TYPE_WORDS",
    "Arr",
    "Attr",
    "Bin",
    "Cond",
    "Feat",
    "Field",
    "Lit",
    "Not",
    "QualIn",
    "Source",
    "children",
    "collect_attributes",
    "collect_features",
    "filter_fields",
]


BOOL, NUM, STR, LIST = "bool", "num", "str", "list"
TYPE_WORDS = {BOOL: "true/false", NUM: "a number", STR: "text", LIST: "a list"}

#: attribute -> (type, allowed values or None)
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "age": (NUM, None),
    "age_days": (NUM, None),
    "age_months": (NUM, None),
    "sex": (STR, SEXES),
    "ethnic_group": (STR, ETHNIC_GROUPS),
    "imd_decile": (NUM, None),
    "imd_quintile": (NUM, None),
    "setting": (STR, SETTINGS),
    "site": (STR, None),
    "registered_days": (NUM, None),
}

#: transform -> (result type, arguments, reads values). Arguments: ``w`` a window, ``w?`` an optional window,
#: ``gap`` a gap (written like a window), ``src`` another concept set (optionally filtered).
TRANSFORMS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "ever": (BOOL, (), False),
    "within": (BOOL, ("w",), False),
    "count": (NUM, ("w?",), False),
    "latest": (NUM, ("w?",), True),
    "earliest": (NUM, ("w?",), True),
    "min": (NUM, ("w?",), True),
    "max": (NUM, ("w?",), True),
    "mean": (NUM, ("w?",), True),
    "days_since": (NUM, (), False),
    "days_since_first": (NUM, (), False),
    "age_at_first": (NUM, (), False),
    "count_days": (NUM, ("w?",), False),
    "episodes": (NUM, ("gap", "w?"), False),
    "change": (NUM, ("w?",), True),
    "pct_change": (NUM, ("w?",), True),
    "exposure_days": (NUM, ("w?",), False),
    "on_now": (BOOL, (), False),
    "continuous": (BOOL, ("w", "gap"), False),
    "after": (BOOL, ("src", "w"), False),
    "before": (BOOL, ("src", "w"), False),
    "latest_code": (STR, ("w?",), False),
    "upcoming": (BOOL, ("w",), False),
}

#: transforms whose window is a plain look-back ``[now - w, now]`` over the facts they read
LOOKBACK = frozenset(
    [
        *("within", "count", "latest", "earliest", "min", "max", "mean"),
        *("count_days", "episodes", "change", "pct_change", "latest_code"),
    ]
)

#: fact field (written ``.name`` inside a filter) -> type
FIELDS: dict[str, str] = {
    "value": NUM,
    "ref_low": NUM,
    "ref_high": NUM,
    "dose": NUM,
    "dose_unit": STR,
    "route": STR,
    "status": STR,
    "setting": STR,
    "location": STR,
    "kind": STR,
    "code": STR,
    "value_code": STR,
    "duration_days": NUM,
    "encounter": STR,
    "qualifiers": LIST,
}
#: the allowed values of a text field (others are a load-time error)
FIELD_VALUES: dict[str, tuple[str, ...]] = {
    "route": ROUTES,
    "status": STATUSES,
    "setting": SETTINGS,
    "kind": FACT_KINDS,
}
#: the fact kinds that carry a field (fields not listed are carried by every kind)
FIELD_KINDS: dict[str, frozenset[str]] = {
    "value": frozenset(["measurement", "observation"]),
    "ref_low": frozenset(["measurement", "observation"]),
    "ref_high": frozenset(["measurement", "observation"]),
    "value_code": frozenset(["measurement", "observation"]),
    "dose": frozenset(["drug", "immunization"]),
    "dose_unit": frozenset(["drug", "immunization"]),
    "route": frozenset(["drug", "immunization"]),
}
#: the fact kinds a code system's codes are recorded on (systems not listed: any kind)
SYSTEM_KINDS: dict[str, frozenset[str]] = {
    "ICD10": frozenset(["condition"]),
    "ICD9": frozenset(["condition"]),
    "OPCS4": frozenset(["procedure"]),
    "LOINC": frozenset(["measurement", "observation"]),
    "ATC": frozenset(["drug", "immunization", "allergy"]),
    "DMD": frozenset(["drug", "immunization", "allergy"]),
    "RXNORM": frozenset(["drug", "immunization", "allergy"]),
}
#: statuses that are not (yet) done: skipped by every transform but ``upcoming`` unless a filter reads ``.status``
NOT_DONE = NOT_DONE_STATUSES

#: the range a number can take (for the "can never be true" check); ``None`` = unbounded on that side
RANGES: dict[str, tuple[float | None, float | None]] = {
    "age": (0, 150),
    "age_days": (0, 150 * 366),
    "age_months": (0, 150 * 12),
    "imd_decile": (1, 10),
    "imd_quintile": (1, 5),
    "registered_days": (0, None),
    "count": (0, None),
    "count_days": (0, None),
    "episodes": (0, None),
    "exposure_days": (0, None),
    "days_since": (0, None),
    "days_since_first": (0, None),
    "age_at_first": (0, 150),
}

_COMPARE = ("<", "<=", ">", ">=")
_EQUALITY = ("==", "!=")
_LOGIC = ("&&", "||")
_ARITH = ("+", "-", "*", "/", "//", "%", "^")

# ---------------------------------------------------------------- intermediate representation


@dataclass(frozen=True)
class Lit:
    value: Any
    type: str


@dataclass(frozen=True)
class Attr:
    name: str
    type: str


@dataclass(frozen=True)
class Field:
    """A fact field inside a filter, ``.name``."""

    name: str
    type: str


@dataclass(frozen=True)
class QualIn:
    """``SETNAME in .qualifiers``: some qualifier code of the fact is in the concept set."""

    concept: ConceptSet
    type: str = BOOL


def _digest(node: Any) -> str:
    return hashlib.sha1(repr(node).encode()).hexdigest()[:12]


@dataclass(frozen=True)
class Source:
    """A concept set with an optional per-fact filter: the facts a transform reads."""

    concept: ConceptSet
    filter: IR | None = None

    @cached_property
    def key(self) -> str:
        return self.concept.key + (f"[{_digest(self.filter)}]" if self.filter is not None else "")

    @property
    def reads_status(self) -> bool:
        """True when the filter reads ``.status`` (then planned/ordered facts are not skipped)."""
        return self.filter is not None and "status" in filter_fields(self.filter)


@dataclass(frozen=True)
class Feat:
    """A concept-set transform: ``concept[filter]|transform(args)``.

    ``window`` is the look-back (or, for ``continuous``, the span to cover; for ``after``/``before``, the largest
    distance; for ``upcoming``, the look-ahead); ``gap`` the gap of ``episodes``/``continuous``; ``other`` the
    other side of ``after``/``before``.
    """

    concept: ConceptSet
    transform: str
    window: Window | None
    type: str
    filter: IR | None = None
    gap: Window | None = None
    other: Source | None = None

    @cached_property
    def source(self) -> Source:
        return Source(self.concept, self.filter)

    @cached_property
    def mode(self) -> str:
        """How the facts are selected: ``plain`` (a look-back), ``period`` (by period end), ``continuous``,
        ``upcoming``, ``after`` or ``before``."""
        t = self.transform
        if t in ("exposure_days", "on_now"):
            return "period"
        if t in ("continuous", "upcoming", "after", "before"):
            return t
        return "plain"

    @cached_property
    def key(self) -> str:
        """Identity of the data this feature aggregates (facts selected + parameters), shared across studies."""
        w = self.window.text if self.window else "all"
        base = self.source.key
        mode = self.mode
        if mode == "plain":
            if self.transform == "episodes" and self.gap is not None:
                return f"{base}@{w}~ep{self.gap.text}"
            return f"{base}@{w}"
        if mode == "period":
            return f"{base}@{w}~period"
        if mode == "continuous":
            assert self.gap is not None
            return f"{base}@{w}~cont{self.gap.text}"
        if mode == "upcoming":
            return f"{base}@{w}~up"
        assert self.other is not None
        return f"{base}~{mode}{w}~{self.other.key}"

    @property
    def other_key(self) -> str:
        """The key of the other side's fact rows (``after``/``before`` only)."""
        return self.key + "~other"


@dataclass(frozen=True)
class Arr:
    values: tuple[Any, ...]
    elem: str
    type: str = LIST


@dataclass(frozen=True)
class Bin:
    op: str
    left: IR
    right: IR
    type: str


@dataclass(frozen=True)
class Not:
    operand: IR
    type: str = BOOL


@dataclass(frozen=True)
class Cond:
    test: IR
    then: IR
    other: IR
    type: str


IR = Lit | Attr | Feat | Arr | Bin | Not | Cond | Field | QualIn


def children(ir: IR) -> tuple[IR, ...]:
    """The direct sub-expressions of ``ir`` (a filter is not a child: see :func:`filter_fields`)."""
    if isinstance(ir, Bin):
        return (ir.left, ir.right)
    if isinstance(ir, Not):
        return (ir.operand,)
    if isinstance(ir, Cond):
        return (ir.test, ir.then, ir.other)
    return ()


def collect_features(ir: IR) -> list[Feat]:
    """Every :class:`Feat` in ``ir``, in source order."""
    if isinstance(ir, Feat):
        return [ir]
    return [f for child in children(ir) for f in collect_features(child)]


def collect_attributes(ir: IR) -> set[str]:
    """Every person attribute ``ir`` reads, inside filters too."""
    if isinstance(ir, Attr):
        return {ir.name}
    out: set[str] = set()
    if isinstance(ir, Feat):
        for f in (ir.filter, ir.other.filter if ir.other else None):
            if f is not None:
                out |= collect_attributes(f)
    for child in children(ir):
        out |= collect_attributes(child)
    return out


def filter_fields(ir: IR) -> list[str]:
    """The fact fields a filter reads, in source order, each once."""
    if isinstance(ir, Field):
        return [ir.name]
    if isinstance(ir, QualIn):
        return ["qualifiers"]
    out: list[str] = []
    for child in children(ir):
        out += [f for f in filter_fields(child) if f not in out]
    return out
