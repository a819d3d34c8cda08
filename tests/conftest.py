"""Shared fixtures. Integration fixtures start real processes once per session."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import settings as hypothesis_settings

from screener.events import Event, parse_event

# CI runs property and fuzz tests derandomized, so a landing never depends on luck; local runs keep exploring new
# examples (and keep the failures they find in .hypothesis/), which is where new bugs are found.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")


@pytest.fixture
def make_event() -> Any:
    """Factory: a valid canonical event with defaults; keyword arguments override fields."""

    def _make(**fields: Any) -> Event:
        base: dict[str, Any] = {
            "event_id": uuid.uuid4().hex,
            "source": "test",
            "kind": "condition",
            "patient_id": "P1",
            "occurred_at": datetime(2026, 1, 1, tzinfo=UTC).isoformat(),
        }
        base.update(fields)
        if base["kind"] == "condition" and "code" not in base:
            base["code"] = {"system": "ICD10", "value": "E11.9"}
        return parse_event(base)

    return _make


@pytest.fixture(scope="session")
def broker() -> Iterator[Any]:
    """One embedded Kafka-compatible broker (tansu) for the whole session. Tests use unique topics/groups."""
    from screener.bus import EmbeddedBroker

    with EmbeddedBroker() as b:
        yield b


@pytest.fixture
def unique_name() -> Any:
    """Factory for unique topic and consumer-group names, so tests sharing the broker never collide."""

    def _make(prefix: str = "t") -> str:
        return f"{prefix}-{uuid.uuid4().hex[:10]}"

    return _make
