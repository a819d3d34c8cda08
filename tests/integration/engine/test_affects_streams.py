"""The engine that screens only the affected studies records the same matches as the one that screens every
study, over random streams (the exhaustive side of tests/unit/engine/test_affects.py, which runs one fixed
stream: two whole engines per example make this search too slow for the unit loop)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.hypothesis_profiles import examples
from tests.unit.engine.test_affects import NOW, ROOT, _loader, check_affected_only_records_the_same_matches

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def studies() -> list[Any]:
    return [s for s in _loader([ROOT / "rules"]).studies if s.is_open(NOW)]


@settings(max_examples=examples(8), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32))
def test_screening_only_affected_studies_records_the_same_matches(
    seed: int, studies: list[Any], tmp_path_factory: Any
) -> None:
    check_affected_only_records_the_same_matches(seed, studies, tmp_path_factory.mktemp("affects"))
