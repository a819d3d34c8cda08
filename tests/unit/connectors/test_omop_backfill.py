"""OMOP CDM backfill: CSV, Parquet, SQLite and DuckDB (Eunomia) inputs give the same, valid events."""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from connectors.omop import TABLES, backfill
from screener._json_event import decode_json
from screener.connector.encode import EVENT_FIELDS
from screener.errors import ConnectorError
from screener.events import Event, parse_event

DATA = Path(__file__).parents[2] / "data" / "omop"
NOW = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


class RawSink:
    """Collects what backfill hands to ``publish_raw``."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []

    def publish_raw(self, records: Any) -> int:
        batch = list(records)
        self.records.extend(batch)
        return len(batch)

    def events(self) -> dict[str, Event]:
        out = {}
        for key, value in self.records:
            ev = parse_event(value)
            assert key == ev.patient_id.encode()
            out["-".join(ev.event_id.split("-")[:3])] = ev  # omop-<table>-<row id>
        return out


def run(path: Path, **kw: Any) -> dict[str, Event]:
    sink = RawSink()
    backfill(path, sink, progress=False, now=NOW, **kw)
    return sink.events()


def check_fixture_events(ev: dict[str, Event]) -> None:
    assert len(ev) == 16  # one event per fixture row
    p1 = ev["omop-person-1"].person
    assert p1 is not None
    assert (p1.birth_date.isoformat(), p1.sex, p1.ethnic_group, p1.ethnic_category) == (  # type: ignore[union-attr]
        "1961-03-02",
        "F",
        "asian",
        "J",
    )
    p2 = ev["omop-person-2"].person
    assert p2 is not None and (p2.birth_date.isoformat(), p2.sex, p2.ethnic_group) == (  # type: ignore[union-attr]
        "1950-01-01",
        "M",
        "white",
    )
    cond = ev["omop-condition_occurrence-10"]
    assert cond.code is not None and (cond.code.system, cond.code.value) == ("ICD10", "E11.9")
    assert cond.status == "active"
    # concept 0 falls back to the source value; an unknown concept without one to omop:<id>
    c11, c12 = ev["omop-condition_occurrence-11"], ev["omop-condition_occurrence-12"]
    assert c11.code is not None and (c11.code.system, c11.code.value, c11.status) == ("local", "Z99.9", "resolved")
    assert c12.code is not None and c12.code.value == "omop:999999"
    egfr = ev["omop-measurement-20"]
    assert egfr.code is not None and (egfr.code.system, egfr.code.value) == ("LOINC", "62238-1")
    assert (egfr.value, egfr.unit) == (41.0, "mL/min/1.73m2")
    assert egfr.occurred_at == datetime(2026, 4, 1, 8, 30, tzinfo=UTC)  # 09:30 BST
    assert (egfr.ref_low, egfr.ref_high, egfr.encounter_id) == (60.0, 120.0, "40")
    # fidelity (issue 17): a summer DATE stays that calendar day (the old code gave 2026-07-14T23:00Z)
    m21 = ev["omop-measurement-21"]
    assert m21.value is None and m21.date_only and m21.occurred_at == datetime(2026, 7, 15, tzinfo=UTC)
    d30, d31 = ev["omop-drug_exposure-30"], ev["omop-drug_exposure-31"]
    assert d30.code is not None and d30.code.system == "ATC"
    assert d30.ended_at == datetime(2026, 3, 28, tzinfo=UTC) and d30.status == "completed"
    assert d30.dose is not None and (d30.dose.value, d30.dose.unit) == (56.0, "tablet") and d30.route == "oral"
    # fidelity (issue 13): RxNorm is RXNORM, not local "RxNorm:6809"
    assert d31.code is not None and (d31.code.system, d31.code.value) == ("RXNORM", "6809")
    assert d31.ended_at == datetime(2026, 3, 29, tzinfo=UTC)  # no end date: start + days_supply - 1
    assert (d31.dose, d31.route, d31.encounter_id) == (None, "oral", "40")
    visit = ev["omop-visit_occurrence-40"]
    assert visit.setting == "hospital" and visit.code is not None and visit.code.value == "Visit:IP"
    assert (visit.encounter_id, visit.status, visit.ended_at) == ("40", "completed", datetime(2026, 4, 3, tzinfo=UTC))
    smoking = ev["omop-observation-50"]
    assert smoking.value == 'Ex-smoker, "quit" 2019'
    assert smoking.value_code is not None and smoking.value_code.key() == "SNOMED|8517006"
    assert ev["omop-observation-51"].value == 12.5
    registration = ev["omop-observation_period-60"]
    assert registration.kind == "registration" and registration.ended_at == datetime(2026, 4, 30, tzinfo=UTC)
    assert registration.occurred_at == datetime(2010, 1, 1, tzinfo=UTC) and registration.date_only
    assert ev["omop-procedure_occurrence-70"].code.value == "X40.1"  # type: ignore[union-attr]
    assert ev["omop-death-3"].kind == "death" and ev["omop-death-3"].occurred_at == datetime(2026, 2, 1, tzinfo=UTC)


def test_csv_directory() -> None:
    check_fixture_events(run(DATA))


def test_parquet_directory(tmp_path: Path) -> None:
    for csv in DATA.glob("*.csv"):
        pl.read_csv(csv, infer_schema_length=None).write_parquet(tmp_path / f"{csv.stem}.parquet")
    check_fixture_events(run(tmp_path))


def test_sqlite_file(tmp_path: Path) -> None:
    db = tmp_path / "cdm.sqlite"
    with sqlite3.connect(db) as con:
        for csv in DATA.glob("*.csv"):
            df = pl.read_csv(csv, infer_schema_length=None)
            cols = ", ".join(df.columns)
            con.execute(f"create table {csv.stem.lower()} ({cols})")
            con.executemany(f"insert into {csv.stem.lower()} values ({', '.join('?' * df.width)})", df.rows())
    check_fixture_events(run(db))


def test_small_chunks_give_the_same_events() -> None:
    assert run(DATA, chunk_rows=1).keys() == run(DATA).keys()


def test_missing_path_and_empty_directory(tmp_path: Path) -> None:
    with pytest.raises(ConnectorError):
        backfill(tmp_path / "nope", RawSink(), progress=False)
    with pytest.raises(ConnectorError, match="none of the OMOP tables"):
        backfill(tmp_path, RawSink(), progress=False)


def test_json_is_compact_and_utf8() -> None:
    sink = RawSink()
    backfill(DATA, sink, progress=False, now=NOW, tables=("observation",))
    doc = json.loads(sink.records[0][1])
    assert doc["schema"] == "screener.event/v2" and set(TABLES) >= {"observation"}


def test_json_is_the_spelling_the_engine_reads_without_its_fallback() -> None:
    """Every fixture event (a text value with quotes, numbers, nested code/dose/value_code, a person with fields
    missing) is written in the event's own field order with absent fields left out, which the engine's Rust read
    vouches for: none is left to the per-event path."""
    sink = RawSink()
    backfill(DATA, sink, progress=False, now=NOW)
    assert len(sink.records) == 16
    _, left = decode_json(pl.Series([v for _, v in sink.records], dtype=pl.Binary))
    assert left.to_list() == []

    def no_nulls(doc: object) -> bool:
        if isinstance(doc, dict):
            return all(v is not None and no_nulls(v) for v in doc.values())
        return True

    for _, value in sink.records:
        doc = json.loads(value)
        assert list(doc) == [f for f in EVENT_FIELDS if f in doc]
        assert no_nulls(doc), doc


def test_unread_clinical_tables_are_counted(tmp_path: Path) -> None:
    for csv in DATA.glob("*.csv"):
        (tmp_path / csv.name).write_bytes(csv.read_bytes())
    (tmp_path / "device_exposure.csv").write_text("device_exposure_id,person_id,device_concept_id\n1,1,0\n2,1,0\n")
    (tmp_path / "condition_era.csv").write_text("condition_era_id,person_id\n1,1\n")  # derived: not counted
    result = backfill(tmp_path, RawSink(), progress=False, now=NOW)
    assert result.unmapped == {"device_exposure": 2}


def test_concept_table_read_column_wise_and_a_missing_column_named(tmp_path: Path) -> None:
    from connectors.omop import OmopSource

    for csv in DATA.glob("*.csv"):
        (tmp_path / csv.name).write_text(csv.read_text())
    src = OmopSource(tmp_path)
    concepts = src.concepts()
    assert concepts is not None and concepts.columns == ["concept_id", "c_system", "c_value"]
    assert ("LOINC", "62238-1") in set(concepts.select("c_system", "c_value").iter_rows())
    # a SQLite extract (columns read by name, whatever their case) gives the same concepts
    db = tmp_path / "cdm.sqlite"
    with sqlite3.connect(db) as con:
        df = pl.read_csv(DATA / "concept.csv", infer_schema_length=None)
        cols = ", ".join(c.upper() for c in df.columns)
        con.execute(f"create table CONCEPT ({cols})")
        con.executemany(f"insert into CONCEPT values ({', '.join('?' * df.width)})", df.rows())
    lite = OmopSource(db).concepts()
    assert lite is not None and lite.sort("concept_id").equals(concepts.sort("concept_id"))
    pl.read_csv(DATA / "concept.csv").drop("concept_code").write_csv(tmp_path / "concept.csv")
    with pytest.raises(ConnectorError, match="concept has no column concept_code"):
        OmopSource(tmp_path).concepts()


@pytest.mark.parametrize("far", [False, True])
def test_event_id_day_is_each_rows_date(far: bool) -> None:
    """The event id's day (formatted once per day of the chunk's span, or per distinct day when a stray far date
    makes the span longer than the chunk) is each row's own date; a row without one has none."""
    from datetime import date

    from connectors.omop._mapping import _day_text

    days = [date(2020, 1, 31), None, date(2020, 2, 29), date(2019, 12, 31), date(2020, 1, 31)]
    if far:
        days.append(date(1001, 6, 1))
    df = pl.DataFrame({"d": days}, schema={"d": pl.Date})
    instant = pl.col("d").cast(pl.Datetime("us"))
    got = df.select(_day_text(df, instant).alias("t"))["t"].to_list()
    assert got == [None if d is None else d.strftime("%Y%m%d") for d in days]
    undated = pl.DataFrame({"d": [None]}, schema={"d": pl.Date})
    assert undated.select(_day_text(undated, instant))[0, 0] is None
