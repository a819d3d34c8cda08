"""Event-to-match latency at a steady event rate (default 1,000 events/s) with 50 open studies.

    python -m bench.engine_latency [--rate 1000] [--seconds 60] [--studies 50] [--patients 1000000]
                                   [--timeline FILE]

The engine's group first gets a ready state of ``--patients`` synthetic patients (per-partition snapshots at the
committed offsets, as a long-running engine leaves them; 0 for an empty state). A producer process then
publishes the synthetic population at ``--rate`` events/s (kafka-python, CreateTime timestamps), partly to
patients already in state; one engine runs in-process with the default settings and a SQLite worklist.
Latency of a match = wall time when ``record_matches`` returned it as new - the broker timestamp of the newest
event of that patient in the batch (the same quantity as the ``screener_event_to_match_latency_seconds``
histogram, measured exactly here). ``--timeline`` writes every batch's stages (wall and batch-thread CPU time),
the polls, the maintenance calls and garbage collections as JSON lines (:mod:`bench._timeline`), then prints the
batches holding the p99 matches beside what overlapped them.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.engine_common import event_payloads, make_studies, percentile, seed_group_state


class MeasuringStore:
    """Wraps a MatchStore and records the latency of every new match at the moment it is stored."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.latencies: list[float] = []
        self.samples: list[tuple[float, float, int | None]] = []
        self.timeline: Any = None

    def record_matches(self, matches: Any) -> Any:
        new = self.inner.record_matches(matches)
        wall = time.time()
        values = [wall - ts.timestamp() for ts in new["event_time"].drop_nulls().to_list()]
        self.latencies.extend(values)
        batch = getattr(self.timeline.batch, "number", None) if self.timeline is not None else None
        self.samples.extend((wall, v, batch) for v in values)
        return new

    def do_not_contact(self) -> Any:
        return self.inner.do_not_contact()

    def unpublished_matches(self, settled_before: Any = None, limit: int = 10_000) -> Any:
        return self.inner.unpublished_matches(settled_before, limit)

    def mark_published(self, keys: Any) -> None:
        self.inner.mark_published(keys)

    def sync_studies(self, studies: Any) -> None:
        self.inner.sync_studies(studies)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--studies", type=int, default=50)
    ap.add_argument("--batch-ms", type=int, default=200)
    ap.add_argument(
        "--patients",
        type=int,
        default=1_000_000,
        help="patients already in the engine's state when the clock starts (0: an empty state)",
    )
    ap.add_argument("--dump", help="write 'wall_time latency' per match to this file")
    ap.add_argument("--timeline", help="write every batch's stages, polls, maintenance and GC here (JSON lines)")
    ap.add_argument("--log-level", default="WARNING", help="INFO logs every batch's stage timings to stderr")
    args = ap.parse_args()

    from prometheus_client import CollectorRegistry

    from screener.alerts.store import SqlStore
    from screener.bus import EmbeddedBroker, ensure_service_topics
    from screener.engine import Engine
    from screener.logging import configure_logging
    from screener.metrics import Metrics
    from screener.settings import Settings

    configure_logging(args.log_level)
    work = Path(tempfile.mkdtemp(prefix="bench-latency-"))
    rules = make_studies(work / "rules", args.studies)
    n_events = int(args.rate * args.seconds)
    payloads = event_payloads(n_events, datetime.now(UTC), seed=11)
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap,
            rules_dir=rules,
            state_dir=work / "state",
            database_url=f"sqlite:///{work / 'worklist.db'}",
            batch_max_ms=args.batch_ms,
            group_id="bench-lat",
            log_level="WARNING",
        )
        ensure_service_topics(settings)
        if args.patients:
            seed_group_state(settings, args.patients, datetime.now(UTC))
        store = MeasuringStore(SqlStore(settings.database_url))
        registry = CollectorRegistry()
        engine = Engine(settings, store, metrics=Metrics(registry)).start()
        timeline = None
        if args.timeline:
            from bench._timeline import Timeline

            timeline = store.timeline = Timeline()
            timeline.attach(engine)
        stop = threading.Event()
        runner = threading.Thread(target=engine.run, args=(stop,), daemon=True)  # the service's own loop
        # Group join and snapshot restore first, so the clock starts with a ready engine.
        while not engine.caught_up:
            engine.step()
        print(f"engine ready: {engine.state().persons.height:,} patients in state")
        runner.start()
        # The publisher is another process, so it does not compete with the engine for this process's GIL.
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        publisher = ctx.Process(target=_publish, args=(settings, payloads, args.rate))
        t0, cpu0 = time.monotonic(), os.times()
        publisher.start()
        publisher.join()
        sent_s = time.monotonic() - t0
        deadline = time.monotonic() + 30
        while engine.records_processed < len(payloads) and time.monotonic() < deadline:
            time.sleep(0.1)
        stop.set()
        runner.join(timeout=30)
        cpu1 = os.times()
        # this process's own CPU time (the engine's threads; the publisher is another process)
        engine_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
        lat = store.latencies
        if args.dump:
            Path(args.dump).write_text("\n".join(f"{t:.3f} {v:.3f}" for t, v, _ in store.samples))
        if timeline is not None:
            from bench._timeline import summarise

            timeline.detach()
            timeline.write(Path(args.timeline), store.samples)
            print("\n".join(summarise(Path(args.timeline))))
        print(
            f"published {len(payloads)} events in {sent_s:.1f}s ({len(payloads) / sent_s:,.0f}/s); engine "
            f"processed {engine.records_processed} in {engine.batches} batches; {len(lat)} new matches"
        )
        print(
            f"event-to-match latency: p50 {percentile(lat, 50) * 1000:.0f} ms, p90 {percentile(lat, 90) * 1000:.0f}"
            f" ms, p99 {percentile(lat, 99) * 1000:.0f} ms, max {max(lat, default=float('nan')) * 1000:.0f} ms"
        )
        stages = {k: round(v / max(engine.batches, 1) * 1000, 1) for k, v in engine.stage_seconds.items()}
        print(f"mean ms per batch by stage: {stages}")
        print(
            f"engine process CPU while publishing and draining: {engine_cpu:.1f} s "
            f"({1e3 * engine_cpu / max(1, engine.records_processed):.2f} ms/event)"
        )
        store.inner.close()


def _publish(settings: Any, payloads: list[tuple[bytes, bytes]], rate: float) -> None:
    from screener.bus import make_producer

    producer = make_producer(settings, linger_ms=1)
    t0 = time.monotonic()
    for i, (key, value) in enumerate(payloads):
        ahead = i / rate - (time.monotonic() - t0)
        if ahead > 0:
            time.sleep(ahead)
        producer.send(settings.events_topic, key=key, value=value)
    producer.flush()
    producer.close()


if __name__ == "__main__":
    main()
