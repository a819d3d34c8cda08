"""History store figures at N synthetic patients (default 200,000), in one process, without a broker:

    python -m bench.history_rules [--patients 200000] [--rate 50] [--partitions 4] [--store DIR]

At 1M patients (``--patients 1000000 --store /tmp/bench-store-1m``: about 24M facts, 8 GB of memory at the
peak) the store is built once and reused by later runs, so two versions of the engine can be compared on it.

1. **Store**: the population's state frames (``generate_frames``: every fact, unpruned) written as one base per
   partition (murmur2 partitioning) into a local store; bytes on disk per million facts.
2. **Failover**: a fresh engine (the sample studies, an in-memory consumer and a SQLite worklist) takes every
   partition over from the store: seconds from ``start()`` to every partition restored and caught up (the group
   join of a real broker, a few seconds on tansu, is not included).
3. **Rule edit**: with a live feed of probe patients (a person and a type 2 diabetes diagnosis each, ``--rate``
   events/s, matched by a small probe study), one sample study is added to the rules folder: seconds from the edit
   to everyone screened against it (rebuild from the store in the background, swap, screen), and the
   event-to-match latency of the probes sent meanwhile (p50/p99/max: publish time to the match being stored),
   also per phase (the rebuild until the swap; the swap and the re-screen) with the longest step of the loop.

Keep it small on a shared machine: one run, ``--patients`` as needed.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.engine_common import ROOT, percentile

PROBE_STUDY = """\
study:
  id: BENCH-PROBE
  title: "Probe patients (adults with type 2 diabetes)"
  summary: "Measures live latency during a rule edit."
  sponsor: non-commercial
  portfolio: false
  target: 100
  opens: 2020-01-01
  closes: 2035-12-31
  settings: [community, hospital]
  team: bench
concepts:
  t2dm: {icd10: [E11]}
include:
  adult: age >= 18
  diabetic: t2dm|ever
