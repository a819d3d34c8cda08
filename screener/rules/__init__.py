"""Study rule files: loading, type-checking to an IR, lowering to Polars, screening, explaining.

One module per step: ``loader`` (+ ``_metadata``, ``_concepts``, ``_criteria``, ``_cases``: the YAML blocks),
``typecheck`` (pyjexl AST -> ``ir``), ``lower`` and ``criteria`` (IR -> Polars, at load), ``features`` (+
``_facts``, ``_aggregate``: facts -> per-patient statistics), ``results`` (result rows), ``screen`` (the entry
points), ``reference`` (the independent per-patient evaluator), ``render`` (plain English).

Public API (see the README section "Authoring a rule file" and ``docs/rules.md``)::

    load_studies(paths) -> LoadResult      load_study(path) -> Study
    screen(state, studies, now) -> pl.DataFrame
    screen_with_counts(state, studies, now) -> (pl.DataFrame, pl.DataFrame)
    criteria_json(criteria) -> str
"""

from screener.rules.loader import LoadResult, RuleErrors, load_studies, load_study, loads_study
from screener.rules.model import ConceptSet, Contact, Criterion, Study, TestCase
from screener.rules.screen import CRITERIA_DTYPE, criteria_json, screen, screen_with_counts

__all__ = [
    "CRITERIA_DTYPE",
    "ConceptSet",
    "Contact",
    "Criterion",
    "LoadResult",
    "RuleErrors",
    "Study",
    "TestCase",
    "criteria_json",
    "load_studies",
    "load_study",
    "loads_study",
    "screen",
    "screen_with_counts",
]
