"""The bulk backfill (one fold straight to each partition's base) writes the history the store's general path
(one segment per chunk and partition, then compaction) writes: same persons, facts (in order), tombstones and
offsets, for pure appends and for a history with corrections, retractions, merges, flags and replays; and every
patient lands in the partition the producer would have sent its events to."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from kafka.partitioner.default import DefaultPartitioner

from screener.events import dump_event
from screener.history import HistoryStore, StoreError, open_store
from screener.history.backfill import backfill_frames
from screener.testing import InMemoryLog, InMemoryProducer
from tests._support.marks import first_fast

DATA = Path(__file__).parents[2] / "data" / "omop"
NOW = datetime(2026, 6, 1, tzinfo=UTC)


def json_frame(events: list[Any]) -> pl.DataFrame:
    return pl.DataFrame(
        {"key": [e.patient_id.encode() for e in events], "value": [dump_event(e) for e in events]},
        schema={"key": pl.Binary, "value": pl.Binary},
    )


def assert_same_store(a: HistoryStore, b: HistoryStore, partitions: int) -> None:
    for p in range(partitions):
        assert a.offset(p) == b.offset(p)
        assert a.segments(p) == b.segments(p) == 0
        va, vb = a.view(p), b.view(p)
        assert va is not None and vb is not None
        persons_a, facts_a = pl.collect_all([va[0], va[1]])
        persons_b, facts_b = pl.collect_all([vb[0], vb[1]])
        assert persons_a.equals(persons_b), p
        assert facts_a.equals(facts_b), p  # same rows in the same order
        assert va[2].sort("event_id").equals(vb[2].sort("event_id"))


def mixed_history(make_event: Any) -> list[pl.DataFrame]:
    """Three chunks: a pure-append population, then corrections, an entered-in-error, a replay, flags, a merge."""
    people = [f"M{i}" for i in range(40)]
    first = [make_event(kind="person", patient_id=p, person={"birth_date": "1960-02-03"}, code=None) for p in people]
    first += [
        make_event(event_id=f"f-{p}-{k}", patient_id=p, code={"system": "ICD10", "value": f"E1{k}.9"})
        for p in people
        for k in range(3)
    ]
    first.append(make_event(event_id="q1-fact", patient_id="Q1", code={"system": "ICD10", "value": "N18.3"}))
    second = [
        make_event(event_id="f-M1-0-fix", patient_id="M1", corrects="f-M1-0", code={"system": "ICD10", "value": "I10"}),
        make_event(
            event_id="f-M2-1", patient_id="M2", status="entered-in-error", code={"system": "ICD10", "value": "E11.9"}
        ),
        make_event(event_id="f-M3-2", patient_id="M3", code={"system": "ICD10", "value": "J45"}),  # a re-send
        make_event(kind="consent", patient_id="M4", code={"system": "local", "value": "do-not-contact"}),
        # partition 2 stays pure appends (no retraction or merge): a re-send and a flag there take the fast fold
        make_event(event_id="f-M7-0", patient_id="M7", code={"system": "ICD10", "value": "K21.9"}),
        make_event(kind="consent", patient_id="M9", code={"system": "local", "value": "do-not-contact"}),
        make_event(kind="person", patient_id="M5", person={"birth_date": "1961-01-01", "sex": "F"}, code=None),
    ]
    # M6 and Q1 (facts only) share partition 0 of 3 (a merge is folded within a partition)
    third = [make_event(kind="person", patient_id="M6", person={"birth_date": "1960-02-03", "merged_from": "Q1"})]
    return [json_frame(first), json_frame(second), json_frame(third)]


def test_bulk_equals_segments_and_compaction_on_a_mixed_history(make_event: Any, tmp_path: Path) -> None:
    chunks = mixed_history(make_event)
    starts = {0: 12, 1: 0, 2: 40}
    stores = [open_store(tmp_path / name) for name in ("general", "bulk")]
    general = backfill_frames(stores[0], chunks, partitions=3, start_offsets=starts, bulk=False)
    bulk = backfill_frames(stores[1], chunks, partitions=3, start_offsets=starts)
    assert (bulk.accepted, bulk.rejected, bulk.per_partition) == (general.accepted, 0, general.per_partition)
    # the writing step (bulk: the partitions' bases; general: the compactions) is timed within the whole
    assert all(0 < r.write_seconds < r.seconds for r in (general, bulk))
    assert_same_store(stores[0], stores[1], 3)
    persons, facts = stores[1].scan()
    got_p, got_f = persons.collect(), facts.collect()
    # the fold really happened: correction, retraction, replay, flag, merge
    ids = set(got_f["event_id"])
    assert "f-M1-0" not in ids and "f-M1-0-fix" in ids and "f-M2-1" not in ids
    assert got_f.filter(pl.col("event_id") == "f-M3-2")["code"].to_list() == ["J45"]
    assert "Q1" not in set(got_p["patient_id"]) and got_p.height == 40
    assert got_f.filter(pl.col("event_id") == "q1-fact")["patient_id"].to_list() == ["M6"]
    assert got_p.filter(pl.col("patient_id").is_in(["M4", "M9"]))["do_not_contact"].to_list() == [True, True]
    assert got_f.filter(pl.col("event_id") == "f-M7-0")["code"].to_list() == ["K21.9"]  # the last copy, once
    assert got_p.filter(pl.col("patient_id") == "M5")["sex"].to_list() == ["F"]
    assert [stores[1].offset(p) for p in range(3)] == [12, 0, 40]


def omop_rows(chunk: int) -> list[pl.DataFrame]:
    """Event-row frames (the OMOP connector's column-wise path) of 600 conditions and 300 measurements over 60
    persons, ``chunk`` source rows a frame, a person's rows spread over several frames."""
    from connectors.omop import table_rows

    concepts = pl.DataFrame(
        {
            "concept_id": [1, 2, 3],
            "c_system": ["SNOMED", "SNOMED", "LOINC"],
            "c_value": ["44054006", "38341003", "2160-0"],
        }
    )
    i = pl.int_range(600, dtype=pl.Int64, eager=True)
    cond = pl.DataFrame(
        {
            "condition_occurrence_id": i,
            "person_id": i % 60 + 1,
            "condition_concept_id": i % 2 + 1,
            "condition_start_date": pl.date_range(pl.date(2020, 1, 1), pl.date(2021, 8, 22), eager=True).head(600),
        }
    )
    meas = pl.DataFrame(
        {
            "measurement_id": i.head(300) + 10_000,
            "person_id": i.head(300) % 60 + 1,
            "measurement_concept_id": [3] * 300,
            "measurement_date": [date(2022, 5, 1)] * 300,
            "value_as_number": (i.head(300) % 90 + 40).cast(pl.Float64),
            "unit_source_value": ["umol/L"] * 300,
        }
    )
    person = pl.DataFrame(
        {
            "person_id": pl.int_range(1, 61, eager=True),
            "gender_concept_id": [8507, 8532] * 30,
            "year_of_birth": [1950] * 60,
        }
    )
    out = []
    for name, df in (("person", person), ("condition_occurrence", cond), ("measurement", meas)):
        out += [table_rows(df.slice(k, chunk), name, concepts, NOW) for k in range(0, df.height, chunk)]
    return out


def test_bulk_equals_the_general_path_on_omop_rows_and_on_a_second_backfill(make_event: Any, tmp_path: Path) -> None:
    stores = [open_store(tmp_path / name) for name in ("general", "bulk")]
    for store, bulk in zip(stores, (False, True), strict=True):
        result = backfill_frames(store, omop_rows(70), partitions=4, start_offsets={1: 3}, bulk=bulk)
        assert (result.accepted, result.rejected) == (960, 0)
    assert_same_store(stores[0], stores[1], 4)
    assert stores[1].scan()[1].select(pl.len()).collect().item() == 900
    # a second backfill into a store that already holds history folds over it (the general path, inside bulk)
    for store, bulk in zip(stores, (False, True), strict=True):
        backfill_frames(store, mixed_history(make_event), partitions=4, start_offsets={1: 3}, bulk=bulk)
    assert_same_store(stores[0], stores[1], 4)
    assert stores[1].scan()[0].collect().height == 60 + 41


def test_frames_given_as_functions_are_made_on_the_decode_workers_and_give_the_same_store(
    make_event: Any, tmp_path: Path
) -> None:
    """A source may give each frame as the function that makes it (the OMOP source maps its chunks so): the
    store is the one the frames themselves give, in order, and the functions run off the reading thread."""
    import threading

    frames = [*omop_rows(70), pl.DataFrame(schema=omop_rows(70)[0].schema), *mixed_history(make_event)]
    threads: list[str] = []

    def made(frame: pl.DataFrame) -> Any:
        def make() -> pl.DataFrame:
            threads.append(threading.current_thread().name)
            return frame

        return make

    stores = [open_store(tmp_path / name) for name in ("frames", "functions")]
    plain = backfill_frames(stores[0], frames, partitions=4, start_offsets={1: 3}, workers=2)
    lazy = backfill_frames(stores[1], [made(f) for f in frames], partitions=4, start_offsets={1: 3}, workers=2)
    assert (lazy.events_in, lazy.accepted, lazy.rejected) == (plain.events_in, plain.accepted, plain.rejected)
    assert lazy.per_partition == plain.per_partition and lazy.accepted > 960
    assert_same_store(stores[0], stores[1], 4)
    assert len(threads) == len(frames) and all(t.startswith("backfill-decode") for t in threads)


@pytest.mark.parametrize("rows", first_fast(True, False))  # the event rows (--into-store) here, JSON frames in CI
def test_the_omop_source_stacks_small_tables_into_one_frame_with_the_same_store(rows: bool, tmp_path: Path) -> None:
    """Consecutive small chunks of the fixture's tables are mapped into one frame (the person table's text-form
    rows apart from the typed ones), never more than ``chunk_rows`` rows; the store is the one a frame per row
    gives."""
    from connectors.omop import TABLES
    from connectors.omop import _history_frames as history_frames

    def frames(chunk_rows: int) -> list[pl.DataFrame]:
        made = history_frames(DATA, tables=",".join(TABLES), chunk_rows=chunk_rows, now=NOW, rows=rows)
        return [f() for f in made]  # type: ignore[operator]  # the source gives each frame as its maker

    stacked, one_by_one, tens = frames(10_000), frames(1), frames(10)
    source_rows = sum(
        pl.read_csv(p, infer_schema_length=None).height for p in DATA.glob("*.csv") if p.stem != "concept"
    )
    assert len(stacked) == (2 if rows else 1) and len(one_by_one) == source_rows
    assert len(one_by_one) > len(tens) > len(stacked) and all(f.height <= 10 for f in tens)
    stores = [open_store(tmp_path / name) for name in ("one-by-one", "stacked", "tens")]
    results = [
        backfill_frames(s, f, partitions=3, start_offsets={})
        for s, f in zip(stores, (one_by_one, stacked, tens), strict=True)
    ]
    assert results[0].accepted >= 16 and len({(r.accepted, r.rejected) for r in results}) == 1
    assert_same_store(stores[0], stores[1], 3)
    assert_same_store(stores[0], stores[2], 3)


def test_every_patient_is_in_the_partition_its_live_events_go_to(tmp_path: Path) -> None:
    """The engine owning partition p reads store partition p: each backfilled patient must be there, where the
    connectors' producer (key = patient id, kafka-python's default partitioner) sends that patient's events."""
    store = open_store(tmp_path / "s")
    backfill_frames(store, omop_rows(50), partitions=5, start_offsets={})
    log, partitioner = InMemoryLog(5), DefaultPartitioner()
    producer = InMemoryProducer(log)
    seen = 0
    for p in range(5):
        for pid in store.scan([p])[0].collect()["patient_id"].to_list():
            key = pid.encode()
            assert partitioner(key, list(range(5)), list(range(5))) == p, pid
            producer.send("ev", key=key, value=b"{}")
            seen += 1
    assert seen == 60 and len({p for p in range(5) if store.scan([p])[0].collect().height}) > 1
    producer.flush()
    for p in range(5):
        keys = {r.key.decode() for r in log.topics["ev"][p] if r.key is not None}
        assert keys == set(store.scan([p])[0].collect()["patient_id"].to_list())


def test_bulk_base_is_one_file_sorted_by_patient(make_event: Any, tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    backfill_frames(store, mixed_history(make_event), partitions=1, start_offsets={})
    doc = store.manifest(0)
    assert doc is not None and doc["segments"] == [] and doc["base"]
    files = sorted(p.name for p in (tmp_path / "s" / "p-00000" / doc["base"]).iterdir())
    assert files == ["facts.parquet", "persons.parquet", "retracted.parquet"]
    ids = store.scan([0])[1].collect()["patient_id"]
    assert ids.is_sorted()


@pytest.fixture(scope="module")
def s3_options() -> Iterator[dict[str, str]]:
    from screener.testing import s3_server

    with s3_server(bucket="bulk-unit") as options:
        yield options


@pytest.mark.slow  # the local-file cases above in the loop; this store on S3 (a real server, ~4 CPU-s) in CI
def test_bulk_into_s3_equals_the_general_path(s3_options: dict[str, str], make_event: Any, tmp_path: Path) -> None:
    """The base is streamed to the object store through Polars' own cloud writer (a real S3 server on loopback)."""
    stores = [open_store(f"s3://bulk-unit/{name}", s3_options) for name in ("general", "bulk")]
    for store, bulk in zip(stores, (False, True), strict=True):
        backfill_frames(store, omop_rows(100), partitions=2, start_offsets={0: 1}, bulk=bulk)
        backfill_frames(store, mixed_history(make_event), partitions=2, start_offsets={0: 1}, bulk=bulk)
    assert_same_store(stores[0], stores[1], 2)
    assert stores[1].scan()[1].select(pl.len()).collect().item() > 900


def test_a_store_already_past_the_start_offset_is_refused_not_dropped(make_event: Any, tmp_path: Path) -> None:
    store = open_store(tmp_path / "s")
    store.mark(1, 500)  # an engine has consumed partition 1 up to 500
    for bulk in (True, False):
        with pytest.raises(StoreError, match=r"partition 1: the store is at offset 500, past the backfill's start 0"):
            backfill_frames(store, mixed_history(make_event), partitions=3, start_offsets={}, bulk=bulk)
    assert store.manifest(0) is None and store.offset(1) == 500  # nothing written
    backfill_frames(store, mixed_history(make_event), partitions=3, start_offsets={1: 500})
    assert store.scan([1])[0].collect().height > 5


def test_facts_held_in_memory_spilled_or_both_give_the_same_store(make_event: Any, tmp_path: Path) -> None:
    """The bulk load keeps facts in memory up to its budget and spills the rest to local files: all in memory,
    all spilled and a budget that runs out part way write the same store."""
    from screener.history import _bulk

    write_ipc = pl.DataFrame.write_ipc
    stores, spills = [], []
    for name, budget in (("memory", _bulk.DEFAULT_MEMORY_BYTES), ("spilled", 0), ("mixed", 40_000)):
        files: list[int] = []

        def counting(self: pl.DataFrame, *args: Any, files: list[int] = files, **kwargs: Any) -> Any:
            files.append(self.height)
            return write_ipc(self, *args, **kwargs)

        store = open_store(tmp_path / name)
        pl.DataFrame.write_ipc = counting  # type: ignore[method-assign]
        try:
            backfill_frames(store, omop_rows(70), partitions=3, start_offsets={}, memory_bytes=budget)
        finally:
            pl.DataFrame.write_ipc = write_ipc  # type: ignore[method-assign]
        stores.append(store)
        spills.append(len(files))
    assert spills[0] == 0 and spills[1] >= 14 and 0 < spills[2] < spills[1]
    for other in stores[1:]:
        assert_same_store(stores[0], other, 3)


def test_chunks_decoded_on_several_threads_give_the_store_one_thread_gives(make_event: Any, tmp_path: Path) -> None:
    """Chunks are decoded on worker threads and may finish out of order; they are applied in order, so the store
    (facts in order, persons, offsets) does not depend on the number of threads; the same for JSON frames."""
    for name, frames in (("rows", lambda: omop_rows(40)), ("json", lambda: mixed_history(make_event))):
        stores = []
        for workers in (1, 3):
            store = open_store(tmp_path / f"{name}-{workers}")
            backfill_frames(store, frames(), partitions=3, start_offsets={}, workers=workers)
            stores.append(store)
        assert_same_store(stores[0], stores[1], 3)


# --- the allocator setting of ``screener backfill ... --into-store`` (screener._allocator, screener.cli) ---


@pytest.mark.parametrize(
    ("argv", "environ", "expected"),
    [
        (["backfill", "omop", "/x", "--into-store", "/s"], {}, True),
        (["backfill", "fhir", "/x", "--into-store=/s"], {}, True),
        (["backfill", "omop", "/x"], {}, False),  # to Kafka: the engine's allocator settings
        (["screen", "rules.yaml", "--into-store", "/s"], {}, True),  # a batch screen: the same setting
        (["rules", "diff", "a.yaml", "b.yaml"], {}, True),
        (["feasibility", "a.yaml"], {}, True),
        (["rules", "check", "a.yaml"], {}, False),
        (["run"], {}, False),  # the service keeps Polars' default
        ([], {}, False),
        (["backfill", "omop", "/x", "--into-store", "/s"], {"_RJEM_MALLOC_CONF": "narenas:2"}, False),
        (["backfill", "omop", "/x", "--into-store", "/s"], {"_RJEM_MALLOC_CONF": ""}, False),
    ],
)
def test_backfill_into_store_keeps_freed_pages_unless_the_user_chose(
    argv: list[str], environ: dict[str, str], expected: bool
) -> None:
    from screener import _allocator

    env = dict(environ)
    added = _allocator.apply(argv, env)
    if expected:
        assert added == {"_RJEM_MALLOC_CONF": "dirty_decay_ms:10000,muzzy_decay_ms:10000"}
        assert env["_RJEM_MALLOC_CONF"] == "dirty_decay_ms:10000,muzzy_decay_ms:10000"
    else:
        assert added == {}
        assert env == environ


_SEEN_AT_POLARS_IMPORT = """
import importlib.abc, os, sys
seen = []
class Watch(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "polars" and not seen:
            seen.append(os.environ.get("_RJEM_MALLOC_CONF"))
        return None
sys.meta_path.insert(0, Watch())
sys.argv = ["screener", *sys.argv[1:]]
import screener.cli
print(repr(seen[0]))
"""


@pytest.mark.parametrize(
    ("args", "user", "expected"),
    first_fast(  # a Python process each (~1 CPU-s): one in the loop, the others in CI (tests/_support/marks.py)
        (["backfill", "omop", "/x", "--into-store", "/s"], None, "'dirty_decay_ms:10000,muzzy_decay_ms:10000'"),
        (["backfill", "omop", "/x", "--into-store", "/s"], "narenas:2", "'narenas:2'"),
        (["screen", "rules.yaml"], None, "'dirty_decay_ms:10000,muzzy_decay_ms:10000'"),
        (["run"], None, "None"),
    ),
)
def test_the_cli_sets_the_allocator_before_polars_loads(args: list[str], user: str | None, expected: str) -> None:
    """What jemalloc will read: the variable as it is when ``polars`` is first imported by ``screener.cli``."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "_RJEM_MALLOC_CONF"}
    if user is not None:
        env["_RJEM_MALLOC_CONF"] = user
    out = subprocess.run(
        [sys.executable, "-c", _SEEN_AT_POLARS_IMPORT, *args], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected
