"""The feasibility page over HTTP: a coordinator picks an open study of their team and sees its report from the
history store at SCREENER_STATE_URL, with small counts suppressed and the rest rounded; nurses and anonymous
users are kept out; the study's own text is escaped; no patient identifier reaches the page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from screener.alerts.store import SqlStore
from screener.history import open_store
from screener.history.backfill import backfill_frames
from screener.metrics import Metrics
from screener.settings import Settings
from screener.web import create_app
from tests.unit.web.conftest import NOW, _study, do_login

AT = datetime(2026, 5, 31, 23, 59, 59, tzinfo=UTC)
RULE = """
study:
  id: FEAS-T2DM
  title: "Type 2 diabetes <b>HbA1c</b> & more"
  summary: "Test study."
  sponsor: non-commercial
  portfolio: true
  target: 100
  opens: 2025-01-01
  closes: 2027-12-31
  team: renal
concepts:
  t2dm: {icd10: [E11]}
  hba1c: {loinc: ["4548-4"], unit: mmol/mol}
include:
  adult: age >= 18
  diabetic: t2dm|ever
  high_hba1c: hba1c|latest('1y') >= 58
"""


def _history() -> pl.DataFrame:
    """40 patients diagnosed k*9 days before AT; HbA1c 60 (eligible) for even k, 55 for odd k; every third one
    (k % 3 == 0) in hospital, so 7 of the 20 eligible are in hospital (suppressed) and 13 in the community."""
    events: list[dict[str, Any]] = []
    for k in range(40):
        pid, dx = f"PID-{k:02d}", (AT - timedelta(days=k * 9 + 1)).isoformat()
        base = {"source": "test", "patient_id": pid, "setting": "community" if k % 3 else "hospital"}
        person = {"birth_date": "1960-01-01", "sex": "F", "imd_decile": 1 + k % 10, "ethnic_group": "white"}
        events += [
            {**base, "event_id": f"{pid}-0", "kind": "person", "occurred_at": "2020-01-01T00:00:00Z", "person": person},
            {**base, "event_id": f"{pid}-1", "kind": "condition", "code": {"system": "ICD10", "value": "E11.9"}}
            | {"occurred_at": dx},
            {**base, "event_id": f"{pid}-2", "kind": "measurement", "code": {"system": "LOINC", "value": "4548-4"}}
            | {"value": 60 if k % 2 == 0 else 55, "unit": "mmol/mol", "occurred_at": dx},
        ]
    return pl.DataFrame(
        {"key": [e["patient_id"].encode() for e in events], "value": [json.dumps(e).encode() for e in events]},
        schema={"key": pl.Binary, "value": pl.Binary},
    )


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    rules = tmp_path / "rules"
    rules.mkdir()
    (rules / "feas.yaml").write_text(RULE)
    history = tmp_path / "history"
    result = backfill_frames(open_store(history), [_history()], partitions=2, start_offsets={})
    assert result.accepted == 120
    registry = CollectorRegistry()
    store = SqlStore(f"sqlite:///{tmp_path / 'web.db'}", metrics=Metrics(registry=registry), clock=lambda: NOW)
    title = "Type 2 diabetes <b>HbA1c</b> & more"
    store.sync_studies([_study("FEAS-T2DM", "renal", title=title), _study("RESP-1", "respiratory")])
    for name, role, teams in (("nina", "nurse", ["renal"]), ("cora", "coordinator", ["renal"]), ("ada", "admin", [])):
        store.add_user(name, f"{name}-long-password", role, teams)
    settings = Settings(rules_dir=rules, state_url=str(history))
    with TestClient(create_app(settings, store, registry=registry), follow_redirects=False) as c:
        yield c
    store.close()


def test_a_coordinator_sees_the_report_with_small_counts_suppressed(client: TestClient) -> None:
    do_login(client, "cora")
    assert 'href="/feasibility"' in client.get("/worklist").text  # linked from the navigation
    picker = client.get("/feasibility")
    assert picker.status_code == 200 and 'value="FEAS-T2DM"' in picker.text
    assert "RESP-1" not in picker.text  # another team's study is not offered
    page = client.get("/feasibility", params={"study": "FEAS-T2DM", "at": "2026-05-31", "months": 6})
    assert page.status_code == 200, page.text
    html = page.text
    assert '<dd id="eligible">20</dd>' in html and '<dd id="possible">0</dd>' in html
    hospital = html.split('id="breakdown-setting"')[1].split("</table>")[0]
    assert '<td>hospital</td><td><span class="suppressed"' in hospital  # 7 patients: suppressed
    assert "<td>community</td><td>15</td>" in hospital  # 13 patients, rounded to 5
    assert html.split('id="monthly"')[1].split("</table>")[0].count("<tr>") == 7  # header + 6 months
    assert "Type 2 diabetes &lt;b&gt;HbA1c&lt;/b&gt; &amp; more" in html and "<b>HbA1c</b>" not in html
    assert "PID-" not in html  # counts only, never a patient


def test_the_report_is_the_cli_figures_and_is_audited(client: TestClient, tmp_path: Path) -> None:
    from screener.feasibility import feasibility
    from screener.rules import load_study

    do_login(client, "ada")
    html = client.get("/feasibility", params={"study": "FEAS-T2DM", "at": "2026-05-31", "months": 12}).text
    persons, facts = open_store(tmp_path / "history").scan()
    want = feasibility(persons.collect(), facts.collect(), load_study(tmp_path / "rules" / "feas.yaml"), AT, 12)
    report = want.to_json()
    assert report["eligible"] == 20
    for m in report["new_eligible_per_month"]:  # type: ignore[attr-defined]
        shown = "fewer than 8" if m["patients"] is None else str(m["patients"])
        assert f"<td>{m['period_end']}</td><td>" in html and shown in html
    audit = client.get("/admin/audit").text
    assert "view_feasibility" in audit


def test_nurses_and_anonymous_users_are_kept_out(client: TestClient) -> None:
    anonymous = client.get("/feasibility", params={"study": "FEAS-T2DM"})
    assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login")
    do_login(client, "nina")
    assert client.get("/feasibility").status_code == 403
    assert client.get("/feasibility", params={"study": "FEAS-T2DM"}).status_code == 403
    assert 'href="/feasibility"' not in client.get("/worklist").text


def test_bad_input_is_refused_in_words(client: TestClient) -> None:
    do_login(client, "cora")
    assert client.get("/feasibility", params={"study": "RESP-1"}).status_code == 404  # not the coordinator's team
    bad = client.get("/feasibility", params={"study": "FEAS-T2DM", "at": "<script>alert(1)</script>"})
    assert bad.status_code == 422 and "<script>alert" not in bad.text
    assert client.get("/feasibility", params={"study": "FEAS-T2DM", "months": 0}).status_code == 422


def test_a_study_without_a_rule_file_says_so(client: TestClient) -> None:
    do_login(client, "ada")
    page = client.get("/feasibility", params={"study": "RESP-1"})
    assert page.status_code == 200 and 'id="report-error"' in page.text and "RESP-1" in page.text
