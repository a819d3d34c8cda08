"""The typed intermediate representation of a criterion, built by :mod:`screener.rules.typecheck`.

Types: ``bool``, ``num``, ``str``, ``list``. Nodes are frozen dataclasses; :data:`IR` is their union. The IR
lowers to Polars (:mod:`screener.rules.lower`) and is described in words (:mod:`screener.rules.render`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

from screener.events import ETHNIC_GROUPS, SETTINGS
from screener.rules.concepts import ConceptSet
from screener.rules.windows import Window

__all__ = [
    "ATTRIBUTES",
    "BOOL",
    "IR",
    "LIST",
    "NUM",
    "STR",
    "TRANSFORMS",
    "TYPE_WORDS",
    "Arr",
    "Attr",
    "Bin",
    "Cond",
    "Feat",
    "Lit",
    "Not",
    "collect_features",
]


BOOL, NUM, STR, LIST = "bool", "num", "str", "list"
TYPE_WORDS = {BOOL: "true/false", NUM: "a number", STR: "text", LIST: "a list"}

#: attribute -> (type, allowed values or None)
ATTRIBUTES: dict[str, tuple[str, tuple[str, ...] | None]] = {
    "age": (NUM, None),
    "age_days": (NUM, None),
    "sex": (STR, ("F", "M", "O", "U")),
    "ethnic_group": (STR, ETHNIC_GROUPS),
    "imd_decile": (NUM, None),
    "imd_quintile": (NUM, None),
    "setting": (STR, SETTINGS),
    "site": (STR, None),
}

#: transform -> (result type, window: 'none' | 'required' | 'optional', numeric over values)
TRANSFORMS: dict[str, tuple[str, str, bool]] = {
    "ever": (BOOL, "none", False),
    "within": (BOOL, "required", False),
    "count": (NUM, "optional", False),
    "latest": (NUM, "optional", True),
    "earliest": (NUM, "optional", True),
    "min": (NUM, "optional", True),
    "max": (NUM, "optional", True),
    "mean": (NUM, "optional", True),
    "days_since": (NUM, "none", False),
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
class Feat:
    """A concept-set transform: ``concept|transform(window)``."""

    concept: ConceptSet
    transform: str
    window: Window | None
    type: str

    @cached_property
    def key(self) -> str:
        """Identity of the data this feature aggregates (concept meaning + window), shared across studies."""
        return f"{self.concept.key}@{self.window.text if self.window else 'all'}"


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


IR = Lit | Attr | Feat | Arr | Bin | Not | Cond


def collect_features(ir: IR) -> list[Feat]:
    """Every :class:`Feat` in ``ir``, in source order."""
    if isinstance(ir, Feat):
        return [ir]
    if isinstance(ir, Bin):
        return collect_features(ir.left) + collect_features(ir.right)
    if isinstance(ir, Not):
        return collect_features(ir.operand)
    if isinstance(ir, Cond):
        return collect_features(ir.test) + collect_features(ir.then) + collect_features(ir.other)
    return []
