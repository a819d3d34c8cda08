"""The loaded form of a rule file: a :class:`Study` with its concept sets and criteria.

Everything here is immutable and built once by :mod:`screener.rules.loader`; the compiled expression of
each criterion is an intermediate representation (:mod:`screener.rules.ir`) that lowers to Polars
(:mod:`screener.rules.lower`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

import polars as pl

from screener.rules.concepts import PREFIX_SYSTEMS, ConceptSet, normalise_code, normalise_code_expr
from screener.rules.ir import IR, LOOKBACK, Feat, collect_attributes, collect_features, filter_fields

__all__ = [
    "PREFIX_SYSTEMS",
    "ConceptSet",
    "Contact",
    "Criterion",
    "Study",
    "TestCase",
    "humanise",
    "normalise_code",
    "normalise_code_expr",
]


#: words written in capitals (or their usual mixed case) when a name is humanised
_ACRONYMS = {
    w.lower(): w
    for w in (
        *("eGFR", "HbA1c", "BMI", "COPD", "NIHSS", "ACR", "ICS", "HF", "CKD", "T2DM", "T1DM", "MI", "PCI", "ICH"),
        *("IMD", "ALT", "AST", "ULN", "FEV1", "FVC", "LVEF", "NYHA", "HRT", "SGLT2", "GLP1", "BP", "ECG", "INR"),
        *("GCS", "mRS", "NHS", "GP", "ICU", "ED", "HIV", "RSV", "COVID", "UTI", "DVT", "PE", "AF", "IV"),
    )
}


def humanise(name: str) -> str:
    """``egfr_25_to_59`` -> ``eGFR 25 to 59``: underscores to spaces, known acronyms in their usual case, the
    first letter in capitals."""
    words = [_ACRONYMS.get(w.lower(), w) for w in name.split("_") if w]
    text = " ".join(words)
    if words and words[0] not in _ACRONYMS.values():
        text = text[:1].upper() + text[1:]
    return text


@dataclass(frozen=True)
class Contact:
    """A person to ask about a study (``name`` required; the rest optional)."""

    name: str
    role: str | None = None
    email: str | None = None
    phone: str | None = None


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
    #: plain words for people (the rule file's ``label:``), or ``None``
    label: str | None = None

    @property
    def display(self) -> str:
        """The label, or the name humanised: ``egfr_25_to_59`` -> ``eGFR 25 to 59``."""
        return self.label or humanise(self.name)

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
    #: plain words for patients (the public page)
    lay_summary: str | None = None
    contacts: tuple[Contact, ...] = ()
    protocol_url: str | None = None
    pis_url: str | None = None
    sites: tuple[str, ...] = ()
    #: ``"immediate"`` or ``"digest"`` (default from the shortest window: immediate when it is 24 h or less)
    alert: str = "digest"

    @property
    def shortest_window(self) -> timedelta | None:
        """The shortest window any criterion uses (``None`` when none has one)."""
        spans = [f.window.upper_bound for f in self.features() if f.window is not None]
        return min(spans) if spans else None

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

    def features(self) -> list[Feat]:
        """Every concept-set feature (transform application) the criteria use."""
        out: list[Feat] = []
        for c in self.all_criteria():
            if c.ir is not None:
                out.extend(collect_features(c.ir))
        return out

    def attributes(self) -> set[str]:
        """Every person attribute the criteria read (inside filters too)."""
        out: set[str] = set()
        for c in self.all_criteria():
            if c.ir is not None:
                out |= collect_attributes(c.ir)
        return out

    def used_concepts(self) -> list[ConceptSet]:
        """The concept sets whose facts some criterion reads (both sides of ``after``/``before``)."""
        seen: dict[str, ConceptSet] = {}
        for f in self.features():
            seen.setdefault(f.concept.name, f.concept)
            if f.other is not None:
                seen.setdefault(f.other.concept.name, f.other.concept)
        return list(seen.values())

    def fact_filter(self) -> pl.Expr:
        """True for facts some criterion of this study can use: code in a used concept set, visits when a
        filter reads ``.encounter``, registrations when a criterion reads ``registered_days``."""
        out = pl.lit(False)
        for c in self.used_concepts():
            out = out | c.fact_expr()
        feats = self.features()
        if any("encounter" in filter_fields(s.filter) for f in feats for s in (f.source, f.other) if s and s.filter):
            out = out | (pl.col("kind") == "visit")
        if "registered_days" in self.attributes():
            out = out | (pl.col("kind") == "registration")
        return out

    @property
    def horizon(self) -> timedelta | None:
        """The longest look-back any criterion needs (an upper bound), or ``None`` when one needs all history."""
        feats = self.features()
        if not feats:
            return timedelta(0)
        longest = timedelta(0)
        for f in feats:
            if f.transform == "upcoming":
                continue  # reads only facts from now on
            if f.window is None or f.transform not in LOOKBACK:
                return None
            longest = max(longest, f.window.upper_bound)
        return longest

    def render_markdown(self, *, public: bool = False) -> str:
        """Plain-English Markdown of the study and its criteria; ``public=True`` for patients (no code lists,
        no study id, the lay summary instead of the technical one)."""
        from screener.rules.render import render_markdown

        return render_markdown(self, public=public)
