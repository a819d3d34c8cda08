"""The history store with the real broker: failover through shared S3-compatible storage (moto on loopback)
without reading the topic from offset 0, and a rule edit while events stream (the new view is built from the
store; live events keep being matched meanwhile)."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from screener.history import HistoryStore, open_store

pytestmark = pytest.mark.integration

STUDY = "TEST-ADULT-DM"


def test_kill_9_of_one_of_two_engines_the_other_takes_over_from_the_store_without_replay(
    bed: Any, kit: Any, s3: dict[str, str]
) -> None:
    url = f"s3://screener/{bed.name}"
    env = {k.upper(): v for k, v in s3.items()}
    common = {"state_url": url, "batch_max_records": 20, "snapshot_interval_s": 1.0}
    a = bed.start_engine("a", env=env, state_dir=bed.root / "disk-a", **common)
    bed.start_engine("b", env=env, state_dir=bed.root / "disk-b", **common)

    def owned(tag: str) -> list[int]:
        got = [ln["partitions"] for ln in bed.log_lines(tag) if ln.get("event") == "partitions_assigned"]
        return got[-1] if got else []

    kit.wait_for(lambda: owned("a") and owned("b") and sorted(owned("a") + owned("b")) == [0, 1, 2, 3], 90, "a split")
    bed.publish([e for i in range(80) for e in kit.patient_events(f"F{i:04d}")])
    kit.wait_for(lambda: len(bed.matches()) >= 80, 60, "the first matches")
    of_a = owned("a")
    store = open_store(url, s3)
    # Wait until the store holds every one of a's partitions (written a second after their batches).
    kit.wait_for(lambda: all((store.offset(p) or 0) > 0 for p in of_a), 30, "a's partitions in the store")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait(timeout=10)
    held = {p: store.offset(p) for p in of_a}
    bed.publish([e for i in range(80, 200) for e in kit.patient_events(f"F{i:04d}")])
    expected = {(STUDY, f"F{i:04d}") for i in range(200)}
    kit.wait_for(lambda: len(bed.matches()) >= len(expected), 120, "the survivor to take over")
    rows = bed.matches()
    assert set(rows) == expected and len(rows) == len(expected), "complete, no duplicate"
    lines = bed.log_lines("b")
    kit.wait_for(lambda: sorted(owned("b")) == [0, 1, 2, 3], 30, "b to own every partition")
    restored = {
        ln["partition"]: ln for ln in lines if ln.get("event") == "partition_restored" and ln["partition"] in of_a
    }
    assert {p: ln["source"] for p, ln in restored.items()} == dict.fromkeys(of_a, "history")
    assert all(restored[p]["offset"] >= (held[p] or 0) > 0 for p in of_a)
    # The first records b fetched from each taken-over partition start at the store's offset, never at 0.
    first: dict[int, int] = {}
    after = False
    for ln in bed.log_lines("b"):
        if ln.get("event") == "partition_restored" and ln["partition"] in of_a:
            after = True
        if after and ln.get("event") == "batch":
            for p, (start, _) in ln["offsets"].items():
                first.setdefault(int(p), start)
    assert {p: first[p] for p in of_a if p in first} == {p: restored[p]["offset"] for p in of_a if p in first}
    assert first and 0 not in [first[p] for p in of_a if p in first]
    assert not [ln for ln in lines if ln.get("event") == "history_replay" and ln["partition"] in of_a]


class BusyLoads(HistoryStore):
    """A store whose reads, once ``MARKER`` exists in its folder, first hold every thread of Polars' pool for
    ``HOLD_S / 4`` seconds (one query, an expression per thread, each waiting): a stand-in for a large history's
    scans and pruning, which is what starved live batches (Polars has one pool per process). A marker file, not
    an attribute, because the engine loads a rule change's views in a worker process that opens the store again
    from its class and URL."""

    HOLD_S = 6.0
    MARKER = "BUSY"

    def view(self, partition: int, parallel: str = "auto") -> Any:
        # Every read of a partition goes through here: a whole load, and a rule change's delta.
        if (Path(self.url) / self.MARKER).exists():
            import polars as pl

            def hold(s: pl.Series) -> pl.Series:
                time.sleep(self.HOLD_S / 4)  # four partitions: about HOLD_S in all
                return s

            width = pl.thread_pool_size()
            frame = pl.DataFrame({f"c{i}": [i] for i in range(width)})
            frame.select(pl.col(f"c{i}").map_batches(hold, return_dtype=pl.Int64) for i in range(width))
        return super().view(partition, parallel)


@pytest.mark.exclusive
def test_a_rule_edit_while_events_stream_is_built_from_the_store_and_live_events_keep_their_latency(
    bed: Any, kit: Any, tmp_path: Any
) -> None:
    from prometheus_client import CollectorRegistry

    from screener.alerts.store import SqlStore
    from screener.engine import Engine
    from screener.metrics import Metrics

    settings = bed.settings(snapshot_interval_s=0.5)
    history = BusyLoads(str(tmp_path / "history"))
    store = SqlStore(settings.database_url)
    engine = Engine(settings, store, metrics=Metrics(CollectorRegistry()), history=history)
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        people = [f"H{i:04d}" for i in range(300)]
        bed.publish([e for p in people for e in kit.patient_events(p, icd10="I10")])  # hypertensive, not diabetic
        kit.wait_for(lambda: engine.caught_up and engine.records_processed >= 600, 60, "the history read")
        kit.wait_for(
            lambda: all(part.saved_offset == part.offset for part in list(engine._parts.values())),
            30,
            "the store to hold every partition",
        )
        (tmp_path / "history" / BusyLoads.MARKER).touch()
        edited = time.monotonic()
        (bed.rules_dir / "htn.yaml").write_text(kit.HYPERTENSION.replace("MIN_AGE", "18"))
        kit.wait_for(lambda: engine.rebuilding, 20, "the rebuild to start")
        latencies = []
        for i in range(3):  # probes during the rebuild, for the study in force
            sent = time.monotonic()
            bed.publish(kit.patient_events(f"PROBE{i}"))
            kit.wait_for(lambda i=i: (STUDY, f"PROBE{i}") in bed.matches(), 30, f"probe {i}", interval=0.02)
            latencies.append(time.monotonic() - sent)
            assert engine.rebuilding, "the probe was matched while the rebuild was still running"
        kit.wait_for(
            lambda: len([r for r in bed.matches() if r[0] == "TEST-HTN"]) >= len(people), 60, "everyone screened"
        )
        rebuild_s = time.monotonic() - edited
        htn = {p for s, p in bed.matches() if s == "TEST-HTN"}
        assert htn == set(people), "the new study was screened for everyone (and only the hypertensive match)"
        assert rebuild_s >= BusyLoads.HOLD_S
        # Before the worker process, the rebuild's Polars work shared the engine's thread pool: probes waited
        # 2-6 s behind it (a 4.5 s p99 at 200k patients).
        assert max(latencies) < 1.0 < rebuild_s / 6, (latencies, rebuild_s)
        assert engine.metrics.registry.get_sample_value("screener_history_replays_total", {"reason": "rebuild"}) is None
    finally:
        stop.set()
        thread.join(timeout=30)
        store.close()


def test_healthz_says_503_while_the_broker_is_down_and_sigterm_still_exits_in_time(
    bed: Any, kit: Any, tmp_path: Any
) -> None:
    """Issue 17: with the broker down for 20 s /healthz stayed 200 and `screener run` ignored SIGTERM for 7 s+."""
    import json
    import socket
    import urllib.error
    import urllib.request

    from screener.bus import EmbeddedBroker, ensure_topics

    own = EmbeddedBroker(log_path=tmp_path / "own-broker.log")
    own.start()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    try:
        s = bed.settings(bootstrap_servers=own.bootstrap)
        ensure_topics(own.bootstrap, {s.events_topic: 4, s.dlq_topic: 4, s.matches_topic: 4})
        proc = bed.start_engine(
            "h", bootstrap_servers=own.bootstrap, metrics_port=port, health_broker_timeout_s=2.0, stop_timeout_s=5.0
        )

        def health() -> tuple[int, dict[str, Any]] | None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as exc:
                return exc.code, json.loads(exc.read())
            except OSError:
                return None

        kit.wait_for(lambda: (h := health()) and h[0] == 200 and h[1]["partitions"], 60, "a healthy engine")
        own.stop()
        _, doc = kit.wait_for(lambda: (h := health()) and h[0] == 503 and h, 30, "/healthz to say 503")
        assert doc["status"] == "unavailable" and "broker" in doc["reason"]
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        assert time.monotonic() - sent < 5.0 + 3.0, "the stop is bounded by stop_timeout_s"
    finally:
        own.stop()
