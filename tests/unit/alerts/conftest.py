"""Store fixtures: every store test runs on SQLite, and on PostgreSQL when SCREENER_TEST_POSTGRES_URL is set
(scripts/test and .ci/run start a throwaway cluster). Each PostgreSQL test gets its own schema."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

from screener.alerts.store import SqlStore

_PG = os.environ.get("SCREENER_TEST_POSTGRES_URL")
BACKENDS = ["sqlite"] + ([pytest.param("postgresql", marks=pytest.mark.integration)] if _PG else [])


class Clock:
    """A settable UTC clock."""

    def __init__(self, now: datetime = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **kw: float) -> None:
        self.now += timedelta(**kw)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=BACKENDS)
def store_url(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'worklist.db'}"
        return
    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(_PG)
    with admin.begin() as conn:
        conn.execute(sa.text(f"CREATE SCHEMA {schema}"))
    yield f"{_PG}?options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty SQLite store at the head of the migrations, made once per session: ``store`` opens a copy
    (creating the schema took 70 ms a test, opening a copy 6 ms). Creating it afresh is still tested by the
    tests that open ``store_url`` themselves, and by this fixture."""
    path = tmp_path_factory.mktemp("alerts-migrated") / "worklist.db"
    SqlStore(f"sqlite:///{path}").close()
    return path


@pytest.fixture
def store(store_url: str, clock: Clock, migrated_sqlite: Path) -> Iterator[SqlStore]:
    if store_url.startswith("sqlite:///"):
        shutil.copyfile(migrated_sqlite, store_url.removeprefix("sqlite:///"))
    s = SqlStore(store_url, clock=clock)
    yield s
    s.close()


def study(id: str = "CKD-1", team: str = "renal", **kw: Any) -> SimpleNamespace:
    """A duck-typed stand-in for screener.rules.Study."""
    base: dict[str, Any] = dict(
        id=id,
        title=f"Study {id}",
        summary=f"Summary of {id}.",
        team=team,
        sponsor="commercial",
        portfolio=True,
        target=100,
        opens=date(2026, 1, 1),
        closes=date(2027, 12, 31),
        settings=("community", "hospital"),
        horizon=timedelta(days=180),
        content_hash="c" * 64,
        render_markdown=lambda: f"## {id}\n\n- **adult**: aged 18 to 80",
    )
    base.update(kw)
    return SimpleNamespace(**base)


def criteria(**results: bool | None) -> str:
    return json.dumps(
        [
            {
                "name": name,
                "group": "exclude" if name.startswith("x_") else "include",
                "result": r,
                "evidence": "no record" if r is None else f"{name} evidence",
            }
            for name, r in results.items()
        ]
    )


def matches_frame(rows: list[dict[str, Any]], now: datetime = datetime(2026, 6, 1, 8, tzinfo=UTC)) -> pl.DataFrame:
    """A frame with the MatchStore columns; rows give study_id, patient_id and anything to override."""
    full = []
    for r in rows:
        base = {
            "outcome": "eligible",
            "rule_hash": "h1",
            "criteria": criteria(adult=True, egfr=True),
            "matched_at": now,
            "setting": "community",
            "imd_decile": 3,
            "ethnic_group": "white",
            "event_time": None,
        }
        base.update(r)
        full.append(base)
    return pl.DataFrame(
        full,
        schema={
            "study_id": pl.String,
            "patient_id": pl.String,
            "outcome": pl.String,
            "rule_hash": pl.String,
            "criteria": pl.String,
            "matched_at": pl.Datetime("us", "UTC"),
            "setting": pl.String,
            "imd_decile": pl.Int64,
            "ethnic_group": pl.String,
            "event_time": pl.Datetime("us", "UTC"),
        },
    )


@pytest.fixture
def make_study() -> Any:
    return study


@pytest.fixture
def crit() -> Any:
    return criteria


@pytest.fixture
def make_frame() -> Any:
    return matches_frame
