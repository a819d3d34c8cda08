"""The engine's batch thread alone (no broker): per-event cost of the state update and of the re-screen.

    python -m bench.batch_profile [--events 60000] [--studies 50] [--batch 10000] [--warm 0.5] [--profile]

Runs the real :class:`screener.engine.Engine` over an in-memory log (:mod:`screener.testing`) with ``--studies``
open studies (the samples replicated by :func:`bench._workload.replicate_studies`: distinct thresholds, shared
concept sets), a memory worklist and a clock fixed at :data:`bench._workload.BENCH_NOW`, batch after batch with
no overlap, and prints the engine's own stage seconds per event (``apply``: the state update; ``screen``: the
re-screen of the touched patients and the match writes) and the process's CPU time per event (all threads; on a
shared host it varies less than the wall clock). ``--warm`` is the share of each patient's events
(its earliest) applied before the clock starts, so the measured batches touch patients already in the state, as
a long-running engine sees them; 0 measures a cold start (every patient new). ``--profile`` prints a cProfile of
the measured batches.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.engine_common import event_payloads


def _split_warm(payloads: list[tuple[bytes, bytes]], warm: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Each patient's earliest ``warm`` share of events first, then everyone's remaining events shuffled."""
    by_patient: dict[bytes, list[tuple[bytes, bytes]]] = {}
    for kv in payloads:
        by_patient.setdefault(kv[0], []).append(kv)
    first: list[tuple[bytes, bytes]] = []
    rest: list[tuple[bytes, bytes]] = []
    for evs in by_patient.values():
        k = int(len(evs) * warm)
        first.extend(evs[:k])
        rest.extend(evs[k:])
    random.Random(seed).shuffle(rest)
    return first, rest


def run(events: int, studies: int, batch: int, warm: float, profile: bool) -> dict[str, Any]:
    from prometheus_client import CollectorRegistry

    from bench._workload import BENCH_NOW, replicate_studies
    from screener.alerts.memory import MemoryStore
    from screener.clock import FixedClock
    from screener.engine import Engine
    from screener.metrics import Metrics
    from screener.settings import Settings
    from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    root = Path(__file__).resolve().parent.parent
    replicate_studies(root / "rules", studies, work / "rules")
    settings = Settings(
        rules_dir=work / "rules",
        state_dir=work / "state",
        batch_max_records=batch,
        batch_max_ms=5,
        rescreen_interval_s=10**9,
        rules_poll_s=10**9,
        snapshot_interval_s=10**9,
        events_topic="ev",
        matches_topic="m",
        log_level="WARNING",
    )
    payloads = event_payloads(events, BENCH_NOW)
    first, rest = _split_warm(payloads, warm, seed=3)
    log = InMemoryLog(partitions=4)
    engine = Engine(
        settings,
        MemoryStore(),
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(BENCH_NOW),
        consumer=InMemoryConsumer(log),
        producer=InMemoryProducer(log),
    ).start()
    open_studies = sum(1 for s in engine.studies.values() if s.is_open(BENCH_NOW))
    for key, value in first:
        log.append("ev", key, value)
    while engine.records_processed < len(first):
        engine.step(overlap=False)
    for k in engine.stage_seconds:
        engine.stage_seconds[k] = 0.0
    done0, matches0 = engine.records_processed, engine.matches_recorded
    for key, value in rest:
        log.append("ev", key, value)
    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        execute = engine._execute

        def profiled(b: Any) -> None:
            # the batch runs on the engine's batch thread: profile it there
            assert profiler is not None
            profiler.runcall(execute, b)

        engine._execute = profiled  # type: ignore[method-assign,assignment]  # no public hook: wraps a batch
    t0, c0 = time.perf_counter(), time.process_time()
    while engine.records_processed < len(first) + len(rest):
        engine.step(overlap=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if profiler is not None:
        import pstats

        pstats.Stats(profiler).sort_stats("cumtime").print_stats(40)
    n = engine.records_processed - done0
    out = {
        "events": n,
        "studies": open_studies,
        "seconds": round(seconds, 3),
        "events_per_s": round(n / seconds),
        # the process's CPU time (every thread): steadier than the wall clock on a shared host
        "cpu_seconds": round(cpu, 3),
        "cpu_us_per_event": round(1e6 * cpu / max(1, n), 1),
        "us_per_event": {k: round(1e6 * v / max(1, n), 2) for k, v in engine.stage_seconds.items()},
        "matches": engine.matches_recorded - matches0,
        "screens": engine.metrics.screens.labels("event")._value.get(),
    }
    engine.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=60_000)
    ap.add_argument("--studies", type=int, default=50)
    ap.add_argument("--batch", type=int, default=10_000)
    ap.add_argument("--warm", type=float, default=0.5, help="share of each patient's events applied first")
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args()
    from screener.logging import configure_logging

    configure_logging("WARNING")
    print(json.dumps(run(args.events, args.studies, args.batch, args.warm, args.profile)))


if __name__ == "__main__":
    main()
