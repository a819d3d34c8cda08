"""Small real stand-ins for the engine's edges: the in-memory partitioned log with the kafka-python consumer and
producer surface (shipped in :mod:`screener.testing`), and a tiny study type with a Polars screen function (so the
engine's own logic is tested without the broker or the rule compiler)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from screener.settings import Settings
from screener.testing import InMemoryConsumer, InMemoryLog, InMemoryProducer, SentFuture

# The in-memory log, consumer and producer are the shipped ones (screener.testing); the old names stay for the tests.
Log = InMemoryLog
FakeProducer = InMemoryProducer
FakeConsumer = InMemoryConsumer
Future = SentFuture


@dataclass(frozen=True)
class MiniStudy:
    """A study with an age threshold and an optional required ICD-10 prefix. Rule file: ``id: X`` lines."""

    id: str
    min_age: int = 18
    icd10: str | None = None
    opens: date = date(2020, 1, 1)
    closes: date = date(2030, 1, 1)
    path: str = ""
    content_hash: str = ""
    title: str = "t"
    sponsor: str = "commercial"
    target: int = 10
    team: str = "team"

    def is_open(self, at: datetime) -> bool:
        return (
            datetime(self.opens.year, self.opens.month, self.opens.day, tzinfo=UTC)
            <= at
            < datetime(self.closes.year, self.closes.month, self.closes.day, tzinfo=UTC) + timedelta(days=1)
        )

    def fact_filter(self) -> pl.Expr:
        if self.icd10 is None:
            return pl.lit(False)
        return (pl.col("system") == "ICD10") & pl.col("code").str.starts_with(self.icd10)

    @property
    def horizon(self) -> timedelta | None:
        return None


def mini_screen(state: Any, studies: Any, now: datetime) -> pl.DataFrame:
    frames = []
    today = now.date()
    age = (
        pl.lit(today.year)
        - pl.col("birth_date").dt.year()
        - (
            (pl.lit(today.month * 100 + today.day))
            < (pl.col("birth_date").dt.month().cast(pl.Int32) * 100 + pl.col("birth_date").dt.day())
        ).cast(pl.Int32)
    )
    for s in studies:
        if s.icd10 is None:
            has = pl.lit(True)
            p = state.persons.with_columns(has.alias("_has"))
        else:
            with_code = (
                state.facts.filter((pl.col("system") == "ICD10") & pl.col("code").str.starts_with(s.icd10))
                .select("patient_id")
                .unique()
                .with_columns(pl.lit(True).alias("_has"))
            )
            p = state.persons.join(with_code, on="patient_id", how="left").with_columns(pl.col("_has").fill_null(False))
        adult = age >= s.min_age
        frames.append(
            p.select(
                pl.lit(s.id).alias("study_id"),
                pl.col("patient_id"),
                pl.when(adult.is_null() & pl.col("_has"))
                .then(pl.lit("possible"))
                .when(adult & pl.col("_has"))
                .then(pl.lit("eligible"))
                .otherwise(pl.lit("ineligible"))
                .alias("outcome"),
                pl.lit(s.content_hash).alias("rule_hash"),
                pl.concat_list(
                    pl.struct(
                        pl.lit("adult").alias("name"),
                        pl.lit("include").alias("group"),
                        adult.alias("result"),
                        pl.lit("age").alias("evidence"),
                    )
                ).alias("criteria"),
            )
        )
    return pl.concat(frames) if frames else pl.DataFrame()


class LoadResult:
    def __init__(self, studies: list[MiniStudy], errors: list[Any]) -> None:
        self.studies = studies
        self.errors = errors


class MiniRuleError(Exception):
    def __init__(self, file: str, message: str) -> None:
        self.file = file
        super().__init__(f"{file}: error: {message}")


def mini_loader(paths: Any) -> LoadResult:
    """Each ``*.yaml`` holds ``key=value`` pairs on one line: ``id=A min_age=18 icd10=E11``."""
    studies, errors = [], []
    for root in paths:
        for f in sorted(Path(root).glob("*.yaml")):
            text = f.read_text()
            try:
                kv = dict(part.split("=", 1) for part in text.split())
                studies.append(
                    MiniStudy(
                        id=kv["id"],
                        min_age=int(kv.get("min_age", 18)),
                        icd10=kv.get("icd10"),
                        opens=date.fromisoformat(kv.get("opens", "2020-01-01")),
                        closes=date.fromisoformat(kv.get("closes", "2030-01-01")),
                        path=str(f),
                        content_hash=hashlib.sha256(text.encode()).hexdigest(),
                    )
                )
            except (ValueError, KeyError) as exc:
                errors.append(MiniRuleError(str(f), f"cannot read: {exc}"))
    return LoadResult(studies, errors)


@pytest.fixture
def log() -> Log:
    return Log(partitions=2)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    rules = tmp_path / "rules"
    rules.mkdir()
    return Settings(
        rules_dir=rules,
        state_dir=tmp_path / "state",
        batch_max_records=1000,
        batch_max_ms=5,
        rescreen_interval_s=3600,
        rules_poll_s=0.001,
        snapshot_interval_s=3600,
        events_topic="ev",
        matches_topic="m",
        dlq_topic="dlq",
    )


@pytest.fixture
def mini() -> Any:
    return {"screen": mini_screen, "loader": mini_loader}
