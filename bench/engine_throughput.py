"""Sustained events/s through the embedded broker into one engine process, with 50 open studies, next to
kafka-python's own consume rate on the same broker and topic.

    python -m bench.engine_throughput [--events 300000] [--studies 50] [--batch 50000] [--partitions 4]
                                      [--sequential] [--profile] [--latency-rate 1000 --latency-seconds 20]
                                      [--compare-lean N]

Publishes the events first (synthetic population), then (1) consumes them raw with kafka-python (assign +
poll, values untouched: the raw ceiling), (2) consumes them again and validates every payload with
``decode_batch`` (the most a validating consumer in one process can do) and (3) runs the engine over the same
topic in a fresh consumer group with a SQLite worklist, with the service's overlapped loop (``--sequential``:
each batch done before the next poll), timing from the first processed batch to the last record (the ~5 s group
join is excluded). It also prints how many cores the engine process and the broker kept busy meanwhile. With
``--latency-rate`` it then runs the engine as a service on a fresh topic with that background rate and sends the
probes of :mod:`bench._streaming` (a sample study's eligible case, its deciding event a second later), printing the
event-to-match latency (p50, p99). ``--compare-lean N`` runs the engine 2N times, alternating the lean decode
(``decode_batch_lean``: no Rust read, the old path) with the default, and times consume + decode_batch_lean too:
old and new side by side in one run, on one broker and topic."""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.engine_common import event_payloads, make_studies


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--studies", type=int, default=50)
    ap.add_argument("--batch", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--profile", action="store_true", help="cProfile the engine phase (implies --sequential)")
    ap.add_argument(
        "--latency-rate",
        type=int,
        default=0,
        help="then measure event-to-match latency at this many events/s (bench._streaming's probes; 0: skip)",
    )
    ap.add_argument("--latency-seconds", type=float, default=20.0)
    ap.add_argument(
        "--compare-lean",
        type=int,
        default=0,
        metavar="N",
        help="run the engine 2N times, alternating the lean decode (no Rust read) and the default one",
    )
    ap.add_argument(
        "--sequential",
        action="store_true",
        help="process each batch before polling the next (the service overlaps them)",
    )
    args = ap.parse_args()

    from kafka import KafkaConsumer, TopicPartition

    from screener.bus import EmbeddedBroker, ensure_service_topics, make_producer
    from screener.ingest import decode_batch, decode_batch_lean
    from screener.logging import configure_logging
    from screener.settings import Settings

    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-engine-"))
    rules = make_studies(work / "rules", args.studies)
    now = datetime.now(UTC)
    t = time.perf_counter()
    payloads = event_payloads(args.events, now)
    print(f"generated {len(payloads)} events in {time.perf_counter() - t:.1f}s")
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        settings = Settings(
            bootstrap_servers=broker.bootstrap,
            topic_partitions=args.partitions,
            rules_dir=rules,
            state_dir=work / "state",
            database_url=f"sqlite:///{work / 'worklist.db'}",
            batch_max_records=args.batch,
            batch_max_ms=1000,
            group_id="bench-engine",
            log_level="WARNING",
        )
        ensure_service_topics(settings)
        producer = make_producer(settings, linger_ms=50, batch_size=1024 * 1024)
        t = time.perf_counter()
        for key, value in payloads:
            producer.send(settings.events_topic, key=key, value=value)
        producer.flush()
        producer.close()
        publish_s = time.perf_counter() - t
        print(f"published {len(payloads)} events in {publish_s:.1f}s ({len(payloads) / publish_s:,.0f}/s)")

        consumer = KafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            enable_auto_commit=False,
            max_poll_records=args.batch,
            fetch_max_bytes=64 * 1024 * 1024,
            max_partition_fetch_bytes=8 * 1024 * 1024,
            receive_message_max_bytes=256 * 1024 * 1024,
        )
        tps = [TopicPartition(settings.events_topic, p) for p in range(args.partitions)]
        consumer.assign(tps)

        def consume(decode: Callable[[list[bytes | None]], object] | None) -> tuple[int, float]:
            """Every record from the beginning, each poll's values passed to ``decode``: (records, seconds)."""
            consumer.seek_to_beginning(*tps)
            n = 0
            t = time.perf_counter()
            while n < len(payloads):
                for recs in consumer.poll(timeout_ms=1000, max_records=args.batch).values():
                    if decode is not None:
                        decode([rec.value for rec in recs])
                    n += len(recs)
            return n, time.perf_counter() - t

        raw_n, raw_s = consume(None)
        print(f"kafka-python raw consume: {raw_n} records in {raw_s:.2f}s = {raw_n / raw_s:,.0f} records/s")
        # The most any engine that validates every event could do here: the same consume plus decode_batch.
        n, decode_s = consume(decode_batch)
        print(f"kafka-python consume + decode_batch: {n} records in {decode_s:.2f}s = {n / decode_s:,.0f} records/s")
        if args.compare_lean:
            n, lean_s = consume(decode_batch_lean)
            print(
                f"kafka-python consume + decode_batch_lean: {n} records in {lean_s:.2f}s = {n / lean_s:,.0f} records/s"
            )
        consumer.close()

        import screener.engine.batch as engine_batch

        paths = ["lean", "rust"] * args.compare_lean if args.compare_lean else ["rust"]
        for run, path in enumerate(paths):
            # --compare-lean: the engine's decode swapped for the lean path (no Rust read) on alternate runs, each
            # run a fresh consumer group, state and worklist over the same topic: old and new side by side.
            engine_batch.decode_batch = decode_batch_lean if path == "lean" else decode_batch  # type: ignore[attr-defined]  # the engine's own import, swapped
            run_settings = settings.model_copy(
                update={
                    "group_id": f"bench-engine-{run}",
                    "state_dir": work / f"state-{run}",
                    "database_url": f"sqlite:///{work / f'worklist-{run}.db'}",
                }
            )
            label = f" [{path} decode, run {run + 1} of {len(paths)}]" if args.compare_lean else ""
            _engine_phase(run_settings, args, len(payloads), raw_n / raw_s, broker.pid, label)
        engine_batch.decode_batch = decode_batch  # type: ignore[attr-defined]  # the engine's own import, restored
        if args.latency_rate:
            from bench._streaming import _latency

            lat = _latency(broker.bootstrap, work, rules, args.latency_rate, args.latency_seconds)
            print(
                f"latency at {lat['rate']} events/s for {lat['duration']:.0f}s ({args.studies} studies): "
                f"{lat['matched']} of {lat['probes']} probes matched; p50 {lat['p50'] * 1000:.0f} ms, "
                f"p99 {lat['p99'] * 1000:.0f} ms, max {lat['max'] * 1000:.0f} ms"
            )


