"""Web fixtures: a seeded SQLite store (two teams, three users, matches), the app in-process (TestClient)."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from screener.alerts.store import SqlStore
from screener.metrics import Metrics
from screener.settings import Settings
from screener.web import create_app

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
#: Distinctive identifiers so a leak is easy to spot in any text.
PATIENT_A = "MRN-A-0042"
PATIENT_B = "MRN-B-0077"


def _study(id: str, team: str, **kw: Any) -> SimpleNamespace:
    base = dict(
        id=id,
        title=f"Study {id}",
        summary=f"Summary of {id}.",
        team=team,
        sponsor="commercial",
        portfolio=True,
        target=100,
        opens=date(2026, 1, 1),
        closes=date(2027, 12, 31),
        settings=("community",),
        horizon=timedelta(days=180),
        content_hash="c" * 64,
        render_markdown=lambda: f"**Who can take part in {id}**\n\n- adults aged 18 to 80\n- <b>raw</b>",
    )
    base.update(kw)
    return SimpleNamespace(**base)


def _criteria() -> str:
    return json.dumps(
        [
            {"name": "adult", "group": "include", "result": True, "evidence": "age 64"},
            {"name": "egfr_25_to_59", "group": "include", "result": None, "evidence": "no eGFR in 180 days"},
            {"name": "on_insulin", "group": "exclude", "result": False, "evidence": "no record"},
        ]
    )


def _seed(store: SqlStore) -> None:
    """Two teams' studies (and a closed one), a match each, four users."""
    store.sync_studies(
        [_study("RENAL-1", "renal"), _study("RESP-1", "respiratory"), _study("OLD-1", "renal", closes=date(2026, 3, 1))]
    )
    store.record_matches(
        pl.DataFrame(
            {
                "study_id": ["RENAL-1", "RESP-1"],
                "patient_id": [PATIENT_A, PATIENT_B],
                "outcome": ["possible", "eligible"],
                "rule_hash": ["h1", "h1"],
                "criteria": [_criteria()] * 2,
                "matched_at": [NOW - timedelta(hours=1)] * 2,
                "setting": ["community", "hospital"],
                "imd_decile": [2, 7],
                "ethnic_group": ["asian", "white"],
                "event_time": [None, None],
            }
        )
    )
    store.add_user("nina", "nina-long-password", "nurse", ["renal"])
    store.add_user("rory", "rory-long-password", "nurse", ["respiratory"])
    store.add_user("ada", "ada-long-password", "admin", [])
    store.add_user("cora", "cora-long-password", "coordinator", ["renal"])


@pytest.fixture(scope="session")
def seeded_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The seeded SQLite file, built once per session (creating the schema and seeding took most of a web test's
    setup); each test opens a copy of its own. Seeding touches no metric, so the copy's registry starts empty
    as a freshly seeded store's does."""
    path = tmp_path_factory.mktemp("web-seeded") / "web.db"
    with SqlStore(f"sqlite:///{path}", clock=lambda: NOW) as store:
        _seed(store)
    return path


@pytest.fixture
def seeded(tmp_path: Path, seeded_template: Path) -> Iterator[SqlStore]:
    registry = CollectorRegistry()
    shutil.copyfile(seeded_template, tmp_path / "web.db")
    store = SqlStore(f"sqlite:///{tmp_path / 'web.db'}", metrics=Metrics(registry=registry), clock=lambda: NOW)
    store.registry = registry  # type: ignore[attr-defined]
    yield store
    store.close()


@pytest.fixture
def app(seeded: SqlStore) -> Any:
    return create_app(Settings(), seeded, registry=seeded.registry)  # type: ignore[attr-defined]


@pytest.fixture
def client(app: Any) -> Iterator[TestClient]:
    with TestClient(app, follow_redirects=False) as c:
        yield c


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert m, "no csrf_token field in page"
    return m.group(1)


def do_login(client: TestClient, username: str, password: str | None = None) -> TestClient:
    page = client.get("/login")
    r = client.post(
        "/login",
        data={
            "username": username,
            "password": password or f"{username}-long-password",
            "csrf_token": csrf_of(page.text),
        },
    )
    assert r.status_code == 303 and r.headers["location"] == "/worklist", r.text
    return client


@pytest.fixture
def login() -> Any:
    return do_login


@pytest.fixture
def csrf() -> Any:
    return csrf_of


@pytest.fixture
def make_client(app: Any) -> Iterator[Any]:
    clients: list[TestClient] = []

    def _make() -> TestClient:
        c = TestClient(app, follow_redirects=False)
        clients.append(c)
        return c

    yield _make
    for c in clients:
        c.close()
