"""Failover figures: a surviving engine takes over a dead engine's partitions from the history store.

    python -m bench.history_failover [--patients 200000] [--partitions 4] [--events 20000] [--gap 5000]
                                     [--store DIR]

1. The population's store (``bench.history_rules.population_store``: every fact of ``--patients`` synthetic
   patients, one base per partition; ``--store`` keeps it for later runs, as the 1M one takes minutes to build).
2. Engine A (in-memory consumer, SQLite worklist) takes every partition from the store, then processes
   ``--events`` new events (new patients), which reach the store at its next snapshot; then ``--gap`` more, which
   it commits but which are not in the store yet when it dies (it is dropped without closing: a kill -9).
3. Engine B, on another disk (no local snapshot) with the same store, log and committed offsets, takes every
   partition over: seconds from ``start()`` until every partition is restored and caught up with the log, how
   each was restored, where its first fetches started (the store's offsets, never 0), and that no (study,
   patient) pair was alerted twice.

Keep it small on a shared machine; run the 1M figure only on a quiet host.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.engine_common import ROOT, event_payloads
from bench.history_rules import population_store


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=200_000)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--events", type=int, default=20_000, help="events engine A processes and stores")
    ap.add_argument("--gap", type=int, default=5_000, help="events A commits but dies before storing")
    ap.add_argument("--store", help="keep the population's store in this folder and reuse it in later runs")
    args = ap.parse_args()

    import sqlalchemy as sa
    from prometheus_client import CollectorRegistry

    from screener.alerts.store import SqlStore
    from screener.engine import Engine
    from screener.history import open_store
    from screener.metrics import Metrics
    from screener.settings import Settings
    from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer

    now = datetime.now(UTC)
    work = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    try:
        rules = work / "rules"
        shutil.copytree(ROOT / "rules", rules)
        kept = population_store(Path(args.store) if args.store else work / "store", args.patients, args.partitions, now)
        shutil.copytree(kept.url, work / "history")  # the engines write to it: the kept store stays as built
        log = InMemoryLog(args.partitions)
        for p in range(args.partitions):
            log.committed[("ev", p)] = 0  # the group had processed what the store holds
        database = f"sqlite:///{work / 'worklist.db'}"

        def engine(disk: str) -> tuple[Engine, Any, InMemoryConsumer]:
            settings = Settings(
                rules_dir=rules,
                state_dir=work / disk,
                database_url=database,
                events_topic="ev",
                matches_topic="m",
                dlq_topic="dlq",
                topic_partitions=args.partitions,
                snapshot_interval_s=3600,
                rescreen_interval_s=10**6,
            )
            sql = SqlStore(database)
            consumer = InMemoryConsumer(log)  # kept: the engine holds its consumer only from start()
            made = Engine(
                settings,
                sql,
                metrics=Metrics(CollectorRegistry()),
                consumer=consumer,
                producer=InMemoryProducer(log),
                history=open_store(work / "history"),
            )
            return made, sql, consumer

        def run_until_end(e: Engine) -> None:
            end = {p: len(log.topics["ev"][p]) for p in range(args.partitions)}
            while not e.caught_up or any(log.committed.get(("ev", p), 0) < n for p, n in end.items()):
                e.step()

        payloads = event_payloads(args.events + args.gap, now, seed=11, start_index=50_000_000)
        a, sql_a, _ = engine("disk-a")
        a.start()
        t = time.perf_counter()
        a.step()
        print(f"engine A: every partition restored from the store in {time.perf_counter() - t:.1f}s")
        for key, value in payloads[: args.events]:
            log.append("ev", key, value)
        run_until_end(a)
        for p in range(args.partitions):
            job = a._history_job(p)  # what the snapshot timer does: append what A applied to the store
            if job is not None:
                job()
        held = {p: a.history().offset(p) for p in range(args.partitions)}
        for key, value in payloads[args.events :]:
            log.append("ev", key, value)
        run_until_end(a)
        committed = {p: log.committed[("ev", p)] for p in range(args.partitions)}
        print(
            f"engine A: {args.events:,} events stored (store offsets {held}), then {args.gap:,} committed but not "
            f"stored (committed {committed}); A dies"
        )
        del a  # a kill -9: no close, no snapshot, no store append
        sql_a.close()

        b, sql_b, consumer = engine("disk-b")
        b.start()  # the survivor was running already: its start (rules, clients) is not part of the takeover
        t0 = time.perf_counter()
        consumer.assign_all()  # what the group's rebalance does: every partition restored, before any fetch
        t_restored = time.perf_counter()
        run_until_end(b)
        t_done = time.perf_counter()
        first = {p: offsets[0] for p, offsets in sorted(consumer.fetched.items()) if offsets}
        sources = {
            s: int(b.metrics.registry.get_sample_value("screener_partition_restores_total", {"source": s}) or 0)
            for s in ("snapshot", "history", "replay")
        }
        print(
            f"engine B: took over {args.partitions} partitions ({b.state().persons.height:,} patients) in "
            f"{t_done - t0:.1f}s: restored from the store in {t_restored - t0:.1f}s, the {args.gap:,} events A had "
            f"not stored read again in {t_done - t_restored:.1f}s; restores by source {sources}"
        )
        print(f"  first offsets fetched {first} (store offsets {held}): never 0 = {0 not in first.values()}")
        with sa.create_engine(database).connect() as conn:
            rows, pairs = conn.execute(
                sa.text("select count(*), count(distinct study_id || '|' || patient_id) from matches")
            ).one()
        print(f"  matches: {rows:,} rows, {pairs:,} distinct (study, patient) pairs: duplicates {rows - pairs}")
        b.close()
        sql_b.close()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
