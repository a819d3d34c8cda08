"""Study rule files: loading, compiling to Polars, screening, explaining.

Public API (see ``briefs/rules-spec.md`` and the README section "Authoring a rule file")::

    load_studies(paths) -> LoadResult      load_study(path) -> Study
    screen(state, studies, now) -> pl.DataFrame
    screen_with_counts(state, studies, now) -> (pl.DataFrame, pl.DataFrame)
    criteria_json(criteria) -> str
"""

from screener.rules.loader import LoadResult, RuleErrors, load_studies, load_study, loads_study
from screener.rules.model import ConceptSet, Criterion, Study, TestCase
from screener.rules.screen import CRITERIA_DTYPE, criteria_json, screen, screen_with_counts

__all__ = [
    "CRITERIA_DTYPE",
    "ConceptSet",
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
