"""The real :class:`~screener.engine.Engine` on the in-memory log of :mod:`screener.testing`, as the engine's unit
tests build it: fresh metrics on their own registry, a fixed clock, the in-memory consumer and producer."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import polars as pl
from prometheus_client import CollectorRegistry

from screener.alerts.memory import MemoryStore
from screener.clock import FixedClock
from screener.engine import Engine
from screener.metrics import Metrics
from screener.settings import Settings
from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer

__all__ = ["NOW", "RecordingStore", "started_engine", "still_settings"]

#: The clock's instant unless a test gives its own clock.
NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)


def still_settings(rules_dir: Any, state_dir: Any, **overrides: Any) -> Settings:
    """Settings whose timers never fire in a test (re-screen, rules poll, snapshots), on the topics ev/m/dlq."""
    values: dict[str, Any] = {
        "rules_dir": rules_dir,
        "state_dir": state_dir,
        "rescreen_interval_s": 10**9,
        "rules_poll_s": 10**9,
        "snapshot_interval_s": 10**9,
        "events_topic": "ev",
        "matches_topic": "m",
        "dlq_topic": "dlq",
    }
    return Settings(**{**values, **overrides})


class RecordingStore(MemoryStore):
    """A memory store that also keeps every frame the engine sends it, in order (``sent``)."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[pl.DataFrame] = []

    def record_matches(self, matches: pl.DataFrame) -> pl.DataFrame:
        self.sent.append(matches)
        return super().record_matches(matches)


def started_engine(
    settings: Settings,
    log: InMemoryLog,
    store: MemoryStore | None = None,
    *,
    mini: dict[str, Any] | None = None,
    clock: Any = None,
    producer: Any = None,
    **options: Any,
) -> Engine:
    """An engine reading and writing ``log``, started. ``store``: a new :class:`MemoryStore` when not given;
    ``mini``: the engine conftest's ``mini`` fixture (its rule loader and screen function instead of the real
    ones); ``clock``: ``FixedClock(NOW)`` when not given; ``producer``: ``InMemoryProducer(log)`` when not given;
    ``options`` go to :class:`Engine` as they are (``history=...``)."""
    if mini is not None:
        options = {"loader": mini["loader"], "screen": mini["screen"], **options}
    return Engine(
        settings,
        MemoryStore() if store is None else store,
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(NOW) if clock is None else clock,
        consumer=InMemoryConsumer(log),
        producer=InMemoryProducer(log) if producer is None else producer,
        **options,
    ).start()
