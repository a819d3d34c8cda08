"""Resident memory with 1M patients' state, and restart-to-steady-state time.

    python -m bench.engine_memory [--patients 1000000] [--studies 50] [--partitions 4]

Prepares, in this process: the synthetic population's state frames for ``--patients`` patients (vectorised,
the same patients ``generate`` would stream), pruned to the facts the 50 open studies can use, split by the
Kafka default partitioner (murmur2 of the patient id) into per-partition snapshots whose offsets equal the
consumer group's committed offsets; then 2,000 new events are published. It then starts a *fresh process*
running one engine on that group and reports, from process start: time until every partition is restored and
the new events are screened (steady state), and the process's resident memory (VmRSS, VmHWM).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path


def _rss() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(("VmRSS", "VmHWM")):
            key, value = line.split(":", 1)
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def restart(config: str) -> None:
    """The measured process: start an engine and run until steady state; print one JSON line."""
    t0 = time.monotonic()
    cfg = json.loads(config)
    from prometheus_client import CollectorRegistry

    from screener.alerts.memory import MemoryStore
    from screener.engine import Engine
    from screener.logging import configure_logging
    from screener.metrics import Metrics
    from screener.settings import Settings

    configure_logging("WARNING")
    settings = Settings(**cfg["settings"])
    base = _rss()
    engine = Engine(settings, MemoryStore(), metrics=Metrics(CollectorRegistry())).start()
    while not (engine.caught_up and engine.records_processed >= cfg["new_events"]):
        engine.step(overlap=True)
    steady = time.monotonic() - t0
    rss = _rss()
    state = engine.state()
    print(
        json.dumps(
            {
                "steady_s": round(steady, 2),
                "patients": state.persons.height,
                "facts": state.facts.height,
                "rss_before_mb": base,
                "rss_mb": rss,
                "state_estimated_mb": round((state.persons.estimated_size() + state.facts.estimated_size()) / 2**20, 1),
            }
        )
    )
    engine.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=1_000_000)
    ap.add_argument("--studies", type=int, default=50)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--restart", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.restart:
        restart(args.restart)
        return

    from bench.engine_common import event_payloads, make_studies, seed_group_state
    from screener.bus import EmbeddedBroker, ensure_service_topics, make_producer
    from screener.logging import configure_logging
    from screener.settings import Settings

    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    rules = make_studies(work / "rules", args.studies)
    now = datetime.now(UTC)
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        cfg = {
            "bootstrap_servers": broker.bootstrap,
            "topic_partitions": args.partitions,
            "rules_dir": str(rules),
            "state_dir": str(work / "state"),
            "group_id": "bench-memory",
            "log_level": "WARNING",
            "batch_max_records": 5000,
        }
        settings = Settings(**cfg)
        ensure_service_topics(settings)
        seed_group_state(settings, args.patients, now)
        producer = make_producer(settings)
        new = event_payloads(2000, now, seed=7, start_index=6_000_000)
        for key, value in new:
            producer.send(settings.events_topic, key=key, value=value)
        producer.flush()
        producer.close()
        t = time.perf_counter()
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.engine_memory",
                "--restart",
                json.dumps({"settings": cfg, "new_events": len(new)}),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        wall = time.perf_counter() - t
        if out.returncode != 0:
            print(out.stderr[-3000:])
            raise SystemExit(out.returncode)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"restart process: steady state after {result['steady_s']} s from process start (wall incl. "
            f"interpreter exit {wall:.1f} s); state {result['patients']:,} patients, {result['facts']:,} facts "
            f"(~{result['state_estimated_mb']} MB of frames); RSS after imports {result['rss_before_mb']}, "
            f"at steady state {result['rss_mb']} MB"
        )


if __name__ == "__main__":
    main()
