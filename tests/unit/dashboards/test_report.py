"""The recruitment and equity report: aggregation, NHS disclosure control, NIHR time and target, HTML charts."""

from __future__ import annotations

import re
from datetime import date

import polars as pl
import pytest

from screener.report import ReportData, build_report, disclose, render_html

TODAY = date(2026, 7, 1)


def _rows(
    study: str,
    n: int,
    *,
    stage: str = "new",
    setting: str = "hospital",
    imd: int | None = 1,
    ethnic: str | None = "white",
) -> list[dict]:
    return [{"study_id": study, "setting": setting, "stage": stage, "imd_decile": imd, "ethnic_group": ethnic}] * n


@pytest.fixture
def data() -> ReportData:
    studies = [
        # opened 2026-01-01, closes 2027-01-01: 181/365 of the time elapsed on TODAY
        {
            "study_id": "AHEAD",
            "title": "On track",
            "sponsor": "commercial",
            "target": 40,
            "opens": date(2026, 1, 1),
            "closes": date(2027, 1, 1),
        },
        {
            "study_id": "BEHIND",
            "title": "Behind",
            "sponsor": "non-commercial",
            "target": 400,
            "opens": date(2026, 1, 1),
            "closes": date(2027, 1, 1),
        },
        {
            "study_id": "LATER",
            "title": "Not open yet",
            "sponsor": "non-commercial",
            "target": 10,
            "opens": date(2026, 9, 1),
            "closes": date(2027, 9, 1),
        },
    ]
    matches = (
        _rows("AHEAD", 25, stage="enrolled", setting="community", imd=1, ethnic="white")
        + _rows("BEHIND", 20, stage="enrolled", setting="hospital", imd=9, ethnic="white")
        + _rows("BEHIND", 3, stage="enrolled", setting="hospital", imd=5, ethnic="black")  # 3: suppressed
        + _rows("BEHIND", 40, stage="approached", imd=3, ethnic="asian")
        + _rows("BEHIND", 12, stage="declined", imd=None, ethnic=None)
        + _rows("BEHIND", 100, stage="new", imd=2, ethnic="white")
    )
    return ReportData.of(studies, matches)


def test_disclose_suppresses_one_to_seven_and_rounds_the_rest_to_five():
    got = pl.select(disclose(pl.Series([0, 1, 5, 7, 8, 12, 13, 100, 102, 103]).alias("x")))
    assert got.to_series().to_list() == [0, None, None, None, 10, 10, 15, 100, 100, 105]


def test_time_and_target_follows_the_nihr_formula(data):
    report = build_report(data, TODAY)
    s = {r["study_id"]: r for r in report.studies.iter_rows(named=True)}
    elapsed = 181 / 365
    assert s["AHEAD"]["enrolled"] == 25
    assert s["AHEAD"]["score"] == pytest.approx((25 / 40) / elapsed - 1)
    assert s["BEHIND"]["score"] == pytest.approx((23 / 400) / elapsed - 1)
    assert s["LATER"]["score"] is None and s["LATER"]["time_elapsed"] is None
    assert report.on_time_and_target == 0.5  # one of the two scored studies
    assert report.commercial_share == pytest.approx(25 / 48)
    assert report.community_enrolled == 25


def test_funnel_is_cumulative_and_disclosed(data):
    report = build_report(data, TODAY)
    funnel = dict(report.funnel.iter_rows())
    # 200 matched; reviewed or later 100; approached or later (approached, declined, enrolled) 100; consented 48
    assert funnel == {"matched": 200, "reviewed": 100, "approached": 100, "consented": 50, "enrolled": 50}


def test_equity_counts_are_disclosed_and_shares_use_disclosed_counts(data):
    report = build_report(data, TODAY)
    enrolled = {r["group"]: r for r in report.ethnicity.filter(pl.col("stage") == "enrolled").iter_rows(named=True)}
    assert enrolled["black"]["count"] is None and enrolled["black"]["share"] is None  # 3 people: suppressed
    assert enrolled["white"]["count"] == 45 and enrolled["white"]["share"] == pytest.approx(45 / 50)
    assert enrolled["asian"]["count"] == 0
    assert enrolled["white"]["population"] == pytest.approx(0.766)
    imd = {r["group"]: r for r in report.imd.filter(pl.col("stage") == "enrolled").iter_rows(named=True)}
    assert imd["1"]["count"] == 25 and imd["5"]["count"] == 20 and imd["3"]["count"] is None  # deciles 5 -> Q3
    matched = {r["group"]: r["count"] for r in report.imd.filter(pl.col("stage") == "matched").iter_rows(named=True)}
    assert matched["unknown"] == 10  # 12 with no IMD decile, rounded


def test_html_shows_suppressed_group_and_charts_without_scripts(data):
    page = render_html(build_report(data, TODAY))
    assert page.startswith("<!DOCTYPE html>")
    assert "<script" not in page and "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert page.count("<svg") >= 4
    # the ethnic-group table row for "black" shows the suppression marker in the enrolled column
    row = re.search(r"<tr><td>black</td>(.*?)</tr>", page).group(1)
    assert 'class="suppressed"' in row
    assert "suppressed (1–7)" in page
    assert "BEHIND" in page and "−" not in row


def test_report_of_an_empty_store_renders():
    page = render_html(build_report(ReportData.of([], []), TODAY))
    assert "No study has both a target" in page


def test_publish_store_metrics_sets_funnel_and_enrolment_gauges(data):
    from prometheus_client import CollectorRegistry

    from screener.metrics import Metrics
    from screener.report import publish_store_metrics

    registry = CollectorRegistry()
    metrics = Metrics(registry=registry)
    publish_store_metrics(metrics, data)
    get = registry.get_sample_value
    assert (
        get("screener_study_enrolled_participants", {"study": "AHEAD", "sponsor": "commercial", "setting": "community"})
        == 25
    )
    assert (
        get(
            "screener_study_enrolled_participants",
            {"study": "BEHIND", "sponsor": "non-commercial", "setting": "hospital"},
        )
        == 23
    )
    # raw, cumulative: the recording rules disclose
    assert get("screener_funnel_ethnic_group_patients", {"stage": "enrolled", "ethnic_group": "black"}) == 3
    assert get("screener_funnel_ethnic_group_patients", {"stage": "matched", "ethnic_group": "white"}) == 145
    assert get("screener_funnel_imd_quintile_patients", {"stage": "approached", "imd_quintile": "2"}) == 40
    assert get("screener_funnel_imd_quintile_patients", {"stage": "approached", "imd_quintile": "1"}) == 25
    assert get("screener_funnel_imd_quintile_patients", {"stage": "matched", "imd_quintile": "1"}) == 125
    assert get("screener_funnel_imd_quintile_patients", {"stage": "approached", "imd_quintile": "unknown"}) == 12
    # a label set that left the store is removed on the next publish
    publish_store_metrics(metrics, ReportData.of(data.studies, data.matches.filter(pl.col("study_id") == "AHEAD")))
    assert get("screener_funnel_ethnic_group_patients", {"stage": "enrolled", "ethnic_group": "black"}) is None
    assert (
        get(
            "screener_study_enrolled_participants",
            {"study": "BEHIND", "sponsor": "non-commercial", "setting": "hospital"},
        )
        is None
    )
