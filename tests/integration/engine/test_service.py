"""The screening service as real processes on the session broker: events in, matches out, crashes,
two instances in a group, rule hot reload. (The time-driven test runs the engine in-process with a clock.)"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Any

import pytest

pytestmark = pytest.mark.integration

STUDY = "TEST-ADULT-DM"


def test_published_event_becomes_a_match_in_the_store_and_on_the_matches_topic(bed: Any, kit: Any) -> None:
    bed.start_engine("a")
    bed.publish(
        kit.patient_events("P-MATCH-1") + kit.patient_events("P-NOMATCH-1", icd10="J45"),
        raw=[b'{"kind": "vitals", "patient_id": "X"}'],
    )
    kit.wait_for(lambda: bed.matches(), 60, "a match in the worklist")
    assert bed.matches() == [(STUDY, "P-MATCH-1")]
    s = bed.settings()
    msgs = kit.wait_for(lambda: bed.topic_messages(s.matches_topic), 20, "a message on the matches topic")
    assert [(m["study_id"], m["patient_id"], m["outcome"]) for _, m in msgs] == [(STUDY, "P-MATCH-1", "eligible")]
    assert msgs[0][0] == b"P-MATCH-1" and msgs[0][1]["rule_hash"]
    assert {c["name"] for c in msgs[0][1]["criteria"]} >= {"adult", "diabetic"}
    dlq = kit.wait_for(lambda: bed.topic_messages(s.dlq_topic), 20, "the dead letter")
    assert len(dlq) == 1 and dlq[0][1]["reason"] and dlq[0][1]["payload"].startswith('{"kind": "vitals"')
    # No patient identifier in any log line.
    text = (bed.root / "engine-a.log").read_text()
    assert "P-MATCH-1" not in text and "P-NOMATCH-1" not in text
    assert any(line.get("event") == "batch" and "offsets" in line for line in bed.log_lines("a"))


def test_kill_9_mid_stream_then_restart_keeps_every_match_exactly_once(bed: Any, kit: Any) -> None:
    expected = {(STUDY, f"K{i:04d}") for i in range(400)}
    # overlap_min_records=1: every batch is screened on the batch thread while the next is polled, so the kill
    # and the rebalances below find batches in flight.
    proc = bed.start_engine("a", batch_max_records=20, overlap_min_records=1)
    bed.publish([e for i in range(100) for e in kit.patient_events(f"K{i:04d}")])
    kit.wait_for(lambda: len(bed.matches()) >= 20, 60, "the first matches")
    bed.publish([e for i in range(100, 400) for e in kit.patient_events(f"K{i:04d}")])
    kit.wait_for(lambda: len(bed.matches()) >= 120, 60, "more matches")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    assert len(bed.matches()) < len(expected), "the engine finished before it was killed"
    # The restarted engine sweeps every second for matches the killed one stored but never saw acknowledged.
    bed.start_engine("b", matches_sweep_interval_s=1, matches_sweep_settle_s=1, overlap_min_records=1)
    kit.wait_for(lambda: len(bed.matches()) >= len(expected), 90, "every match after the restart")
    rows = bed.matches()
    assert set(rows) == expected and len(rows) == len(expected)
    topic = bed.settings().matches_topic
    want = {p for _, p in expected}
    published = kit.wait_for(
        lambda: (m := [m["patient_id"] for _, m in bed.topic_messages(topic, timeout_s=5)]) and set(m) == want and m,
        60,
        "every match on the matches topic",
    )
    # The topic is at least once: only a kill between the broker's acknowledgement and the store's mark (a few
    # milliseconds of one batch of at most 20 records) can repeat a match, and only once.
    repeated = [p for p, n in Counter(published).items() if n > 1]
    assert len(repeated) <= 20 and all(n <= 2 for n in Counter(published).values()), repeated


def test_two_engines_split_partitions_and_one_takes_over_when_the_other_dies(bed: Any, kit: Any) -> None:
    a = bed.start_engine("a", batch_max_records=20, overlap_min_records=1)
    bed.start_engine("b", batch_max_records=20, overlap_min_records=1)

    def split() -> bool:
        def last(tag: str) -> list[int]:
            got = [ln["partitions"] for ln in bed.log_lines(tag) if ln.get("event") == "partitions_assigned"]
            return got[-1] if got else []

        pa, pb = last("a"), last("b")
        return bool(pa) and bool(pb) and sorted(pa + pb) == [0, 1, 2, 3]

    bed.publish([e for i in range(50) for e in kit.patient_events(f"G{i:04d}")])
    kit.wait_for(split, 90, "both engines to own partitions")
    kit.wait_for(lambda: len(bed.matches()) >= 50, 60, "the first matches")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait(timeout=10)
    bed.publish([e for i in range(50, 300) for e in kit.patient_events(f"G{i:04d}")])
    expected = {(STUDY, f"G{i:04d}") for i in range(300)}
    kit.wait_for(lambda: len(bed.matches()) >= len(expected), 120, "the survivor to take over")
    rows = bed.matches()
    assert set(rows) == expected and len(rows) == len(expected)
    taken = [ln["partitions"] for ln in bed.log_lines("b") if ln.get("event") == "partitions_assigned"]
    assert sorted(taken[-1]) == [0, 1, 2, 3]


def test_rule_added_while_running_is_screened_retrospectively_and_a_broken_edit_keeps_it(bed: Any, kit: Any) -> None:
    bed.start_engine("a")
    bed.publish(kit.patient_events("R1", icd10="I10") + kit.patient_events("R2", icd10="E11.9"))
    kit.wait_for(lambda: bed.matches() == [(STUDY, "R2")], 60, "the first study's match")
    (bed.rules_dir / "htn.yaml").write_text(kit.HYPERTENSION.replace("MIN_AGE", "18"))
    kit.wait_for(lambda: ("TEST-HTN", "R1") in bed.matches(), 60, "the retrospective match for the new study")
    # Edit to a broken file: reported and counted, the previous version keeps screening.
    (bed.rules_dir / "htn.yaml").write_text(kit.HYPERTENSION.replace("MIN_AGE", "eighteen years"))
    kit.wait_for(
        lambda: any(ln.get("event") == "rule_load_error" for ln in bed.log_lines("a")), 30, "the load error in the log"
    )
    bed.publish(kit.patient_events("R3", icd10="I10"))
    kit.wait_for(lambda: ("TEST-HTN", "R3") in bed.matches(), 60, "a match from the previous version")
    # A valid edit (older patients only) is screened retrospectively too.
    bed.publish(kit.patient_events("R4", icd10="I10", birth="1950-01-01"))
    (bed.rules_dir / "htn.yaml").write_text(kit.HYPERTENSION.replace("MIN_AGE", "70"))
    kit.wait_for(lambda: ("TEST-HTN", "R4") in bed.matches(), 60, "the edited study")
    rows = bed.matches()
    assert sorted(rows) == sorted({(STUDY, "R2"), ("TEST-HTN", "R1"), ("TEST-HTN", "R3"), ("TEST-HTN", "R4")})
    assert any(ln.get("event") == "rule_kept_previous_version" for ln in bed.log_lines("a"))


def test_patient_turning_18_is_matched_at_the_next_scheduled_rescreen(bed: Any, kit: Any) -> None:
    import threading
    from datetime import UTC, datetime, timedelta

    from prometheus_client import CollectorRegistry

    from screener.alerts.store import SqlStore
    from screener.clock import FixedClock
    from screener.engine import Engine
    from screener.metrics import Metrics

    clock = FixedClock(datetime(2026, 6, 1, 20, tzinfo=UTC))  # first scheduled re-screen: 02:00 tomorrow
    settings = bed.settings(rescreen_interval_s=6 * 3600)
    store = SqlStore(settings.database_url)
    engine = Engine(settings, store, metrics=Metrics(CollectorRegistry()), clock=clock)
    stop = threading.Event()
    thread = threading.Thread(target=engine.run, args=(stop,), daemon=True)
    thread.start()
    try:
        bed.publish(kit.patient_events("T1", birth="2008-06-02") + kit.patient_events("T0", birth="1990-01-01"))
        kit.wait_for(lambda: bed.matches() == [(STUDY, "T0")], 60, "the adult's match")
        kit.wait_for(lambda: engine.state().persons.height == 2, 10, "both patients in state")
        clock.set(datetime(2026, 6, 2, 0, 5, tzinfo=UTC))  # T1's 18th birthday; the re-screen is not due yet
        loops = engine.loops
        kit.wait_for(lambda: engine.loops > loops + 5, 10, "a few engine loops")
        assert (STUDY, "T1") not in bed.matches()
        clock.advance(timedelta(hours=2))
        kit.wait_for(lambda: (STUDY, "T1") in bed.matches(), 30, "the match at the scheduled re-screen")
        assert engine.rescreens >= 1
    finally:
        stop.set()
        thread.join(timeout=30)
        store.close()


def test_sigterm_commits_and_snapshots_so_a_restart_restores_instead_of_replaying(bed: Any, kit: Any) -> None:
    config = bed.root / "engine.yaml"
    config.write_text("batch_max_records: 50\nsnapshot_interval_s: 3600\n")
    proc = bed.start_engine("a", config=str(config))
    bed.publish([e for i in range(30) for e in kit.patient_events(f"S{i:03d}")])
    kit.wait_for(lambda: len(bed.matches()) == 30, 60, "the matches")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0
    events = [ln.get("event") for ln in bed.log_lines("a")]
    assert "engine_stopped" in events and events.count("snapshot") >= 1
    bed.start_engine("b")
    bed.publish(kit.patient_events("S999"))
    kit.wait_for(lambda: (STUDY, "S999") in bed.matches(), 60, "the match after the restart")
    restored = [ln for ln in bed.log_lines("b") if ln.get("event") == "partition_restored"]
    assert restored and all(ln["source"] == "snapshot" for ln in restored if ln["committed"])
    assert len(bed.matches()) == 31
