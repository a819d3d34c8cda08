"""Shared helpers for bench/connectors_*.py: a broker (embedded unless --bootstrap) and fresh topics."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from screener.bus import EmbeddedBroker, ensure_topics


@contextlib.contextmanager
def broker(bootstrap: str | None) -> Iterator[str]:
    """Yield a bootstrap address: the given one, or a fresh embedded tansu broker for the run."""
    if bootstrap:
        yield bootstrap
        return
    with EmbeddedBroker() as b:
        yield b.bootstrap


def fresh_topics(bootstrap: str, partitions: int = 4) -> tuple[str, str]:
    tag = uuid.uuid4().hex[:8]
    events, dlq = f"bench.ehr.events.{tag}", f"bench.ehr.events.dlq.{tag}"
    ensure_topics(bootstrap, {events: partitions, dlq: 1})
    return events, dlq
