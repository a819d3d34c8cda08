"""The shared vocabulary agrees with the models and frames that use it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from screener import events, state, vocab
from screener.events import parse_event
from screener.state import events_to_frames


def test_the_event_module_re_exports_the_same_objects() -> None:
    for name in ("KINDS", "FACT_KINDS", "CODE_SYSTEMS", "STATUSES", "SETTINGS", "ROUTES", "SEXES", "ETHNIC_GROUPS"):
        assert getattr(events, name) is getattr(vocab, name), name
    assert state.TS == vocab.TS and state.FACT_KINDS is vocab.FACT_KINDS


def test_subsets_hold() -> None:
    assert set(vocab.FACT_KINDS) < set(vocab.KINDS)
    assert set(vocab.KINDS) - set(vocab.FACT_KINDS) == {"person", "consent", "death"}
    assert set(vocab.MATCH_OUTCOMES) < set(vocab.OUTCOMES)
    assert set(vocab.NOT_DONE_STATUSES) < set(vocab.STATUSES)
    assert vocab.SCHEMAS == (vocab.SCHEMA_V1, vocab.SCHEMA_V2)


@pytest.mark.parametrize("kind", vocab.KINDS)
def test_exactly_the_fact_kinds_become_fact_rows(kind: str) -> None:
    doc = {"event_id": "e", "source": "t", "kind": kind, "patient_id": "P", "occurred_at": "2026-01-01T00:00:00Z"}
    doc |= {"person": {"sex": "F"}} if kind == "person" else {"code": {"system": "SNOMED", "value": "1"}}
    _, facts, _ = events_to_frames([parse_event(doc)])
    assert (facts.height == 1) == (kind in vocab.FACT_KINDS)


def test_the_worklist_stages_hold_together() -> None:
    stages = set(vocab.STAGES)
    assert set(vocab.ACTIVE_STAGES) | set(vocab.CLOSED_STAGES) == stages
    assert not set(vocab.ACTIVE_STAGES) & set(vocab.CLOSED_STAGES)
    assert set(vocab.DISMISSED_STAGES) < set(vocab.CLOSED_STAGES)
    assert set(vocab.KEPT_VISIBLE_STAGES) < set(vocab.ACTIVE_STAGES)
    assert vocab.STAGES[0] == vocab.NEW_STAGE and vocab.NEW_STAGE in vocab.ACTIVE_STAGES
    # every action but snoozing moves a match to the stage of the same name; the funnel is made of stages
    assert set(vocab.ACTIONS) - {"snoozed"} == stages - {vocab.NEW_STAGE}
    assert set(vocab.FUNNEL_STAGES) - {"matched"} < stages
    assert (vocab.ELIGIBLE, vocab.POSSIBLE) == vocab.MATCH_OUTCOMES
    assert (*vocab.MATCH_OUTCOMES, vocab.INELIGIBLE) == vocab.OUTCOMES


def test_every_stage_action_and_outcome_has_its_label_and_rank() -> None:
    from screener.report import _STAGE_RANK
    from screener.web.deps import STAGE_LABELS
    from screener.web.match import ACTION_LABELS, SIMPLE_ACTIONS
    from screener.web.pages import OUTCOME_LABELS

    assert set(STAGE_LABELS) == set(_STAGE_RANK) == set(vocab.STAGES)
    assert set(ACTION_LABELS) == set(vocab.ACTIONS)
    assert set(OUTCOME_LABELS) == set(vocab.MATCH_OUTCOMES)
    assert SIMPLE_ACTIONS == ("reviewed", "approached", "consented", "enrolled")
    assert max(_STAGE_RANK.values()) == len(vocab.FUNNEL_STAGES) - 1


def _spelled_tuples(root: Path) -> list[str]:
    """Every tuple, list or set literal of two or more strings, in the ``.py`` files under ``root``, whose strings are
    exactly those of a vocabulary tuple (in any order), as ``path:line: NAME``."""
    known = {
        frozenset(value): name
        for name in vocab.__all__
        if isinstance(value := getattr(vocab, name), tuple) and len(value) >= 2
    }
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root.parent).as_posix()
        if rel == "screener/vocab.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(), filename=rel)):
            if not isinstance(node, ast.Tuple | ast.List | ast.Set) or len(node.elts) < 2:
                continue
            strings = [e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            name = known.get(frozenset(strings)) if len(strings) == len(node.elts) else None
            if name:
                found.append(f"{rel}:{node.lineno}: {name}")
    return found


def test_the_packages_import_the_vocabulary_instead_of_spelling_it_again() -> None:
    import connectors

    for package in (Path(vocab.__file__).parent, Path(connectors.__file__).parent):
        assert _spelled_tuples(package) == [], package.name


def test_a_spelled_again_vocabulary_tuple_is_found(tmp_path: Path) -> None:
    pkg = tmp_path / "screener"
    (pkg / "web").mkdir(parents=True)
    (pkg / "vocab.py").write_text('OUTCOMES = ("eligible", "possible", "ineligible")\n')
    (pkg / "web" / "page.py").write_text(
        'X = ("possible",\n     "eligible")\nY = ["hospital", "community", "primary-care", "home"]\nZ = ("a", "b")\n'
    )
    assert _spelled_tuples(pkg) == ["screener/web/page.py:1: MATCH_OUTCOMES", "screener/web/page.py:3: SETTINGS"]