"""


class Timing:
    """Wraps the worklist store: records when each new match of a probe patient was stored."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.stored: dict[str, float] = {}
        #: New matches per study (every patient's, not only the probes').
        self.new: dict[str, int] = {}

    def record_matches(self, matches: Any) -> Any:
        new = self.inner.record_matches(matches)
        wall = time.time()
        for sid, n in new.group_by("study_id").len().iter_rows():
            self.new[sid] = self.new.get(sid, 0) + n
        for pid in new["patient_id"].to_list():
            if pid.startswith("PROBE-"):
                self.stored.setdefault(pid, wall)
        return new

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def population_store(where: Path, patients: int, partitions: int, now: datetime) -> Any:
    """The store of ``patients`` synthetic patients (every fact, unpruned) in ``where``, one base per partition
    (murmur2 partitioning, as the engine reads it), at offset 0. Generated in blocks of 250k patients; kept and
    reused when ``where`` already holds the same population (``--store``: the 1M store takes minutes to build)."""
    import json

    import polars as pl

    from connectors.synthetic.population import generate_frames
    from screener.history import open_store
    from screener.history.backfill import kafka_partitions

    meta, want = where / "population.json", {"patients": patients, "partitions": partitions, "seed": 3}
    store = open_store(where / "history")
    if meta.exists() and json.loads(meta.read_text()) == want:
        print(f"store: reused {where} ({store.size_bytes() / 2**20:.1f} MB)")
        return store
    t = time.perf_counter()
    persons: dict[int, list[pl.DataFrame]] = {p: [] for p in range(partitions)}
    facts: dict[int, list[pl.DataFrame]] = {p: [] for p in range(partitions)}
    n_facts = 0
    for start in range(0, patients, 250_000):
        pf, ff = generate_frames(min(250_000, patients - start), seed=3, now=now, start_index=start)
        n_facts += ff.height
        part = pl.DataFrame({"patient_id": pf["patient_id"], "_p": kafka_partitions(pf["patient_id"], partitions)})
        pf, ff = pf.join(part, on="patient_id"), ff.join(part, on="patient_id")
        for p in range(partitions):
            persons[p].append(pf.filter(pl.col("_p") == p).drop("_p"))
            facts[p].append(ff.filter(pl.col("_p") == p).drop("_p"))
    print(f"generated {patients:,} patients, {n_facts:,} facts in {time.perf_counter() - t:.1f}s")
    t = time.perf_counter()
    for p in range(partitions):
        retracted = pl.DataFrame(schema={"event_id": pl.String})
        store.write_base(p, pl.concat(persons.pop(p)), pl.concat(facts.pop(p)), retracted, 0)
    write_s = time.perf_counter() - t
    size = store.size_bytes()
    print(
        f"store: {size / 2**20:.1f} MB for {n_facts:,} facts = {size / n_facts * 1e6 / 2**20:.1f} MB per "
        f"million facts (written in {write_s:.1f}s, {n_facts / write_s:,.0f} facts/s)"
    )
    meta.write_text(json.dumps(want))
    return store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200_000)
    ap.add_argument("--rate", type=float, default=50.0, help="probe events per second during the edit")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--added", default="ckd-sglt2-comm.yaml", help="the sample study added by the edit")
    ap.add_argument("--store", help="keep the population's store in this folder and reuse it in later runs")
    args = ap.parse_args()

    from prometheus_client import CollectorRegistry

    from screener.alerts.store import SqlStore
    from screener.engine import Engine
    from screener.events import parse_event
    from screener.history import open_store
    from screener.metrics import Metrics
    from screener.settings import Settings
    from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer

    now = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="bench-history-"))
    try:
        rules = work / "rules"
        rules.mkdir()
        shutil.copytree(ROOT / "rules" / "concepts", rules / "concepts")
        for f in sorted((ROOT / "rules").glob("*.yaml")):
            if f.name != args.added:
                shutil.copy(f, rules / f.name)
        (rules / "probe.yaml").write_text(PROBE_STUDY)

        kept = population_store(Path(args.store) if args.store else work / "store", args.patients, args.partitions, now)
        # The engine writes to its store: each run works on a copy, so a kept store stays as it was built.
        shutil.copytree(kept.url, work / "history")
        store = open_store(work / "history")

        settings = Settings(
            rules_dir=rules,
            state_dir=work / "state",
            database_url=f"sqlite:///{work / 'worklist.db'}",
            events_topic="ev",
            matches_topic="m",
            dlq_topic="dlq",
            topic_partitions=args.partitions,
            rules_poll_s=0.2,
            snapshot_interval_s=3600,
            batch_max_ms=20,
        )
        log = InMemoryLog(args.partitions)
        for p in range(args.partitions):
            log.committed[("ev", p)] = 0  # the group had processed what the store holds: a failover, not a backfill
        consumer = InMemoryConsumer(log)
        sql = SqlStore(settings.database_url)
        worklist = Timing(sql)
        engine = Engine(
            settings,
            worklist,
            metrics=Metrics(CollectorRegistry()),
            consumer=consumer,
            producer=InMemoryProducer(log),
            history=store,
        )
        engine.start()
        steps: list[tuple[float, float]] = []  # (wall time at the end, seconds) of every step of the loop
        inner_step = engine.step

        def timed_step(*a: Any, **k: Any) -> int:
            t0 = time.perf_counter()
            n = inner_step(*a, **k)
            steps.append((time.time(), time.perf_counter() - t0))
            return n

        engine.step = timed_step  # type: ignore[method-assign]  # no public hook: times each step
        t = time.perf_counter()
        engine.step()  # assignment: every partition restored from the store
        restore_s = time.perf_counter() - t
        assert engine.caught_up
        print(
            f"failover: {args.partitions} partitions, {engine.state().persons.height:,} patients, "
            f"{engine.state().facts.height:,} facts in the hot view, taken over from the store in {restore_s:.1f}s"
        )
        stop = threading.Event()
        loop = threading.Thread(target=engine.run, args=(stop,), daemon=True)
        loop.start()
        sent: dict[str, float] = {}
        feeding = threading.Event()
        feeding.set()

        def feed() -> None:
            i = 0
            while feeding.is_set():
                pid = f"PROBE-{i:05d}"
                for ev in (
                    {"kind": "person", "person": {"birth_date": "1970-01-01"}},
                    {"kind": "condition", "code": {"system": "ICD10", "value": "E11.9"}},
                ):
                    event = parse_event(
                        {
                            "event_id": f"{pid}-{ev['kind']}",
                            "source": "bench",
                            "patient_id": pid,
                            "occurred_at": now.isoformat(),
                            **ev,
                        }
                    )
                    log.publish("ev", event)
                sent[pid] = time.time()
                i += 1
                time.sleep(2 / args.rate)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
        time.sleep(5)  # a steady feed before the edit
        swaps = engine.rule_swaps
        known = set(worklist.new)
        edited = time.time()
        shutil.copy(ROOT / "rules" / args.added, rules / args.added)
        swapped = None
        while engine.rule_swaps == swaps or any(q[2] == "rules" for q in list(engine._queue)):
            if swapped is None and engine.rule_swaps != swaps:
                swapped = time.time()
            time.sleep(0.05)
        done = time.time()
        swapped = swapped or done
        time.sleep(1)
        feeding.clear()
        feeder.join()
        time.sleep(1)
        before = [worklist.stored[p] - s for p, s in sent.items() if s < edited and p in worklist.stored]
        during = [worklist.stored[p] - s for p, s in sent.items() if edited <= s <= done and p in worklist.stored]
        print(
            f"steady feed before the edit: {len(before)} probe matches, p50 {percentile(before, 50) * 1000:.0f} ms, "
            f"p99 {percentile(before, 99) * 1000:.0f} ms"
        )
        missing = [p for p, s in sent.items() if edited <= s <= done and p not in worklist.stored]
        print(
            f"rule edit ({args.added}): everyone screened against it {done - edited:.1f}s after the edit; "
            f"{len(during)} probe matches meanwhile: p50 {percentile(during, 50) * 1000:.0f} ms, "
            f"p99 {percentile(during, 99) * 1000:.0f} ms, max {max(during, default=float('nan')) * 1000:.0f} ms"
            + (f"; {len(missing)} probes not matched" if missing else "")
        )
        import sqlalchemy as sa

        with sa.create_engine(settings.database_url).connect() as conn:
            rows, people, probes = conn.execute(
                sa.text(
                    "select count(*), count(distinct patient_id), sum(patient_id like 'PROBE-%') from matches"
                    " where study_id = :sid"
                ),
                {"sid": next(iter(set(worklist.new) - known), "")},
            ).one()
        print(
            f"  the added study: {rows} matches, {people} distinct patients ({rows - probes} of the population, "
            f"{probes} probes: every probe is 'possible' for it); probes sent {len(sent)}, matched "
            f"{len(worklist.stored)}"
        )
        for name, lo, hi in (("rebuild", edited, swapped), ("swap+rescreen", swapped, done)):
            lat = [worklist.stored[p] - s for p, s in sent.items() if lo <= s < hi and p in worklist.stored]
            longest = max((d for end, d in steps if lo <= end <= hi + 1), default=float("nan"))
            print(
                f"  {name} ({hi - lo:.1f}s): {len(lat)} probes, p50 {percentile(lat, 50) * 1000:.0f} ms, "
                f"p99 {percentile(lat, 99) * 1000:.0f} ms; longest loop step {longest * 1000:.0f} ms"
            )
        stop.set()
        loop.join(timeout=60)
        sql.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
