"""The match page and worklist as a nurse reads them: where, by when, who to call, local times, plain words,
form errors in words with the input kept, paging, an empty state that explains."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import polars as pl
import pytest

from screener.alerts.store import SqlStore
from screener.settings import Settings
from screener.web import create_app
from tests.unit.web.conftest import NOW, _study


def _stroke_criteria(onset_expires: Any = NOW + timedelta(hours=1, minutes=16)) -> str:
    return json.dumps(
        [
            {
                "name": "stroke_within_6h",
                "label": "Stroke started within the last 6 hours",
                "group": "include",
                "result": True,
                "evidence": "ischaemic_stroke I63.5 at 04:16",
                "expires_at": onset_expires.isoformat(),
            },
            {"name": "nihss", "group": "include", "result": True, "evidence": "latest nihss 18 {score}"},
            {"name": "egfr", "group": "include", "result": True, "evidence": "latest egfr 48 mL/min/1.73m2"},
        ]
    )


@pytest.fixture
def stroke(seeded: SqlStore) -> SqlStore:
    contacts = (
        SimpleNamespace(
            name="Dr Priya Shah", role="Principal investigator", email="p.shah@nhs.net", phone="0161 555 0100"
        ),
    )
    studies = [s for s in seeded.studies()]  # keep the others active
    seeded.sync_studies(
        [_study(s["id"], s["team"]) for s in studies]
        + [
            _study(
                "STROKE-6H",
                "renal",
                title="Acute stroke trial",
                horizon=timedelta(hours=6),
                contacts=contacts,
                protocol_url="https://example.org/protocol.pdf",
                pis_url="https://example.org/pis.pdf",
            )
        ]
    )
    frame = pl.DataFrame(
        {
            "study_id": ["STROKE-6H"],
            "patient_id": ["MRN-S-0001"],
            "outcome": ["eligible"],
            "rule_hash": ["h1"],
            "criteria": [_stroke_criteria()],
            "matched_at": [NOW - timedelta(minutes=5)],
            "setting": ["hospital"],
            "imd_decile": [3],
            "ethnic_group": ["white"],
            "event_time": [None],
            "location": ["Stroke unit, bed 4"],
        }
    )
    seeded.record_matches(frame)
    return seeded


def _token(store: SqlStore, study: str) -> str:
    user = next(u for u in store.users() if u.username == "nina")
    return next(r["token"] for r in store.worklist(user) if r["study_id"] == study)


def test_the_match_page_shows_location_deadline_contacts_and_local_times(
    stroke: SqlStore, make_client: Any, login: Any
) -> None:
    nina = login(make_client(), "nina")
    html = nina.get(f"/matches/{_token(stroke, 'STROKE-6H')}").text
    assert "Stroke unit, bed 4" in html
    # The clock reads 09:00 UTC (10:00 BST); the window closes at 10:16 UTC, 1 h 16 min later.
    assert "1 Jun 2026, 11:16 BST" in html and "1 h 16 min left" in html
    assert "Stroke started within the last 6 hours" in html
    assert "Dr Priya Shah" in html and 'href="tel:01615550100"' in html and 'href="mailto:p.shah@nhs.net"' in html
    assert 'href="https://example.org/protocol.pdf"' in html and "Participant information sheet" in html
    assert 'Matched</dt><dd id="matched">1 Jun 2026, 09:55 BST' in html
    assert "UTC" not in html
    # Plain language: units as written, no snake_case, no UCUM annotation.
    assert "{score}" not in html and "latest nihss 18</td>" in html
    assert "mL/min/1.73 m²" in html and "ischaemic stroke I63.5" in html and "ischaemic_stroke" not in html


def test_a_form_error_is_in_words_and_keeps_the_input(
    stroke: SqlStore, make_client: Any, login: Any, csrf: Any
) -> None:
    nina = login(make_client(), "nina")
    token = _token(stroke, "STROKE-6H")
    page = nina.get(f"/matches/{token}").text
    bad = nina.post(
        f"/matches/{token}/action",
        data={"action": "snoozed", "until": "31/02/2026", "csrf_token": csrf(page)},
    )
    assert bad.status_code == 422
    assert "is not a date; write it as day/month/year" in bad.text and 'value="31/02/2026"' in bad.text
    bad = nina.post(
        f"/matches/{token}/action", data={"action": "declined", "note": "asked twice", "csrf_token": csrf(page)}
    )
    assert "Choose a reason why the patient declined" in bad.text and 'value="asked twice"' in bad.text
    # Separate reason lists, one "Other" each.
    assert bad.text.count(">Other</option>") == 2
    ok = nina.post(
        f"/matches/{token}/action", data={"action": "snoozed", "until": "15/06/2026", "csrf_token": csrf(page)}
    )
    assert ok.status_code == 303
    assert "snoozed until 15 June 2026" in nina.get("/worklist?view=snoozed").text


def test_changed_since_you_last_looked(stroke: SqlStore, make_client: Any, login: Any) -> None:
    nina = login(make_client(), "nina")
    token = _token(stroke, "STROKE-6H")
    assert 'id="changed"' not in nina.get(f"/matches/{token}").text  # first look
    assert 'id="changed"' not in nina.get(f"/matches/{token}").text  # nothing changed
    clock_now = NOW + timedelta(minutes=1)
    stroke.clock = lambda: clock_now
    ruled_out = json.dumps(
        [{"name": "on_thrombolysis", "group": "exclude", "result": True, "evidence": "alteplase 09:58"}]
    )
    frame = pl.DataFrame(
        {
            "study_id": ["STROKE-6H"],
            "patient_id": ["MRN-S-0001"],
            "outcome": ["ineligible"],
            "rule_hash": ["h1"],
            "criteria": [ruled_out],
        }
    )
    stroke.record_matches(frame)
    stroke.clock = lambda: clock_now + timedelta(minutes=1)
    nina_user = next(u for u in stroke.users() if u.username == "nina")
    (closed,) = [r for r in stroke.worklist(nina_user, view="closed") if r["study_id"] == "STROKE-6H"]
    assert "changed since you looked" in nina.get("/worklist?view=closed").text
    html = nina.get(f"/matches/{closed['token']}").text
    assert 'id="changed"' in html and "the result was eligible" in html
    assert "changed since you looked" not in nina.get("/worklist?view=closed").text  # seen now
    assert 'id="no-longer-eligible"' in html and "On thrombolysis" in html


def test_worklist_titles_paging_filters_and_empty_states(seeded: SqlStore, make_client: Any, login: Any) -> None:
    for i in range(5):
        seeded.record_matches(
            pl.DataFrame(
                {
                    "study_id": ["RENAL-1"],
                    "patient_id": [f"MRN-P-{i}"],
                    "outcome": ["eligible"],
                    "rule_hash": ["h1"],
                    "criteria": ["[]"],
                }
            )
        )
    app = create_app(Settings(worklist_page_size=2, worklist_refresh_s=30), seeded, registry=seeded.registry)  # type: ignore[attr-defined]
    from fastapi.testclient import TestClient

    with TestClient(app, follow_redirects=False) as c:
        nina = login(c, "nina")
        first = nina.get("/worklist").text
        assert "Study RENAL-1" in first and '<meta http-equiv="refresh" content="30">' in first
        assert "1 to 2 of 6" in first and 'id="next"' in first and 'value="ineligible"' not in first
        last = nina.get("/worklist?page=3").text
        assert "5 to 6 of 6" in last and 'id="next"' not in last and 'id="prev"' in last
        assert "Nothing open" not in last
        assert "No matches with these filters" in nina.get("/worklist?setting=home").text
        assert nina.get("/worklist?sort=patient").status_code == 422
        csp = nina.get("/worklist").headers["content-security-policy"]
        assert "script-src 'none'" in csp


def test_an_empty_worklist_says_the_feed_may_still_be_starting(tmp_path: Any, make_study: Any = None) -> None:
    store = SqlStore(f"sqlite:///{tmp_path / 'e.db'}", clock=lambda: NOW)
    store.add_user("nina", "nina-long-password", "nurse", ["renal"])
    from fastapi.testclient import TestClient

    from tests.unit.web.conftest import do_login

    with TestClient(create_app(Settings(), store), follow_redirects=False) as c:
        do_login(c, "nina")
        assert "No studies are loaded yet" in c.get("/worklist").text
        store.sync_studies([_study("RENAL-1", "renal")])
        assert "No matches yet" in c.get("/worklist").text and "still be starting" in c.get("/worklist").text
    store.close()


def test_docs_are_served_from_local_assets_without_a_cdn(client: Any) -> None:
    page = client.get("/docs")
    assert page.status_code == 200 and "https://" not in page.text and "http://" not in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/docs/assets/swagger-ui-bundle.js", "/docs/assets/swagger-ui.css", "/static/docs-init.js"):
        assert asset in page.text
        assert client.get(asset).status_code == 200, asset
    assert "script-src 'none'" in client.get("/studies").headers["content-security-policy"]


def test_the_public_page_speaks_plain_words(seeded: SqlStore, client: Any) -> None:
    seeded.sync_studies(
        [
            _study(
                "CKD-1",
                "renal",
                title="Kidney study",
                lay_summary="Testing a tablet that may protect the kidneys.",
                include=(SimpleNamespace(name="egfr_25_to_59", display="Kidney function (eGFR) between 25 and 59"),),
                exclude=(SimpleNamespace(name="on_insulin"),),
                sites=("Royal Infirmary",),
                contacts=({"name": "Research office", "phone": "0161 555 0199"},),
            )
        ]
    )
    html = client.get("/studies").text
    assert "Testing a tablet that may protect the kidneys." in html
    assert "Kidney function (eGFR) between 25 and 59" in html and "On insulin" in html
    assert "egfr_25_to_59" not in html and "on_insulin" not in html
    assert "Royal Infirmary" in html and "0161 555 0199" in html
    api = {s["id"]: s for s in client.get("/api/studies").json()}
    assert api["CKD-1"]["who_cannot_take_part"] == ["On insulin"]


def test_the_api_pages_sorts_and_carries_location_deadline_fields(stroke: SqlStore, make_client: Any) -> None:
    api_token = stroke.create_api_token("nina")
    c = make_client()
    h = {"Authorization": f"Bearer {api_token}"}
    rows = c.get("/api/worklist?sort=newest", headers=h).json()
    assert [r["study_id"] for r in rows] == ["STROKE-6H", "RENAL-1"] and rows[0]["location"] == "Stroke unit, bed 4"
    assert [r["study_id"] for r in c.get("/api/worklist?sort=oldest&limit=1", headers=h).json()] == ["RENAL-1"]
    assert c.get("/api/worklist?offset=1&sort=newest", headers=h).json()[0]["study_id"] == "RENAL-1"
    assert c.get("/api/worklist?sort=bogus", headers=h).status_code == 422
    detail = c.get(f"/api/matches/{rows[0]['token']}", headers=h).json()
    assert detail["criteria"][0]["label"] == "Stroke started within the last 6 hours"
    assert detail["criteria"][0]["expires_at"].startswith("2026-06-01T10:16")
