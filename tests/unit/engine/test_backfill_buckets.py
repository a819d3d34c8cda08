"""The bulk backfill sorts each partition's facts a patient bucket at a time (ranges of ids in sorted order, the
bounds taken from the first chunk) and puts the buckets end to end: whatever the number of buckets and whichever
chunk gives the bounds, the store is the one a single sort gives, and a bucket never holds an id that sorts
before an id of an earlier bucket."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from screener.history import _partitioner as partitioner
from screener.history import backfill as bf
from screener.history import open_store
from tests.unit.engine.test_backfill_bulk import assert_same_store, mixed_history, omop_rows


@settings(deadline=None)  # a first example's timing on a loaded host is no failure (no timed assertions here)
@given(
    first=st.lists(st.text(min_size=0, max_size=6), min_size=1, max_size=40),
    later=st.lists(st.one_of(st.none(), st.text(min_size=0, max_size=6)), max_size=60),
    buckets=st.integers(min_value=1, max_value=9),
)
def test_buckets_follow_the_ids_sorted_order_with_nulls_first(
    first: list[str], later: list[str | None], buckets: int
) -> None:
    cache = partitioner._Partitioner(3, buckets)
    cache.bucket(pl.Series(first, dtype=pl.String))  # the first chunk gives the bounds
    ids = pl.Series([*later, *first], dtype=pl.String)
    got = pl.DataFrame({"id": ids, "bucket": cache.bucket(ids)}).sort("id", nulls_last=False, maintain_order=True)
    assert got["bucket"].is_sorted() and got["bucket"].min() == 0
    assert int(got["bucket"].max()) < buckets  # type: ignore[arg-type]  # polars types Series.max() as any scalar
    assert got.filter(pl.col("id").is_null())["bucket"].to_list() == [0] * ids.null_count()


_RUNS = ("rows-40000", "second", "resent", "rows-0", "rows-1073741824")
#: buckets 8 (the default) with a budget that runs out part way, a second backfill and re-sent events in the
#: loop; facts all spilled or all held, and 2 or 64 buckets, in CI (tests/_support/marks.py)
_CASES = [
    *((8, run) for run in _RUNS[:3]),
    *(pytest.param(8, run, marks=pytest.mark.slow) for run in _RUNS[3:]),
    *(pytest.param(n, run, marks=pytest.mark.slow) for n in (2, 64) for run in _RUNS),
]


@pytest.mark.parametrize(("buckets", "run"), _CASES)
def test_any_number_of_buckets_gives_the_store_one_sort_gives(
    buckets: int, run: str, make_event: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pure appends of rows (several buckets per chunk and partition; facts spilled, held or both), then a second
    backfill folded over them, and a fresh backfill with re-sent events (de-duplicated): the same store as with
    one bucket (one sort of the whole partition)."""

    def stores(*runs: tuple[list[pl.DataFrame], int]) -> None:
        made = []
        for n in (1, buckets):
            monkeypatch.setattr(partitioner, "BUCKETS", n)
            made.append(store := open_store(tmp_path / f"{run}-{n}"))
            for frames, memory in runs:
                bf.backfill_frames(store, frames, partitions=3, start_offsets={}, memory_bytes=memory)
            assert_same_store(made[0], store, 3)
            for p in range(3):
                assert store.scan([p])[1].collect()["patient_id"].is_sorted()

    if run.startswith("rows-"):
        stores((omop_rows(70), int(run.removeprefix("rows-"))))
    elif run == "second":
        stores((omop_rows(70), 40_000), (mixed_history(make_event), 1 << 30))
    else:
        stores(([*omop_rows(70), *mixed_history(make_event)], 1 << 30))


def test_the_bounds_split_a_partitions_facts_into_several_buckets(tmp_path: Path) -> None:
    """The test above compares something: with 8 buckets, a partition's facts of one chunk come in several."""
    cache = partitioner._Partitioner(2, 8)
    parts = [part for frame in omop_rows(300) for part in bf._decoded_parts(frame, cache) if part.facts]
    assert len(parts) >= 4 and all(len(part.facts) > 2 for part in parts)
    for part in parts:
        whole = part.facts_in_order()
        assert whole["seq"].is_sorted() and whole.height == sum(f.height for f in part.facts.values())


@pytest.mark.parametrize("patients", [30, 20_000])
def test_slots_are_each_ids_own_whether_rows_or_distinct_ids_are_hashed(patients: int) -> None:
    """A chunk of a few patients' many rows (the distinct ids hashed, joined back) or of many patients (every row
    hashed): each row's slot is its id's partition (kafka-python's murmur2; a null in 0) and bucket."""
    from kafka.partitioner.default import murmur2 as reference

    cache = partitioner._Partitioner(5, 8)
    cache.bucket(pl.Series([str(i) for i in range(0, 20_000, 7)]))
    i = pl.int_range(6000, dtype=pl.Int64, eager=True)
    ids = ((i * 7919) % patients).cast(pl.String).scatter([3, 5000], None)
    got = cache.slots(ids).to_list()
    for idx in (0, 3, 1, 2, 4999, 5000, 5999, *range(100, 6000, 97)):
        key = ids[idx]
        part = 0 if key is None else (reference(key.encode()) & 0x7FFFFFFF) % 5
        assert got[idx] == part * 8 + cache.bucket(pl.Series([key], dtype=pl.String))[0], idx
    assert cache.of_ids(ids).to_list() == [s // 8 for s in got]
