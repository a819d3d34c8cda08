"""The ``synthetic`` connector: a seeded West Yorkshire-like population (see :mod:`.population`) as a feed.

``screener connect synthetic --patients N --rate R --seed S --format canonical|hl7v2|fhir [--target ...]``

- ``canonical``: the population's canonical events are published to Kafka (``ehr.events``), R patients a
  second (``--rate 0``: as fast as the broker takes them).
- ``hl7v2``: each patient is rendered to HL7 v2 messages (``population.to_hl7v2``); with
  ``--target HOST:PORT`` they are sent over MLLP to a running ``screener connect hl7v2`` (each ACK awaited),
  otherwise they are written to stdout (one message per line, segments separated by ``\\r``).
- ``fhir``: each patient is rendered to a FHIR Bundle (``population.to_fhir``); with ``--target URL`` it is
  POSTed to a running ``screener connect fhir``, otherwise written to stdout as NDJSON (one Bundle a line).

The same ``--seed`` (and ``--now``) always gives the same patients.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import click

from connectors.hl7v2.mllp import MLLPClient
from screener.connector import SimpleConnector, SinkFactory
from screener.errors import ConnectorError
from screener.events import Event

__all__ = ["RateLimiter", "connector", "patients", "render"]

FORMATS = ("canonical", "hl7v2", "fhir")


class RateLimiter:
    """Paces a loop at ``rate`` ticks a second (0 = unpaced). ``clock``/``sleep`` are injectable for tests."""

    def __init__(self, rate: float, clock: Any = time.monotonic, sleep: Any = time.sleep) -> None:
        self.rate = rate
        self.clock = clock
        self.sleep = sleep
        self.start = clock()
        self.count = 0

    def tick(self) -> None:
        self.count += 1
        if self.rate <= 0:
            return
        due = self.start + self.count / self.rate
        delay = due - self.clock()
        if delay > 0:
            self.sleep(delay)


def patients(n: int, seed: int, now: datetime | None = None, start_index: int = 0) -> Iterator[list[Event]]:
    """Each synthetic patient's canonical events (person first), from H2's population generator."""
    from . import population

    return population.generate(n, seed=seed, now=now, start_index=start_index)


def render(events: list[Event], fmt: str) -> list[str] | dict[str, Any] | list[Event]:
    """One patient's events in ``fmt``: canonical events, HL7 v2 messages, or a FHIR Bundle.

    :raises ConnectorError: when the population module has no renderer for ``fmt``.
    """
    if fmt == "canonical":
        return events
    if fmt == "hl7v2":
        return render_hl7v2(events)
    if fmt == "fhir":
        return render_fhir(events)
    raise ConnectorError(f"no renderer for the format {fmt!r} (one of {', '.join(FORMATS)})", connector="synthetic")


def render_hl7v2(events: list[Event]) -> list[str]:
    """One patient's events as HL7 v2.5 messages (ADT first, then results)."""
    from . import population

    return population.to_hl7v2(events)


def render_fhir(events: list[Event]) -> dict[str, Any]:
    """One patient's events as a FHIR R4 transaction Bundle."""
    from . import population

    return population.to_fhir(events)


def _command() -> click.Command:
    from screener.connector import connector_options

    @click.command("synthetic")
    @click.option("--patients", "n", default=1000, show_default=True, help="How many patients.")
    @click.option("--rate", default=0.0, show_default=True, help="Patients per second (0 = as fast as possible).")
    @click.option("--seed", default=0, show_default=True, help="Random seed (same seed, same patients).")
    @click.option("--format", "fmt", type=click.Choice(FORMATS), default="canonical", show_default=True)
    @click.option("--now", default=None, help="Reference time (ISO 8601) for reproducible timestamps.")
    @click.option(
        "--target", default=None, help="hl7v2: HOST:PORT of an MLLP listener; fhir: base URL of a FHIR endpoint."
    )
    @connector_options
    def synthetic(
        n: int, rate: float, seed: int, fmt: str, now: str | None, target: str | None, sink_factory: SinkFactory
    ) -> None:
        """Emit a seeded synthetic population as canonical events, HL7 v2 or FHIR, at a fixed rate."""
        ref = datetime.fromisoformat(now.replace("Z", "+00:00")) if now else None
        if ref is not None and ref.tzinfo is None:
            ref = ref.replace(tzinfo=UTC)
        pacer = RateLimiter(rate)
        sink = sink_factory("synthetic") if fmt == "canonical" else None
        client = MLLPClient.connect(target) if fmt == "hl7v2" and target else None
        http = None
        if fmt == "fhir" and target:
            import httpx

            http = httpx.Client(base_url=target, timeout=60)
        sent = rejected = 0
        try:
            for events in patients(n, seed, ref):
                if sink is not None:
                    sink.publish(events)
                    sent += len(events)
                elif fmt == "hl7v2":
                    for message in render_hl7v2(events):
                        if client is not None:
                            ack = client.send(message)
                            rejected += "MSA|AA" not in ack
                        else:
                            sys.stdout.write(message.replace("\r", "\\r") + "\n")
                        sent += 1
                else:
                    bundle = render_fhir(events)
                    if http is not None:
                        resp = http.post("/", json=bundle, headers={"content-type": "application/fhir+json"})
                        rejected += resp.status_code >= 300
                    else:
                        sys.stdout.write(json.dumps(bundle) + "\n")
                    sent += 1
                pacer.tick()
        finally:
            if sink is not None and hasattr(sink, "close"):
                sink.close()
            if client is not None:
                client.close()
            if http is not None:
                http.close()
        click.echo(f"synthetic: {pacer.count} patients, {sent} {fmt} records sent, {rejected} rejected", err=True)

    return synthetic


connector = SimpleConnector(
    "synthetic", "Seeded synthetic West Yorkshire-like population (canonical/HL7/FHIR)", _command, feed=patients
)