def _engine_phase(
    settings: Any, args: argparse.Namespace, total: int, raw_rate: float, broker_pid: int | None, label: str
) -> None:
    """Run the engine over the topic (fresh group) and print its rate, its share of ``raw_rate`` and its CPU."""
    from prometheus_client import CollectorRegistry

    from screener.alerts.store import SqlStore
    from screener.engine import Engine
    from screener.metrics import Metrics

    store = SqlStore(settings.database_url)
    engine = Engine(settings, store, metrics=Metrics(CollectorRegistry())).start()
    while engine.records_processed == 0:
        engine.step(overlap=True)
    first = engine.records_processed
    t = time.perf_counter()
    cpu0, broker0 = os.times(), _cpu_seconds(broker_pid)
    profiler = None
    if args.profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    overlap = not (args.sequential or args.profile)
    while engine.records_processed < total:
        engine.step(overlap=overlap)
    if profiler is not None:
        import pstats

        profiler.disable()
        pstats.Stats(profiler).sort_stats("cumtime").print_stats(25)
    eng_s = time.perf_counter() - t
    cpu1, broker1 = os.times(), _cpu_seconds(broker_pid)
    engine_cpu = (cpu1.user - cpu0.user) + (cpu1.system - cpu0.system)
    done = engine.records_processed - first
    stages = {k: round(v, 2) for k, v in engine.stage_seconds.items()}
    print(
        f"engine{label} ({args.studies} open studies, batch {args.batch}): {done} events in {eng_s:.2f}s = "
        f"{done / eng_s:,.0f} events/s; batches {engine.batches}; matches {engine.matches_recorded}; "
        f"stage seconds {stages}"
    )
    # On a shared host the wall clock varies with the neighbours' load: the share of the raw consume rate (both
    # measured in this run) and the engine process's CPU seconds per event vary less.
    print(
        f"engine share of raw consume: {done / eng_s / raw_rate:.1%}; engine process CPU {engine_cpu:.2f} s "
        f"({1e6 * engine_cpu / max(1, done):.1f} us/event); load average {os.getloadavg()[0]:.1f}"
    )
    print(
        f"cores busy meanwhile: engine process {engine_cpu / eng_s:.2f}, "
        f"broker {(broker1 - broker0) / eng_s:.2f} "
        f"(of {os.cpu_count()})"
    )
    engine.close()
    store.close()


def _cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process so far (Linux /proc), 0 when unknown."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


if __name__ == "__main__":
    main()
