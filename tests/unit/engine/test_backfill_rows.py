"""The column-wise backfill path (OMOP tables -> event rows -> store, no JSON) gives the event path's store."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from connectors.omop import TABLES, OmopSource, table_events, table_rows
from screener.history.rows import decode_rows
from screener.ingest import decode_batch

NOW = datetime(2026, 9, 1, tzinfo=UTC)
DATA = Path(__file__).parents[2] / "data" / "omop"


def both(df: pl.DataFrame, table: str, concepts: pl.DataFrame | None = None) -> tuple[object, object]:
    return decode_batch(table_events(df, table, concepts, NOW)["value"].to_list()), decode_rows(
        table_rows(df, table, concepts, NOW)
    )


def assert_same(a: object, b: object) -> None:
    for x, y in zip(a.frames, b.frames, strict=True):  # type: ignore[attr-defined]
        assert x.schema == y.schema
        assert x.equals(y)
    assert a.accepted == b.accepted  # type: ignore[attr-defined]
    assert [(i, e.message) for i, e in a.rejects] == [(i, e.message) for i, e in b.rejects]  # type: ignore[attr-defined]


def test_fixture_tables_decode_to_the_event_paths_frames() -> None:
    src = OmopSource(DATA)
    concepts = src.concepts()
    seen = 0
    for table in TABLES:
        for chunk in src.chunks(table):
            a, b = both(chunk, table, concepts)
            assert_same(a, b)
            seen += b.accepted  # type: ignore[attr-defined]
    assert seen >= 16  # every fixture row that has a person and a date


def test_bad_rows_are_rejected_with_the_event_models_reason_and_counted() -> None:
    persons = pl.DataFrame(
        {
            "person_id": [1, 2, 3, 4],
            "year_of_birth": [1970, 2200, 1980, 1500],  # born in the future / implausibly long ago
            "gender_concept_id": [8532, 8507, 8532, 8507],
        }
    )
    a, b = both(persons, "person")
    assert_same(a, b)
    assert [i for i, _ in b.rejects] == [1, 3]  # type: ignore[attr-defined]
    assert all("birth_date" in str(e) for _, e in b.rejects)  # type: ignore[attr-defined]
    assert b.slow == 2 and b.accepted == 2  # type: ignore[attr-defined]


def test_rows_the_checks_flag_but_the_event_model_accepts_join_in_order() -> None:
    obs = pl.DataFrame(
        {
            "observation_id": [1, 2, 3],
            "person_id": [7, 7, 8],
            "observation_concept_id": [0, 0, 0],
            "observation_date": ["2025-01-01", "2025-02-01", "2025-03-01"],
            "value_as_number": [None, float("inf"), 3.5],
            "value_as_string": ["  positive ", "x", None],  # edge whitespace: parse_event strips it
            "observation_source_value": ["a", "b", "c"],
        }
    )
    a, b = both(obs, "observation")
    assert_same(a, b)
    facts = b.facts  # type: ignore[attr-defined]
    assert facts["seq"].to_list() == [0, 1, 2] and b.slow == 1  # type: ignore[attr-defined]
    assert facts["text"].to_list() == ["positive", "x", None]  # a non-finite number falls back to the text
    assert facts["value"].to_list() == [None, None, 3.5]


def test_vectorised_murmur2_is_kafka_pythons() -> None:
    from kafka.partitioner.default import murmur2 as reference

    from screener.history.backfill import murmur2

    keys = [
        b"",
        b"a",
        b"ab",
        b"abc",
        b"abcd",
        b"\xff\xfe\x00\x80xyz",
        *(str(i).encode() * (i % 9) for i in range(3000)),
    ]
    assert murmur2(keys).tolist() == [reference(k) for k in keys]


def test_murmur2_of_a_series_is_kafka_pythons_of_its_bytes() -> None:
    from kafka.partitioner.default import murmur2 as reference

    from screener.history.backfill import murmur2_series

    ids = ["", "a", "ab", "abc", "abcd", "é", "ñandú-7", "患者12345", None, *(str(i) * (i % 9) for i in range(3000))]
    want = [reference((i or "").encode()) for i in ids]
    assert murmur2_series(pl.Series(ids, dtype=pl.String)).tolist() == want
    raw = [b"\xff\xfe\x00\x80", b"\x00", None, *((i or "").encode() for i in ids)]  # not UTF-8 too
    assert murmur2_series(pl.Series(raw, dtype=pl.Binary)).tolist() == [reference(k or b"") for k in raw]
    assert murmur2_series(pl.Series([], dtype=pl.String)).tolist() == []


def test_rows_without_a_person_or_a_date_are_rejected_not_dropped() -> None:
    cond = pl.DataFrame(
        {
            "condition_occurrence_id": [1, 2, 3],
            "person_id": [5, None, 6],
            "condition_concept_id": [0, 0, 0],
            "condition_start_date": ["2024-05-01", "2024-05-02", None],
            "condition_source_value": ["x", "y", "z"],
        }
    )
    assert table_events(cond, "condition_occurrence", None, NOW).height == 1  # the Kafka path counts 2 unmapped
    decoded = decode_rows(table_rows(cond, "condition_occurrence", None, NOW))
    assert decoded.accepted == 1
    assert [(i, e.field) for i, e in decoded.rejects] == [(1, "patient_id"), (2, "occurred_at")]


def test_typed_times_are_the_event_texts_times() -> None:
    """The rows path keeps dates and instants typed (no text): the same facts and rejects as the JSON path for
    calendar dates, London wall times either side of the clock changes (a time in the spring gap has no instant:
    rejected), sub-second times, a year outside 1000-2999 (judged by the event model) and ends on the day before
    the start or the day after."""
    from datetime import date as d

    starts = [
        datetime(2024, 5, 1),
        datetime(2024, 5, 1, 9, 30),
        datetime(2024, 1, 15, 23, 59, 59, 750_000),
        datetime(2024, 3, 31, 1, 30),  # does not exist in London
        datetime(2024, 10, 27, 1, 30),  # happens twice in London: the earlier
        datetime(900, 6, 1),
        datetime(2024, 7, 1, 12, 0),
        datetime(2024, 7, 1, 12, 0),
    ]
    cond = pl.DataFrame(
        {
            "condition_occurrence_id": list(range(len(starts))),
            "person_id": [1, 1, 2, 2, 3, 3, 4, 4],
            "condition_concept_id": [0] * len(starts),
            "condition_start_datetime": starts,
            "condition_start_date": [s.date() for s in starts],
            "condition_end_date": [None, d(2024, 5, 1), None, None, None, None, d(2024, 6, 30), d(2024, 7, 2)],
            "condition_source_value": ["X"] * len(starts),
        }
    )
    a, b = both(cond, "condition_occurrence")
    for x, y in zip(a.frames, b.frames, strict=True):  # type: ignore[attr-defined]
        assert x.equals(y)
    # the JSON path's mapper drops the row with no instant (counted as unmapped); the rows path rejects it
    assert a.accepted == b.accepted == 7 and not a.rejects  # type: ignore[attr-defined]
    assert [(i, e.field) for i, e in b.rejects] == [(3, "occurred_at")]  # type: ignore[attr-defined]
    assert b.slow == 2  # the gap and the year 900 (which the event model accepts)  # type: ignore[attr-defined]
    facts = b.facts  # type: ignore[attr-defined]
    assert facts["date_only"].to_list() == [True, False, False, False, True, False, False]
    assert facts["occurred_at"].dt.strftime("%H:%M:%S").to_list()[:4] == [
        "00:00:00",
        "08:30:00",
        "23:59:59",
        "00:30:00",
    ]
    assert facts["ended_at"].to_list()[-2:] == [None, datetime(2024, 7, 2, tzinfo=UTC)]
