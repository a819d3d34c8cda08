"""The loaded form of a rule file: a :class:`Study` with its concept sets and criteria.

Everything here is immutable and built once by :mod:`screener.rules.loader`; the compiled expression of
each criterion is an intermediate representation (:mod:`screener.rules.compiler`) that lowers to Polars.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

import polars as pl

from screener.rules.units import normalise_unit

if TYPE_CHECKING:
    from screener.rules.compiler import IR

__all__ = ["PREFIX_SYSTEMS", "ConceptSet", "Criterion", "Study", "TestCase", "normalise_code"]

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
        return self.label or self.name

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


@dataclass(frozen=True, eq=False)
class Criterion:
    """One named criterion: an expression, a group (``any``/``all``/``at_least``) or the implicit setting check.

    ``kind`` is ``'expr'``, ``'any'``, ``'all'``, ``'at_least'`` or ``'setting'``; ``group`` is ``'include'``
    or ``'exclude'`` (children inherit the group of their top-level criterion).
    """

    name: str
    group: str
    kind: str
    expression: str | None = None
    ir: IR | None = None
    ast: Any = None
    at_least: int = 0
    children: tuple[Criterion, ...] = ()
    line: int | None = None
    column: int | None = None

    def walk(self) -> list[Criterion]:
        """This criterion and every nested one, depth first."""
        out: list[Criterion] = [self]
        for c in self.children:
            out.extend(c.walk())
        return out


@dataclass(frozen=True)
class TestCase:
    """A test case from the ``tests:`` list, events already validated."""

    __test__ = False  # not a pytest class

    name: str
    now: datetime
    person: dict[str, Any]
    events: tuple[Any, ...]
    expect: str
    criteria: dict[str, bool | None]
    line: int | None = None
    column: int | None = None


@dataclass(frozen=True, eq=False)
class Study:
    """A loaded, compiled study. See rules-spec for the contract of each field.

    Compared and hashed by identity (compare ``rule_hash`` to see whether a file changed).
    """

    id: str
    title: str
    summary: str
    sponsor: str
    portfolio: bool
    target: int
    opens: date
    closes: date
    settings: tuple[str, ...]
    team: str
    path: str
    content_hash: str
    concepts: dict[str, ConceptSet] = field(default_factory=dict)
    include: tuple[Criterion, ...] = ()
    exclude: tuple[Criterion, ...] = ()
    tests: tuple[TestCase, ...] = ()
    #: sha256 over the file bytes and the bytes of any shared concept files it references.
    rule_hash: str = ""

    def is_open(self, at: datetime) -> bool:
        """True when ``at`` (UTC) falls on or between the opening and closing dates."""
        day = at.date() if isinstance(at, datetime) else at
        return self.opens <= day <= self.closes

    @property
    def criteria(self) -> tuple[Criterion, ...]:
        """Top-level criteria in output order: includes (``in_setting`` first when present), then excludes."""
        return (*self.include, *self.exclude)

    def all_criteria(self) -> list[Criterion]:
        """Every criterion including nested group members."""
        out: list[Criterion] = []
        for c in self.criteria:
            out.extend(c.walk())
        return out

    def features(self) -> list[Any]:
        """Every concept-set feature (transform application) the criteria use."""
        from screener.rules.compiler import collect_features

        out: list[Any] = []
        for c in self.all_criteria():
            if c.ir is not None:
                out.extend(collect_features(c.ir))
        return out

    def used_concepts(self) -> list[ConceptSet]:
        seen: dict[str, ConceptSet] = {}
        for f in self.features():
            seen.setdefault(f.concept.name, f.concept)
        return list(seen.values())

    def fact_filter(self) -> pl.Expr:
        """True for facts some criterion of this study can use (code in a used concept set)."""
        out = pl.lit(False)
        for c in self.used_concepts():
            out = out | c.fact_expr()
        return out

    @property
    def horizon(self) -> timedelta | None:
        """The longest look-back any criterion needs (an upper bound), or ``None`` when one needs all history."""
        feats = self.features()
        if not feats:
            return timedelta(0)
        longest = timedelta(0)
        for f in feats:
            if f.window is None:
                return None
            longest = max(longest, f.window.upper_bound)
        return longest

    def render_markdown(self) -> str:
        """Plain-English Markdown of the study and its criteria."""
        from screener.rules.render import render_markdown

        return render_markdown(self)
