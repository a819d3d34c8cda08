"""How pages say things: local times across the clock change, time left, typed dates, units and names."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from screener.web.present import deadline, local_time, parse_day, plain_text, time_left


def test_local_time_follows_british_summer_time() -> None:
    assert local_time(datetime(2026, 1, 15, 12, 0, tzinfo=UTC)) == "15 Jan 2026, 12:00 GMT"
    assert local_time(datetime(2026, 7, 15, 12, 0, tzinfo=UTC)) == "15 Jul 2026, 13:00 BST"
    assert local_time("2026-03-29T01:30:00+00:00", with_date=False) == "02:30 BST"  # the clocks went forward
    assert local_time(None) == "" and local_time(datetime(2026, 7, 15, 12), "UTC") == "15 Jul 2026, 12:00 UTC"


def test_time_left_in_words() -> None:
    now = datetime(2026, 6, 1, 9, tzinfo=UTC)
    assert time_left(now + timedelta(hours=1, minutes=16), now) == "1 h 16 min left"
    assert time_left(now + timedelta(minutes=40), now) == "40 min left"
    assert time_left(now + timedelta(days=2, hours=3), now) == "2 days 3 h left"
    assert time_left(now - timedelta(minutes=5), now) == "passed 5 min ago"


def test_typed_dates_are_day_month_year() -> None:
    assert parse_day("15/06/2026") == date(2026, 6, 15) == parse_day("2026-06-15") == parse_day("15.6.2026")
    assert parse_day("  ") is None
    with pytest.raises(ValueError, match="day/month/year"):
        parse_day("06/31/2026")


def test_units_and_names_as_people_write_them() -> None:
    assert plain_text("latest nihss 18 {score}") == "latest nihss 18"
    assert plain_text("egfr 48 mL/min/1.73m2 on 2026-05-01") == "egfr 48 mL/min/1.73 m² on 2026-05-01"
    assert plain_text("ischaemic_stroke I63.5; creatinine 90 umol/L") == "ischaemic stroke I63.5; creatinine 90 µmol/L"
    assert plain_text("bmi 31 kg/m2, platelets 150 10*9/L") == "bmi 31 kg/m², platelets 150 × 10⁹/L"


def test_the_deadline_is_the_earliest_window_of_a_criterion_that_holds() -> None:
    at = datetime(2026, 6, 1, 10, tzinfo=UTC)
    criteria = [
        {"name": "onset_6h", "group": "include", "result": True, "expires_at": at.isoformat()},
        {"name": "later", "group": "include", "result": True, "expires_at": (at + timedelta(hours=2)).isoformat()},
        {"name": "unmet", "group": "include", "result": False, "expires_at": (at - timedelta(hours=1)).isoformat()},
        {"name": "x_bleed", "group": "exclude", "result": False, "expires_at": (at - timedelta(hours=2)).isoformat()},
    ]
    assert deadline(criteria) == (at, "Onset 6h")
    assert deadline([{"name": "adult", "group": "include", "result": True}]) is None
