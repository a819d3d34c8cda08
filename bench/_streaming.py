"""Streaming: events/s from the broker through the engine, against kafka-python's raw consume rate.

One embedded broker (tansu, memory storage) for the whole section. The synthetic population's canonical events
(``connectors.synthetic.patients``, JSON, keyed by patient id, 4 partitions) are produced once; then each
measurement runs in its own subprocess (a fresh consumer group reading the topic from the beginning):

``consume``  kafka-python's ``KafkaConsumer`` (the engine's own client options, :func:`screener.bus.make_consumer`)
             polling every record and doing nothing with it: the ceiling on this broker.
``engine``   :class:`screener.engine.Engine` (the sample studies, a SQLite worklist, the default micro-batch
             settings, a clock fixed at the population's ``now``) stepping until every event is processed:
             JSON validation, state update, re-screen of the touched patients, match writes, commits.

Each runs with the ``crc32c`` C extension and with it hidden (a ``sitecustomize`` on ``PYTHONPATH`` makes
``import crc32c`` fail, so kafka-python falls back to its pure-Python CRC-32C for record-batch checksums). The
clock starts when the group has assigned the partitions (the consumer-group join, ~5 s on tansu, is excluded;
fetching and parsing the first records is included).

Latency: the engine runs (``serve``), background events are produced at a fixed rate, and every half second a
probe patient is sent: a sample study's eligible test case minus one event (the one without which it is
ineligible), then, a second later, that event. Latency is from the send of that trigger event to the arrival of
the probe's match on ``screening.matches`` at a consumer in the benchmark process.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from screener.alerts.store import SqlStore
    from screener.engine import Engine
    from screener.settings import Settings

__all__ = ["render_section", "run_streaming"]

PARTITIONS = 4
ROOT = Path(__file__).resolve().parent.parent

_BLOCK_CRC32C = '''\
"""Benchmark only: hide the crc32c C extension so kafka-python uses its pure-Python CRC-32C."""
import sys


class _HideCrc32c:
    def find_spec(self, name, path=None, target=None):
        if name == "crc32c" or name.startswith("crc32c."):
            raise ImportError("crc32c hidden by the benchmark")
        return None


sys.meta_path.insert(0, _HideCrc32c())
'''


def _crc_impl() -> str:
    from kafka.record import util

    return "C extension (crc32c)" if util.crc32c_c is not None else "pure Python (kafka.record._crc32c)"


def _settings(bootstrap: str, topic: str, group: str, workdir: Path, rules: Path) -> Settings:
    from screener.settings import Settings

    return Settings(
        bootstrap_servers=bootstrap,
        events_topic=topic,
        dlq_topic=f"{topic}.dlq",
        matches_topic=f"{topic}.matches",
        topic_partitions=PARTITIONS,
        group_id=group,
        rules_dir=rules,
        state_dir=workdir / "state",
        database_url=f"sqlite:///{workdir / 'worklist.db'}",
        producer_idempotence=False,
        metrics_port=0,
    )


# --- subprocess entry points ----------------------------------------------------------------------------


def _child_consume(args: argparse.Namespace) -> dict[str, Any]:
    from screener.bus import make_consumer

    s = _settings(args.bootstrap, args.topic, args.group, args.workdir, args.rules)
    from kafka import ConsumerRebalanceListener

    assigned: list[float] = []

    class Listener(ConsumerRebalanceListener):  # type: ignore[misc]  # kafka-python ships no types: the base is Any
        def on_partitions_revoked(self, revoked: Any) -> None:
            pass

        def on_partitions_assigned(self, partitions: Any) -> None:
            assigned.append(time.perf_counter())

    consumer = make_consumer(s, group_id=args.group)
    consumer.subscribe([args.topic], listener=Listener())
    n, deadline = 0, time.monotonic() + args.timeout
    try:
        while n < args.n and time.monotonic() < deadline:
            got = consumer.poll(timeout_ms=200, max_records=s.batch_max_records)
            n += sum(len(v) for v in got.values())
        end = time.perf_counter()
    finally:
        consumer.close(autocommit=False)
    if n < args.n or not assigned:
        raise SystemExit(f"consumed {n} of {args.n} records before the timeout")
    return {"events": n, "seconds": end - assigned[0], "crc32c": _crc_impl()}


def _engine(args: argparse.Namespace) -> tuple[Engine, list[float], SqlStore]:
    """An engine on the bench topic; the list receives the time its partitions were first assigned."""
    from prometheus_client import CollectorRegistry

    from bench._workload import BENCH_NOW
    from screener.alerts.store import SqlStore
    from screener.bus import make_consumer
    from screener.clock import FixedClock
    from screener.engine import Engine
    from screener.metrics import Metrics

    args.workdir.mkdir(parents=True, exist_ok=True)
    s = _settings(args.bootstrap, args.topic, args.group, args.workdir, args.rules)
    store = SqlStore(s.database_url)
    engine = Engine(
        s,
        store,
        metrics=Metrics(CollectorRegistry()),
        clock=FixedClock(BENCH_NOW),
        consumer=make_consumer(s, group_id=args.group),
        group_id=args.group,
    )
    assigned_at: list[float] = []
    on_assigned = engine._on_assigned

    def timed(assigned: Any) -> None:
        on_assigned(assigned)
        assigned_at.append(time.perf_counter())  # after the engine set its partitions up; records come next

    engine._on_assigned = timed  # type: ignore[method-assign]  # no public rebalance hook: wrap the private one
    return engine, assigned_at, store


def _child_engine(args: argparse.Namespace) -> dict[str, Any]:
    engine, assigned, store = _engine(args)
    engine.start()
    n, deadline = 0, time.monotonic() + args.timeout
    try:
        while n < args.n and time.monotonic() < deadline:
            n += engine.step(overlap=True)  # the service's loop (Engine.run)
        engine.settle()
        end = time.perf_counter()
        matches = engine.matches_recorded
    finally:
        engine.close()
        store.close()
    if n < args.n or not assigned:
        raise SystemExit(f"the engine processed {n} of {args.n} records before the timeout")
    return {
        "events": n,
        "seconds": end - assigned[0],
        "crc32c": _crc_impl(),
        "batches": engine.batches,
        "matches": matches,
    }


def _child_serve(args: argparse.Namespace) -> dict[str, Any]:
    engine, _assigned, store = _engine(args)
    engine.start()
    stop = args.workdir / "stop"
    ready = False
    try:
        while not stop.exists():
            engine.step(overlap=True)
            if not ready and engine.assigned_partitions:
                ready = True
                print("READY", flush=True)
    finally:
        engine.close()
        store.close()
    return {"batches": engine.batches, "crc32c": _crc_impl()}


def _child_main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench._streaming")
    p.add_argument("mode", choices=("consume", "engine", "serve"))
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--group", required=True)
    p.add_argument("--n", type=int, default=0)
    p.add_argument("--rules", type=Path, default=ROOT / "rules")
    p.add_argument("--workdir", type=Path, required=True)
    p.add_argument("--timeout", type=float, default=1800)
    args = p.parse_args(argv)
    from screener.logging import configure_logging

    configure_logging("WARNING")
    result = {"consume": _child_consume, "engine": _child_engine, "serve": _child_serve}[args.mode](args)
    print(json.dumps(result), flush=True)
    return 0


# --- the parent -------------------------------------------------------------------------------------------


def _env(hide_crc32c: bool, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCREENER_")}
    paths = [str(ROOT)]
    if hide_crc32c:
        site = workdir / "no-crc32c"
        site.mkdir(parents=True, exist_ok=True)
        (site / "sitecustomize.py").write_text(_BLOCK_CRC32C)
        paths.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(paths + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _run_child(
    mode: str, bootstrap: str, topic: str, n: int, workdir: Path, rules: Path, hide_crc32c: bool, timeout: float = 1800
) -> dict[str, Any]:
    run_dir = workdir / f"{mode}-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "bench._streaming",
        mode,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        f"bench-{run_dir.name}",
        "--n",
        str(n),
        "--rules",
        str(rules),
        "--workdir",
        str(run_dir),
        "--timeout",
        str(timeout),
    ]
    proc = subprocess.run(
        cmd,
        cwd=ROOT,
        env=_env(hide_crc32c, workdir),
        capture_output=True,
        text=True,
        timeout=timeout + 120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return result


def _payloads(n_events: int, seed: int, now: datetime, prefix: str = "") -> list[tuple[bytes, bytes]]:
    """Whole synthetic patients' canonical events (JSON), in order, until at least ``n_events``.

    Some (size, seed) pairs make the synthetic generator fail (a Polars ``ComputeError`` building a block);
    the next seed is then used, so the section still runs on the same kind of population.
    """
    import polars as pl

    for attempt in range(5):
        try:
            return _payloads_once(n_events, seed + attempt, now, prefix)
        except pl.exceptions.ComputeError:
            continue
    raise RuntimeError(f"the synthetic generator failed for seeds {seed} to {seed + 4}")


def _payloads_once(n_events: int, seed: int, now: datetime, prefix: str) -> list[tuple[bytes, bytes]]:
    from connectors.synthetic.population import generate
    from screener.events import dump_event

    out: list[tuple[bytes, bytes]] = []
    n_patients = max(1, n_events // 10)
    while len(out) < n_events:
        out.clear()
        for events in generate(n_patients, seed=seed, now=now):
            for ev in events:
                if prefix:
                    ev = ev.model_copy(update={"patient_id": prefix + ev.patient_id, "event_id": prefix + ev.event_id})
                out.append((ev.patient_id.encode(), dump_event(ev)))
            if len(out) >= n_events:
                break
        n_patients *= 2
    return out[:n_events] if len(out) == n_events else _whole_patients(out, n_events)


def _whole_patients(out: list[tuple[bytes, bytes]], n_events: int) -> list[tuple[bytes, bytes]]:
    """Cut after the patient that crosses ``n_events`` (never half a patient)."""
    last_key = out[n_events - 1][0]
    i = n_events
    while i < len(out) and out[i][0] == last_key:
        i += 1
    return out[:i]


def _produce(bootstrap: str, topic: str, payloads: list[tuple[bytes, bytes]]) -> float:
    from screener.bus import make_producer
    from screener.settings import Settings

    producer = make_producer(Settings(bootstrap_servers=bootstrap, producer_idempotence=False))
    t0 = time.perf_counter()
    for key, value in payloads:
        producer.send(topic, key=key, value=value)
    producer.flush(timeout=600)
    seconds = time.perf_counter() - t0
    producer.close(timeout=10)
    return seconds


def _probes(rules: Path, count: int, now: datetime) -> list[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """``(study_id, prefix events, trigger event)`` per probe: eligible test cases minus the event that decides."""
    from screener.events import event_dict
    from screener.rules import load_studies, screen
    from screener.rules.testcases import state_from_case

    templates: list[tuple[str, list[Any], Any]] = []
    for study in load_studies([rules]).studies:
        if not study.is_open(now):
            continue
        for case in study.tests:
            if case.expect != "eligible" or case.now != now:
                continue
            events = list(case.events)
            for k in range(len(events) - 1, -1, -1):
                if events[k].kind == "person":
                    continue
                rest = events[:k] + events[k + 1 :]
                outcome = screen(state_from_case(rest), [study], now)["outcome"][0]
                if outcome == "ineligible":
                    templates.append((study.id, rest, events[k]))
                    break
    if not templates:
        raise RuntimeError("no sample test case can serve as a latency probe")
    out = []
    for i in range(count):
        sid, rest, trigger = templates[i % len(templates)]
        pid = f"PROBE{i:05d}"

        def retag(ev: Any, j: int, pid: str = pid, i: int = i) -> dict[str, Any]:
            d = event_dict(ev)
            d["patient_id"], d["event_id"], d["source"] = pid, f"probe-{i}-{j}", "bench"
            return d

        out.append((sid, [retag(e, j) for j, e in enumerate(rest)], retag(trigger, len(rest))))
    return out


def _latency(bootstrap: str, workdir: Path, rules: Path, rate: int, duration: float) -> dict[str, Any]:
    from kafka import KafkaConsumer, TopicPartition

    from bench._workload import BENCH_NOW
    from screener.bus import ensure_topics, make_producer
    from screener.settings import Settings

    topic = f"bench-lat-{uuid.uuid4().hex[:8]}"
    ensure_topics(bootstrap, {topic: PARTITIONS, f"{topic}.dlq": PARTITIONS, f"{topic}.matches": PARTITIONS})
    run_dir = workdir / f"serve-{uuid.uuid4().hex[:8]}"
    run_dir.mkdir(parents=True)
    cmd = [
        sys.executable,
        "-m",
        "bench._streaming",
        "serve",
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        f"bench-{run_dir.name}",
        "--rules",
        str(rules),
        "--workdir",
        str(run_dir),
    ]
    log = open(run_dir / "serve.log", "w")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(False, workdir), stdout=subprocess.PIPE, stderr=log, text=True)
    log.close()
    received: dict[str, float] = {}
    stop = threading.Event()

    def read_matches() -> None:
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=10)
        tps = [TopicPartition(f"{topic}.matches", p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        try:
            while not stop.is_set():
                for recs in consumer.poll(timeout_ms=50).values():
                    t = time.perf_counter()
                    for r in recs:
                        m = json.loads(r.value)
                        received.setdefault(f"{m['study_id']}/{m['patient_id']}", t)
        finally:
            consumer.close()

    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the child prints READY once it owns partitions
        if line.strip() != "READY":
            raise RuntimeError(f"the engine did not start: see {run_dir / 'serve.log'}")
        reader = threading.Thread(target=read_matches, daemon=True)
        reader.start()
        n_background = int(rate * duration)
        background = _payloads(n_background, seed=13, now=BENCH_NOW, prefix="BG")
        probes = _probes(rules, int(duration * 2), BENCH_NOW)
        producer = make_producer(Settings(bootstrap_servers=bootstrap, producer_idempotence=False))
        sent: dict[str, float] = {}
        t0 = time.perf_counter()
        next_probe, probe_i, pending = 0.0, 0, []
        for i, (key, value) in enumerate(background):
            due = t0 + i / rate
            now = time.perf_counter()
            if due > now:
                time.sleep(due - now)
            producer.send(topic, key=key, value=value)
            elapsed = time.perf_counter() - t0
            if probe_i < len(probes) and elapsed >= next_probe:
                sid, prefix, trigger = probes[probe_i]
                for ev in prefix:
                    producer.send(topic, key=ev["patient_id"].encode(), value=json.dumps(ev).encode())
                pending.append((elapsed + 1.0, sid, trigger))
                probe_i += 1
                next_probe += 0.5
            while pending and pending[0][0] <= elapsed:
                _, sid, trigger = pending.pop(0)
                producer.flush()
                sent[f"{sid}/{trigger['patient_id']}"] = time.perf_counter()
                producer.send(topic, key=trigger["patient_id"].encode(), value=json.dumps(trigger).encode())
                producer.flush()
        for _, sid, trigger in pending:
            sent[f"{sid}/{trigger['patient_id']}"] = time.perf_counter()
            producer.send(topic, key=trigger["patient_id"].encode(), value=json.dumps(trigger).encode())
            producer.flush()
        produce_seconds = time.perf_counter() - t0
        wait_until = time.monotonic() + 60
        while time.monotonic() < wait_until and not all(k in received for k in sent):
            time.sleep(0.1)
        producer.close(timeout=10)
    finally:
        stop.set()
        (run_dir / "stop").touch()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    lat = sorted(received[k] - t for k, t in sent.items() if k in received)
    if not lat:
        raise RuntimeError(f"no probe match arrived; see {run_dir / 'serve.log'}")
    q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [lat[0]] * 99
    return {
        "rate": rate,
        "duration": produce_seconds,
        "background": len(background),
        "probes": len(sent),
        "matched": len(lat),
        "p50": statistics.median(lat),
        "p99": q[98],
        "max": lat[-1],
        "min": lat[0],
    }


def run_streaming(
    n_events: int, runs: int, latency_rate: int, workdir: Path, rules: Path, latency_seconds: float = 30.0
) -> dict[str, Any]:
    """Start a broker, produce the events, time each consumer kind ``runs`` times, then measure latency."""
    from bench._stats import Timing
    from bench._workload import BENCH_NOW
    from screener.bus import EmbeddedBroker, ensure_topics

    workdir.mkdir(parents=True, exist_ok=True)
    payloads = _payloads(n_events, seed=12, now=BENCH_NOW)
    with EmbeddedBroker() as broker:
        topic = f"bench-events-{uuid.uuid4().hex[:8]}"
        ensure_topics(broker.bootstrap, {topic: PARTITIONS, f"{topic}.dlq": PARTITIONS, f"{topic}.matches": PARTITIONS})
        produce_seconds = _produce(broker.bootstrap, topic, payloads)
        n = len(payloads)
        rows: dict[str, Any] = {}
        for mode in ("consume", "engine"):
            for hide in (False, True):
                results = [_run_child(mode, broker.bootstrap, topic, n, workdir, rules, hide) for _ in range(runs)]
                rows[f"{mode}/{'no-crc32c' if hide else 'crc32c'}"] = {
                    "timing": Timing(tuple(r["seconds"] for r in results)),
                    "events": n,
                    "crc32c": results[0]["crc32c"],
                    "extra": results[-1],
                }
        latency = _latency(broker.bootstrap, workdir, rules, latency_rate, latency_seconds)
    return {
        "events": n,
        "bytes": sum(len(v) for _, v in payloads),
        "produce_seconds": produce_seconds,
        "rows": rows,
        "latency": latency,
        "partitions": PARTITIONS,
    }


def render_section(s: dict[str, Any]) -> list[str]:
    from bench._report import _table
    from bench._stats import fmt_rate, fmt_seconds, timing_cell

    ceiling = s["rows"]["consume/crc32c"]
    ceiling_rate = s["events"] / ceiling["timing"].median
    labels = {"consume": "kafka-python raw consume (the ceiling)", "engine": "screener engine (end to end)"}
    rows = []
    for key, r in s["rows"].items():
        mode = key.split("/")[0]
        rate = s["events"] / r["timing"].median
        rows.append(
            [labels[mode], r["crc32c"], timing_cell(r["timing"]), fmt_rate(rate), f"{100 * rate / ceiling_rate:.0f}%"]
        )
    lat = s["latency"]
    return [
        "## 3. Streaming",
        "",
        f"{s['events']:,} canonical events ({s['bytes'] / 2**20:.0f} MiB of JSON, whole synthetic patients) on one "
        f"topic of {s['partitions']} partitions of the embedded broker (tansu, memory storage), produced once in "
        f"{fmt_seconds(s['produce_seconds'])} ({fmt_rate(s['events'] / s['produce_seconds'])} events/s with "
        "kafka-python's producer). Every run is a fresh process and consumer group reading the topic from the "
        "start; the clock starts when the partitions are assigned (the group join is excluded). The engine run is "
        "the real `screener.engine.Engine` with the sample studies, a SQLite worklist and the default micro-batch "
        "settings: validate every event, update the state, re-screen the touched patients, write matches, "
        "commit. 'Without crc32c' hides the C extension, so kafka-python checks every record batch's CRC-32C in "
        "pure Python.",
        "",
        *_table(["consumer", "CRC-32C", "time, median (min - max)", "events/s", "of the ceiling"], rows),
        "",
        f"**Latency** at a fixed {lat['rate']} events/s of background traffic for {lat['duration']:.0f} s: "
        f"{lat['matched']} of {lat['probes']} probe patients matched; event-to-match latency "
        f"**p50 {fmt_seconds(lat['p50'])}, p99 {fmt_seconds(lat['p99'])}** (min {fmt_seconds(lat['min'])}, max "
        f"{fmt_seconds(lat['max'])}). A probe is a sample study's eligible test case sent without the one event "
        "that makes it eligible, then that event a second later; latency runs from sending that event to its "
        "match arriving on `screening.matches` at a consumer in the benchmark process (so it includes the "
        "engine's poll wait, the micro-batch, the screen, the worklist write and the publish).",
        "",
    ]


if __name__ == "__main__":
    raise SystemExit(_child_main())
