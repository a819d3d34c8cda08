"""Schemathesis against the worklist API's own OpenAPI description: no generated request gets a 5xx.

Runs in process (ASGI), as an admin with a bearer token (so every operation is reachable past 401/403), against
a seeded SQLite store. Bounded: ``max_examples`` per operation and no deadline; derandomized when ``CI`` is set
(tests/conftest.py loads the ``ci`` Hypothesis profile), so a landing never depends on luck.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from prometheus_client import CollectorRegistry

from screener.alerts.store import SqlStore
from screener.metrics import Metrics
from screener.settings import Settings
from screener.web import create_app

NOW = datetime(2026, 6, 1, 9, 0, tzinfo=UTC)
PASSWORD = "a-long-enough-test-password-42"


def _study(study_id: str, team: str) -> SimpleNamespace:
    return SimpleNamespace(
        id=study_id,
        title=f"Study {study_id}",
        summary="A study.",
        team=team,
        sponsor="commercial",
        portfolio=True,
        target=100,
        opens=date(2026, 1, 1),
        closes=date(2027, 12, 31),
        settings=("community",),
        horizon=timedelta(days=180),
        content_hash="c" * 64,
        render_markdown=lambda: "## Who can take part\n\n- adults",
    )


@pytest.fixture(scope="module")
def seeded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SqlStore, str, CollectorRegistry]]:
    path: Path = tmp_path_factory.mktemp("api") / "web.db"
    registry = CollectorRegistry()
    store = SqlStore(f"sqlite:///{path}", metrics=Metrics(registry=registry), clock=lambda: NOW)
    store.sync_studies([_study("RENAL-1", "renal")])
    criteria = json.dumps([{"name": "adult", "group": "include", "result": True, "evidence": "age 64"}])
    store.record_matches(
        pl.DataFrame(
            {
                "study_id": ["RENAL-1"],
                "patient_id": ["MRN-A-0042"],
                "outcome": ["possible"],
                "rule_hash": ["h1"],
                "criteria": [criteria],
                "matched_at": [NOW - timedelta(hours=1)],
                "setting": ["community"],
                "imd_decile": [2],
                "ethnic_group": ["asian"],
                "event_time": [None],
            }
        )
    )
    store.add_user("ada", PASSWORD, "admin", ["renal"])
    token = store.create_api_token("ada")
    yield store, token, registry
    store.close()


@pytest.fixture(scope="module")
def api_schema(seeded: tuple[SqlStore, str, CollectorRegistry]) -> Any:
    store, _token, registry = seeded
    app = create_app(Settings(), store, registry=registry)
    return schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module")
def token(seeded: tuple[SqlStore, str, CollectorRegistry]) -> str:
    return seeded[1]


def operations(api_schema: Any) -> list[Any]:
    return [result.ok() for result in api_schema.get_all_operations()]


def test_the_description_has_the_worklist_operations(api_schema: Any) -> None:
    names = {f"{op.method.upper()} {op.path}" for op in operations(api_schema)}
    assert {"GET /api/worklist", "GET /api/matches/{token}", "POST /api/matches/{token}/actions"} <= names


def test_no_server_error(api_schema: Any, token: str) -> None:
    """Every operation, up to 25 generated requests each (about a minute in all)."""
    failures: list[str] = []
    statuses: dict[int, int] = {}
    for operation in operations(api_schema):

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def run(case: Any) -> None:
            response = case.call(headers={"Authorization": f"Bearer {token}"})
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            assert response.status_code < 500, (
                f"{response.status_code} for {case.as_curl_command()}\n{response.text[:300]}"
            )

        try:
            run()
        except AssertionError as exc:
            failures.append(str(exc)[:800])
    assert not failures, "\n\n".join(failures)
    # the token works, so the generated requests reach the handlers (not only the 401 of the auth layer)
    assert sum(n for code, n in statuses.items() if code < 300) >= 10, statuses
    assert statuses.get(401, 0) == 0, statuses
