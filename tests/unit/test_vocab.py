"""The shared vocabulary agrees with the models and frames that use it."""

from __future__ import annotations

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
