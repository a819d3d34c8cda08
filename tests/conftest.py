"""Shared fixtures. Integration fixtures start real processes once per session."""

from __future__ import annotations

import gc
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pytest

# Registers the hypothesis profiles (`ci` when CI is set, `dev` for `just test-unit`) before any test module is
# imported, so the suites' `examples(n)` counts see the profile in force. See tests/hypothesis_profiles.py.
import tests.hypothesis_profiles  # noqa: F401  (imported for its side effect)

if TYPE_CHECKING:  # imported where used: xdist's controller loads this file too, and runs no test
    from screener.events import Event


#: The garbage collector's first threshold during the tests: ten times Python's 700 allocations. The tests make
#: many short-lived objects (parsed SQL trees, hypothesis' examples, Polars expressions); at 700 the collector
#: ran 2,000-3,200 times in each of the two workers of `just test-unit`, 13-27 of them full collections.
GC_THRESHOLD = 7_000


def pytest_collection_finish(session: pytest.Session) -> None:
    """Moves every object alive after collection (the imported libraries, the test modules and their parameters)
    to the garbage collector's permanent generation, so a full collection no longer walks them, and collects
    less often (:data:`GC_THRESHOLD`): the collector's time during the tests fell from 4.8 to 2.3 CPU-s over the
    two workers (one measurement, on a busy host). Unreachable objects made by the tests are still collected;
    only the moment changes."""
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, *gc.get_threshold()[1:])


@pytest.fixture(scope="session", autouse=True)
def cheap_password_hashing() -> Iterator[Any]:
    """Passwords are hashed with argon2id at argon2-cffi's ``CHEAPEST`` parameters (its profile "for tests")
    instead of the production cost (about 0.25 CPU-second a hash or a check; a seeded web test adds four users and
    logs in). The algorithm, the hash format and every check stay real. Yields the production hasher, whose
    parameters a test checks (tests/unit/alerts/test_store.py)."""
    from argon2 import PasswordHasher, profiles

    from screener.alerts import auth

    cheap = PasswordHasher.from_parameters(profiles.CHEAPEST)
    production = auth._hasher
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(auth, "_hasher", cheap)
        dummy = cheap.hash("not-a-real-password")
        mp.setattr(auth, "_dummy_hash", lambda: dummy)
        yield production


@pytest.fixture(autouse=True)
def restore_structlog() -> Iterator[None]:
    """Puts structlog's configuration back after each test. ``configure_logging()`` (a test of it, or a command run
    through click's runner) binds the ``sys.stderr`` of that moment, a capture stream that closes when the test
    ends; a later test that logs would then write to a closed file, depending on which tests ran before it in the
    same process (with pytest-xdist, on which worker)."""
    import structlog

    before = structlog.get_config()
    yield
    structlog.configure(**before)


@pytest.fixture
def make_event() -> Any:
    """Factory: a valid canonical event with defaults; keyword arguments override fields."""

    from screener.events import parse_event

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
