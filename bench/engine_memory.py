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
        engine.step()
    steady = time.monotonic() - t0
    state = engine.state()
    print(json.dumps({"steady_s": round(steady, 2), "patients": state.persons.height,
                      "facts": state.facts.height, "rss_before_mb": base, "rss_mb": _rss(),
                      "state_estimated_mb": round((state.persons.estimated_size() + state.facts.estimated_size())
                                                  / 2**20, 1)}))
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

    import polars as pl
    from kafka import KafkaConsumer, TopicPartition
    from kafka.partitioner.default import murmur2
    from kafka.structs import OffsetAndMetadata
    from prometheus_client import CollectorRegistry

    from bench.engine_common import event_payloads, make_studies
    from connectors.synthetic.population import generate_frames
    from screener.alerts.memory import MemoryStore
    from screener.bus import EmbeddedBroker, ensure_service_topics, make_producer
    from screener.engine import Engine
    from screener.logging import configure_logging
    from screener.metrics import Metrics
    from screener.settings import Settings
    from screener.state import PatientState, save_snapshot

    configure_logging("WARNING")
    work = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    rules = make_studies(work / "rules", args.studies)
    now = datetime.now(UTC)
    with EmbeddedBroker(log_path=work / "broker.log") as broker:
        cfg = {"bootstrap_servers": broker.bootstrap, "topic_partitions": args.partitions, "rules_dir": str(rules),
               "state_dir": str(work / "state"), "group_id": "bench-memory", "log_level": "WARNING",
               "batch_max_records": 5000}
        settings = Settings(**cfg)
        ensure_service_topics(settings)
        probe = Engine(settings, MemoryStore(), metrics=Metrics(CollectorRegistry()))
        probe.reload_rules(force=True)
        fingerprint, keep = probe._rules_fingerprint, probe._keep
        t = time.perf_counter()
        persons, facts = generate_frames(args.patients, seed=5, now=now)
        print(f"generated {persons.height:,} patients, {facts.height:,} facts in {time.perf_counter() - t:.1f}s")
        t = time.perf_counter()
        facts = keep(facts) if keep is not None else facts
        print(f"pruned to {facts.height:,} facts the studies can use in {time.perf_counter() - t:.1f}s")
        ids = persons["patient_id"].to_list()
        part = pl.DataFrame({"patient_id": ids, "_p": [(murmur2(i.encode()) & 0x7FFFFFFF) % args.partitions
                                                       for i in ids]})
        persons = persons.join(part, on="patient_id")
        facts = facts.join(part, on="patient_id")
        # A few records per partition so the committed offsets are real positions in the log.
        producer = make_producer(settings)
        for key, value in event_payloads(400, now, seed=99, start_index=5_000_000):
            producer.send(settings.events_topic, key=key, value=value)
        producer.flush()
        consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=settings.group_id,
                                 enable_auto_commit=False)
        tps = [TopicPartition(settings.events_topic, p) for p in range(args.partitions)]
        # The log end by reading to it (tansu's ListOffsets answer is the last batch's base offset + 1).
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen = 0
        while seen < 400:
            seen += sum(len(r) for r in consumer.poll(timeout_ms=1000).values())
        ends = {tp: consumer.position(tp) for tp in tps}
        consumer.commit({tp: OffsetAndMetadata(ends[tp], "", -1) for tp in tps})
        consumer.close()
        t = time.perf_counter()
        for tp in tps:
            p = tp.partition
            state = PatientState(persons.filter(pl.col("_p") == p).drop("_p"),
                                 facts.filter(pl.col("_p") == p).drop("_p"))
            save_snapshot(state, Path(settings.state_dir) / f"{settings.events_topic}-{p}", ends[tp],
                          {"rules": fingerprint})
        print(f"wrote {args.partitions} snapshots in {time.perf_counter() - t:.1f}s "
              f"({sum(f.stat().st_size for f in Path(settings.state_dir).rglob('*.parquet')) / 2**20:.0f} MB)")
        del persons, facts, part, ids
        new = event_payloads(2000, now, seed=7, start_index=6_000_000)
        for key, value in new:
            producer.send(settings.events_topic, key=key, value=value)
        producer.flush()
        producer.close()
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "bench.engine_memory", "--restart",
                              json.dumps({"settings": cfg, "new_events": len(new)})],
                             capture_output=True, text=True, check=False)
        wall = time.perf_counter() - t
        if out.returncode != 0:
            print(out.stderr[-3000:])
            raise SystemExit(out.returncode)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"restart process: steady state after {result['steady_s']} s from process start (wall incl. "
              f"interpreter exit {wall:.1f} s); state {result['patients']:,} patients, {result['facts']:,} facts "
              f"(~{result['state_estimated_mb']} MB of frames); RSS after imports {result['rss_before_mb']}, "
              f"at steady state {result['rss_mb']} MB")


if __name__ == "__main__":
    main()
