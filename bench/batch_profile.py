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

    python -m bench.batch_profile --capture DIR [--capture-calls 20] [...]
    python -m bench.batch_profile --replay DIR [--studies 50] [--rounds 3] [--results FILE]

``--capture`` also writes the inputs of the first ``--capture-calls`` screens of the measured batches (each
``screen()`` call's persons, facts and known pairs as Parquet, its ``now`` and options as JSON) to ``DIR``;
``--replay`` screens them again and again (the same studies: give the same ``--studies``), ``--rounds`` times
after one warm-up call each, and prints the median and mean CPU time (every thread) and wall time per call: the
re-screen of engine-shaped batches alone, steadier than a whole run on a shared host, to compare two trees side
by side. ``--results FILE`` writes every call's result rows (``criteria`` as JSON text, sorted) to a Parquet
file, so two trees' outputs can be compared.
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


def _capturing(directory: Path, calls: int) -> Any:
    """Wrap ``screener.rules.screen`` (the engine's screens look it up on each call) to write the inputs of the
    next ``calls`` calls to ``directory``; returns a function that restores it."""
    import screener.rules as rules

    inner = rules.screen
    directory.mkdir(parents=True, exist_ok=True)
    done = [0]

    def screen(state: Any, studies: Any, now: Any, **kw: Any) -> Any:
        i = done[0]
        if i < calls:
            done[0] += 1
            state.persons.write_parquet(directory / f"persons{i}.parquet")
            state.facts.write_parquet(directory / f"facts{i}.parquet")
            known = kw.get("known")
            if known is not None:
                known.write_parquet(directory / f"known{i}.parquet")
            opts = {k: v for k, v in kw.items() if k != "known"}
            (directory / f"call{i}.json").write_text(json.dumps({"now": now.isoformat(), "options": opts}))
        return inner(state, studies, now, **kw)

    rules.screen = screen  # no public hook: wraps the engine's screens

    def restore() -> None:
        rules.screen = inner

    return restore


def replay(directory: Path, studies: int, rounds: int, results: Path | None) -> dict[str, Any]:
    """Screen the calls :func:`_capturing` wrote, ``rounds`` times each after a warm-up; see the module docstring."""
    import statistics
    from datetime import datetime

    import polars as pl

    from bench._workload import replicate_studies
    from screener.rules import load_studies, screen
    from screener.state import PatientState

    work = Path(tempfile.mkdtemp(prefix="bench-batch-replay-"))
    replicate_studies(Path(__file__).resolve().parent.parent / "rules", studies, work / "rules")
    loaded = load_studies([work / "rules"]).studies
    calls = []
    for meta in sorted(directory.glob("call*.json"), key=lambda p: int(p.stem[4:])):
        i, doc = meta.stem[4:], json.loads(meta.read_text())
        now = datetime.fromisoformat(doc["now"])
        state = PatientState(
            persons=pl.read_parquet(directory / f"persons{i}.parquet"),
            facts=pl.read_parquet(directory / f"facts{i}.parquet"),
        )
        kw = dict(doc["options"])
        if (directory / f"known{i}.parquet").exists():
            kw["known"] = pl.read_parquet(directory / f"known{i}.parquet")
        calls.append((state, [s for s in loaded if s.is_open(now)], now, kw))
    outs = [screen(state, open_, now, **kw) for state, open_, now, kw in calls]  # the warm-up
    walls: list[float] = []
    cpus: list[float] = []
    for _ in range(rounds):
        for state, open_, now, kw in calls:
            t0, c0 = time.perf_counter(), time.process_time()
            screen(state, open_, now, **kw)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
    if results is not None:
        text = pl.concat_str(
            pl.lit("["), pl.col("criteria").list.eval(pl.element().struct.json_encode()).list.join(","), pl.lit("]")
        )
        rows = [o.with_columns(text.alias("criteria"), pl.lit(i).alias("call")) for i, o in enumerate(outs)]
        pl.concat(rows).sort("call", "study_id", "patient_id").write_parquet(results)
    return {
        "calls": len(calls),
        "patients_mean": round(sum(c[0].persons.height for c in calls) / max(1, len(calls)), 1),
        "rows": sum(o.height for o in outs),
        "cpu_ms_median": round(1e3 * statistics.median(cpus), 1),
        "cpu_ms_mean": round(1e3 * statistics.mean(cpus), 1),
        "wall_ms_median": round(1e3 * statistics.median(walls), 1),
    }


def run(
    events: int,
    studies: int,
    batch: int,
    warm: float,
    profile: bool,
    capture: Path | None = None,
    capture_calls: int = 20,
) -> dict[str, Any]:
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
    restore = _capturing(capture, capture_calls) if capture is not None else None
    t0, c0 = time.perf_counter(), time.process_time()
    while engine.records_processed < len(first) + len(rest):
        engine.step(overlap=False)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    if restore is not None:
        restore()
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
    ap.add_argument("--capture", type=Path, help="write the measured batches' screen inputs here")
    ap.add_argument("--capture-calls", type=int, default=20)
    ap.add_argument("--replay", type=Path, help="time screen() on the inputs --capture wrote (nothing else)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--results", type=Path, help="--replay: write the result rows here (Parquet)")
    args = ap.parse_args()
    from screener.logging import configure_logging

    configure_logging("WARNING")
    if args.replay is not None:
        print(json.dumps(replay(args.replay, args.studies, args.rounds, args.results)))
        return
    out = run(args.events, args.studies, args.batch, args.warm, args.profile, args.capture, args.capture_calls)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
