"""Three-evaluator differential property test of rule language v2: the generated SQL on DuckDB, compiled Polars
screening and the reference evaluator.

Over the random rules and histories of test_property_v2.py (per-fact filters, relations, episodes, exposures,
continuity, trends, upcoming, first occurrence; facts on and next to the window, gap and period edges), and over
the chains of facts exactly a window or gap apart (plus or minus 1 s) of test_property_edges.py, which the broad
test rarely builds. Every outcome and every criterion's value must be identical, and every generated rule must
lower to SQL (a construct that does not is a failure, never a skip). The broad suite is marked ``slow``: CI runs
it, ``just test-unit`` runs the edges suite here and the broad rules against the other two evaluators.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytest.importorskip("duckdb", reason="duckdb is not installed")
pytest.importorskip("sqlglot", reason="sqlglot is not installed")

from screener.errors import RuleError
from screener.rules import loads_study
from screener.rules.reference import reference_screen
from screener.rules.screen import screen_detail
from screener.rules.sql import criterion_names
from screener.sql_duckdb import duckdb_screen
from tests.hypothesis_profiles import examples


def _strategies(name: str) -> Any:
    """A sibling test module's strategies (test modules are not importable as packages under importlib mode)."""
    path = Path(__file__).with_name(f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_strategies_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


V2 = _strategies("test_property_v2")
EDGES = _strategies("test_property_edges")


@pytest.mark.slow  # CI only; the loop runs these rules on the compiled path and the reference (test_property_v2)
@settings(
    max_examples=examples(60),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_v2_sql_equals_compiled_and_reference(data, kit):
    steps = data.draw(
        st.lists(st.sampled_from(V2.WINDOWS + V2.GAPS), min_size=1, max_size=2, unique=True), label="steps"
    )
    ctx = V2.Ctx(steps, data.draw(st.lists(st.sampled_from(V2.ALL_SETS), min_size=1, max_size=2, unique=True)))
    include = data.draw(V2.criteria_maps(ctx), label="include")
    exclude = data.draw(st.one_of(st.none(), V2.criteria_maps(ctx, "x")), label="exclude")
    try:
        study = loads_study(V2.rule_text(include, exclude), "prop2.yaml")
    except RuleError as exc:  # a generated comparison that can never be true is an error by design
        assume("can never be true" not in str(exc))
        raise
    now = kit.NOW + timedelta(minutes=data.draw(st.integers(0, 60 * 24 * 30)))
    persons, facts = data.draw(V2.populations(now, ctx), label="population")
    _check(kit.make_state(persons, facts), study, now)


def _check(state: Any, study: Any, now: Any) -> None:
    sql = {r["patient_id"]: r for r in duckdb_screen(state, [study], now).to_dicts()}
    detail = {r["patient_id"]: r for r in screen_detail(state, study, now).to_dicts()}
    names = criterion_names(study)
    assert len(sql) == state.persons.height
    for ref in reference_screen(state, [study], now):
        pid = ref["patient_id"]
        values = dict(zip(names, sql[pid]["criteria"], strict=True))
        assert sql[pid]["outcome"] == ref["outcome"] == detail[pid]["outcome"], (pid, sql[pid]["outcome"], ref)
        for name, value in ref["results"].items():
            assert values[name] == value == detail[pid][name], (pid, name, values[name], value, detail[pid][name])


@settings(
    max_examples=examples(80),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_edges_sql_equals_compiled_and_reference(data, kit):
    w, g = data.draw(st.sampled_from(EDGES.STEPS), label="window"), data.draw(st.sampled_from(EDGES.STEPS), label="gap")
    text = (
        "study:\n  id: PROP-3\n  title: t\n  sponsor: commercial\n  target: 1\n  opens: 2026-01-01\n"
        "  closes: 2026-12-31\n  team: t\n" + EDGES.CONCEPTS + f"include: {json.dumps(EDGES.criteria(w, g))}\n"
    )
    study = loads_study(text, "edges.yaml")
    now = kit.NOW + timedelta(minutes=data.draw(st.sampled_from([0, 1, 60 * 12, 60 * 24 * 17])))
    persons, facts = data.draw(EDGES.histories(now, w, g), label="history")
    _check(kit.make_state(persons, facts), study, now)
