"""Concept sets: named code lists and the membership test of a fact against them."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property

import polars as pl

from screener.rules.units import normalise_unit

__all__ = ["PREFIX_SYSTEMS", "ConceptSet", "normalise_code", "normalise_code_expr"]

#: Code systems whose codes are hierarchical prefixes: E11 matches E11.9 and E119.
PREFIX_SYSTEMS = ("ICD10", "ATC", "OPCS4")


def normalise_code(code: str) -> str:
    """Comparison key of a code: dots and surrounding spaces removed, upper case (E11.9 -> E119)."""
    return code.strip().replace(".", "").upper()


def normalise_code_expr(col: pl.Expr) -> pl.Expr:
    """Vectorised :func:`normalise_code`."""
    return col.str.strip_chars().str.replace_all(".", "", literal=True).str.to_uppercase()


@dataclass(frozen=True)
class ConceptSet:
    """A named set of codes. ``codes``/``exclude`` are ``(system, code)`` pairs as written."""

    name: str
    codes: tuple[tuple[str, str], ...]
    exclude: tuple[tuple[str, str], ...] = ()
    unit: str | None = None
    analyte: str | None = None
    label: str | None = None
    line: int | None = None
    column: int | None = None

    @property
    def display(self) -> str:
        """What people read: the ``label``, else the name with underscores as spaces."""
        return self.label or self.name.replace("_", " ")

    @cached_property
    def key(self) -> str:
        """Identity of the set's meaning (not its name): equal sets in two studies share one key."""
        payload = json.dumps(
            [sorted(self.codes), sorted(self.exclude), normalise_unit(self.unit), self.analyte], sort_keys=True
        )
        return "c" + hashlib.sha1(payload.encode()).hexdigest()[:12]

    def matches(self, system: str | None, code: str | None) -> bool:
        """Reference membership test for one fact (used by the reference evaluator and tests)."""
        if system is None or code is None:
            return False
        c = normalise_code(code)

        def hit(pairs: tuple[tuple[str, str], ...]) -> bool:
            for sys_, value in pairs:
                if sys_ != system:
                    continue
                v = normalise_code(value)
                if (system in PREFIX_SYSTEMS and c.startswith(v)) or c == v:
                    return True
            return False

        return hit(self.codes) and not hit(self.exclude)

    def fact_expr(self) -> pl.Expr:
        """Boolean expression over a facts frame: the fact's code is in the set (exclusions ignored)."""
        code = normalise_code_expr(pl.col("code"))
        terms: list[pl.Expr] = []
        by_system: dict[str, list[str]] = {}
        for sys_, value in self.codes:
            by_system.setdefault(sys_, []).append(normalise_code(value))
        for sys_, values in sorted(by_system.items()):
            if sys_ in PREFIX_SYSTEMS:
                lengths = sorted({len(v) for v in values})
                match = pl.lit(False)
                for n in lengths:
                    match = match | code.str.slice(0, n).is_in([v for v in values if len(v) == n])
            else:
                match = code.is_in(sorted(set(values)))
            terms.append((pl.col("system") == sys_) & match)
        out = pl.lit(False)
        for t in terms:
            out = out | t
        return out.fill_null(False)
