"""Helpers for the engine benchmarks (``bench/engine_*.py``): a 50-study rules folder and event payloads."""

from __future__ import annotations

import re
import shutil
import time
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def make_studies(out: Path, n: int = 50) -> Path:
    """Write ``n`` open studies into ``out``: the sample studies in ``rules/`` cloned round-robin under new ids,
    with their dates widened to 2020-01-01 .. 2035-12-31 so every one is open. Returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.yaml"):
        old.unlink()
    shutil.rmtree(out / "concepts", ignore_errors=True)
    if (ROOT / "rules" / "concepts").exists():
        shutil.copytree(ROOT / "rules" / "concepts", out / "concepts")
    sources = sorted((ROOT / "rules").glob("*.yaml"))
    for i in range(n):
        text = sources[i % len(sources)].read_text()
        text = re.sub(r"(\n\s*id:\s*)([A-Z0-9-]+)", rf"\g<1>\g<2>-{i:02d}", text, count=1)
        text = re.sub(r"(\n\s*opens:\s*)\S+", r"\g<1>2020-01-01", text, count=1)
        text = re.sub(r"(\n\s*closes:\s*)\S+", r"\g<1>2035-12-31", text, count=1)
        (out / f"study-{i:02d}.yaml").write_text(text)
    return out


def event_payloads(n_events: int, now: datetime, seed: int = 11, start_index: int = 0) -> list[tuple[bytes, bytes]]:
    """``n_events`` (key, value) pairs from the synthetic population, patient by patient."""
    from connectors.synthetic.population import generate
    from screener.events import dump_event

    out: list[tuple[bytes, bytes]] = []
    for patient in generate(max(1, n_events // 5), seed=seed, now=now, start_index=start_index):
        for ev in patient:
            out.append((ev.patient_id.encode(), dump_event(ev)))
            if len(out) >= n_events:
                return out
    return out


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def seed_group_state(settings: Any, patients: int, now: datetime, seed: int = 5) -> dict[int, int]:
    """Give ``settings.group_id`` a ready state of ``patients`` synthetic patients, as a long-running engine would
    leave it: the population's state frames (vectorised, the patients ``generate`` would stream) split by the
    Kafka default partitioner (murmur2 of the patient id), every fact in each partition's history-store base
    (``settings.history_url()``) and the facts the loaded studies can use in per-partition snapshots, both at the
    group's committed offsets (the engine restores from a snapshot only when it is at the store's offset; with no
    store it replays the topic). A few records are published first so the offsets are real positions in the log.
    Returns the committed offset per partition."""
    import polars as pl
    from kafka import KafkaConsumer, TopicPartition
    from kafka.partitioner.default import murmur2
    from kafka.structs import OffsetAndMetadata
    from prometheus_client import CollectorRegistry

    from connectors.synthetic.population import generate_frames
    from screener.alerts.memory import MemoryStore
    from screener.bus import make_producer
    from screener.engine import Engine
    from screener.history import open_store
    from screener.metrics import Metrics
    from screener.state import LiveState, PatientState, save_snapshot

    probe = Engine(settings, MemoryStore(), metrics=Metrics(CollectorRegistry()))
    probe.reload_rules(force=True)
    fingerprint, keep = probe._rules_fingerprint, probe._keep
    t = time.perf_counter()
    persons, facts = generate_frames(patients, seed=seed, now=now)
    print(f"generated {persons.height:,} patients, {facts.height:,} facts in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    every = facts
    facts = keep(facts) if keep is not None else facts
    print(f"pruned to {facts.height:,} facts the studies can use in {time.perf_counter() - t:.1f}s")
    n_parts = settings.topic_partitions
    ids = persons["patient_id"].to_list()
    part = pl.DataFrame({"patient_id": ids, "_p": [(murmur2(i.encode()) & 0x7FFFFFFF) % n_parts for i in ids]})
    persons = persons.join(part, on="patient_id")
    facts = facts.join(part, on="patient_id")
    every = every.join(part, on="patient_id")
    producer = make_producer(settings)
    for key, value in event_payloads(400, now, seed=99, start_index=5_000_000):
        producer.send(settings.events_topic, key=key, value=value)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=settings.bootstrap_servers, group_id=settings.group_id, enable_auto_commit=False
    )
    tps = [TopicPartition(settings.events_topic, p) for p in range(n_parts)]
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
    store = open_store(settings.history_url())
    for tp in tps:
        p = tp.partition
        mine = pl.col("_p") == p
        retracted = pl.DataFrame(schema={"event_id": pl.String})
        store.write_base(p, persons.filter(mine).drop("_p"), every.filter(mine).drop("_p"), retracted, ends[tp])
        state = PatientState(persons.filter(pl.col("_p") == p).drop("_p"), facts.filter(pl.col("_p") == p).drop("_p"))
        # As the engine writes them: the main frames sorted and named, so its next snapshots reuse their files.
        save_snapshot(
            LiveState(state).parts(),
            Path(settings.state_dir) / f"{settings.events_topic}-{p}",
            ends[tp],
            {"rules": fingerprint},
        )
    size = sum(f.stat().st_size for f in Path(settings.state_dir).rglob("*.parquet")) / 2**20
    print(f"wrote {n_parts} store bases and snapshots in {time.perf_counter() - t:.1f}s ({size:.0f} MB)")
    return {tp.partition: off for tp, off in ends.items()}
