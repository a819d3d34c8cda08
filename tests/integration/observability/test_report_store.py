"""`screener report` on a real worklist store (SqlStore, SQLite file): the HTML renders from the store's rows,
shows a group with 1-7 members as suppressed, and carries no patient identifier."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from pathlib import Path
from types import SimpleNamespace

import polars as pl
import pytest
from click.testing import CliRunner

from screener.alerts.store import SqlStore
from screener.cli import main

pytestmark = pytest.mark.integration


def _study(id_: str, sponsor: str, target: int) -> SimpleNamespace:
    return SimpleNamespace(
        id=id_,
        title=f"Study {id_}",
        team="research",
        sponsor=sponsor,
        target=target,
        opens=date(2026, 1, 1),
        closes=date(2027, 1, 1),
        settings=["community", "hospital"],
        summary="",
        portfolio=True,
        content_hash="h",
        horizon=None,
    )


@pytest.fixture
def store_url(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'worklist.db'}"
    with SqlStore(url, channels=()) as store:
        store.sync_studies([_study("COMM-1", "commercial", 60), _study("NONC-2", "non-commercial", 500)])
        # 40 white patients and 5 black patients in COMM-1 (community), 20 asian in NONC-2 (hospital)
        groups = [
            ("COMM-1", "white", 3, "community", 40),
            ("COMM-1", "black", 8, "community", 5),
            ("NONC-2", "asian", 1, "hospital", 20),
        ]
        rows = [
            {
                "study_id": study,
                "patient_id": f"PAT-{study}-{group}-{i:03d}",
                "outcome": "eligible",
                "rule_hash": "h",
                "criteria": "[]",
                "matched_at": datetime(2026, 6, 1, tzinfo=UTC),
                "setting": setting,
                "imd_decile": decile,
                "ethnic_group": group,
                "event_time": None,
            }
            for study, group, decile, setting, n in groups
            for i in range(n)
        ]
        assert store.record_matches(pl.DataFrame(rows)).height == len(rows)
        admin = store.add_user("report-admin", "a-long-test-password-1", "admin")
        for m in store.worklist(admin):
            for action in ("approached", "consented", "enrolled"):
                store.record_action(admin, m["token"], action)
    return url


def test_report_from_the_store_suppresses_a_group_of_five(store_url: str, tmp_path: Path):
    out = tmp_path / "out" / "report.html"
    result = CliRunner().invoke(
        main, ["report", "--out", str(out), "--database-url", store_url, "--date", "2026-07-01"]
    )
    assert result.exit_code == 0, result.output
    assert "2 studies" in result.output
    page = out.read_text()
    # 5 black participants: suppressed, in the table and in the chart
    row = re.search(r"<tr><td>black</td>(.*?)</tr>", page).group(1)
    assert row.count('class="suppressed"') == 2  # matched and enrolled columns
    assert "suppressed (1–7)" in page
    # 40 white -> 40, 20 asian -> 20; total 65 rounds to 65: shares from disclosed counts
    white = re.search(r"<tr><td>white</td>(.*?)</tr>", page).group(1)
    assert "<td>40</td>" in white and "61.5%" in white
    # community participants: 45 -> rounded to 45; commercial share 45/65
    assert "<b>45</b>" in page and "69.2%" in page
    # study totals and the NIHR score: COMM-1 45/60 after 181/365 of its time
    assert f"{(45 / 60) / (181 / 365) - 1:+.2f}" in page
    assert "PAT-" not in page and "<script" not in page
    assert page.count("<svg") >= 4


def test_report_on_a_missing_store_fails_cleanly(tmp_path: Path):
    result = CliRunner().invoke(
        main, ["report", "--out", str(tmp_path / "r.html"), "--database-url", f"sqlite:///{tmp_path / 'nothing.db'}"]
    )
    assert result.exit_code != 0
    assert "no worklist database at" in result.output and "nothing.db" in result.output
    assert not (tmp_path / "r.html").exists()
