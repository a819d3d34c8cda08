"""The reference evaluator's transforms: plain Python over one patient's facts (see :mod:`screener.rules.reference`).

Deliberately simple and independent of the Polars path: lists of dicts, loops, the window arithmetic of
:mod:`screener.rules.windows` and the unit table. Slow on purpose.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

from screener.rules.concepts import ConceptSet
from screener.rules.units import conversion
from screener.rules.windows import Window
from screener.vocab import NOT_DONE_STATUSES

__all__ = ["Facts", "calendar_months", "whole_years"]

Value = Any
DAY = timedelta(days=1)


def whole_years(birth: date, on: date) -> float:
    return float(on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day)))


def calendar_months(birth: date, on: date) -> float:
    return float((on.year * 12 + on.month) - (birth.year * 12 + birth.month) - (birth.day > on.day))


def value_of(f: dict[str, Any], concept: ConceptSet, column: str = "value") -> float | None:
    """A fact's number in the concept's unit, or ``None`` (no value, or a unit that does not convert)."""
    raw = f.get(column)
    if raw is None:
        return None
    conv = conversion(f.get("unit"), concept.unit, concept.analyte)
    return None if conv is None else raw * conv[0] + conv[1]


def period_end(f: dict[str, Any], now: datetime) -> datetime:
    """``ended_at``; else ``occurred_at`` when stopped/completed; else now."""
    end: datetime | None = f.get("ended_at")
    if end is not None:
        return end
    if f.get("status") in ("stopped", "completed"):
        start: datetime = f["occurred_at"]
        return start
    return now


class Facts:
    """The facts of one patient a transform reads: ``hits`` (in the set, kept by the filter), sorted by time."""

    def __init__(self, hits: list[dict[str, Any]], now: datetime, person: dict[str, Any]) -> None:
        self.hits = sorted(hits, key=lambda f: (f["occurred_at"], f["event_id"]))
        self.now = now
        self.person = person

    def done(self, start: datetime | None = None) -> list[dict[str, Any]]:
        return [f for f in self.hits if f["occurred_at"] <= self.now and (start is None or f["occurred_at"] >= start)]

    def transform(
        self, concept: ConceptSet, name: str, window: Window | None, gap: Window | None, other: Facts | None
    ) -> Value:
        now = self.now
        start = window.start(now) if window is not None else None
        if name == "upcoming":
            assert window is not None
            end = window.end(now)
            return any(f.get("status") in NOT_DONE_STATUSES and now <= f["occurred_at"] <= end for f in self.hits)
        if name in ("exposure_days", "on_now", "continuous"):
            return self.periods(name, window, gap)
        if name in ("after", "before"):
            assert other is not None and window is not None
            return self.relation(name == "after", other.done(), window)
        hits = self.done(start)
        simple: dict[str, Callable[[], Value]] = {
            "ever": lambda: bool(hits),
            "within": lambda: bool(hits),
            "count": lambda: float(len(hits)),
            "count_days": lambda: float(len({f["occurred_at"].date() for f in hits})),
            "days_since": lambda: float((now - hits[-1]["occurred_at"]) // DAY) if hits else None,
            "days_since_first": lambda: float((now - hits[0]["occurred_at"]) // DAY) if hits else None,
            "latest_code": lambda: (hits[-1].get("value_code") or hits[-1]["code"]) if hits else None,
        }
        if name in simple:
            return simple[name]()
        if name == "age_at_first":
            birth = self.person.get("birth_date")
            return None if not hits or birth is None else whole_years(birth, hits[0]["occurred_at"].date())
        if name == "episodes":
            assert gap is not None
            if not hits:
                return 0.0
            new = sum(1 for a, b in itertools.pairwise(hits) if a["occurred_at"] <= gap.start(b["occurred_at"]))
            return float(1 + new)
        values = [v for v in (value_of(f, concept) for f in hits) if v is not None]
        if name in ("change", "pct_change"):
            if len(values) < 2:
                return None
            diff = values[-1] - values[0]
            if name == "change":
                return diff
            return None if values[0] == 0 else finite(100 * diff / values[0])
        if not values:
            return None
        return {
            "latest": lambda: values[-1],
            "earliest": lambda: values[0],
            "min": lambda: min(values),
            "max": lambda: max(values),
            "mean": lambda: sum(values) / len(values),
        }[name]()

    def periods(self, name: str, window: Window | None, gap: Window | None) -> Value:
        now = self.now
        facts = self.done()
        if name == "on_now":
            return any(
                (f.get("ended_at") is not None and f["ended_at"] >= now)
                or (f.get("ended_at") is None and (f.get("status") or "active") == "active")
                for f in facts
            )
        if name == "exposure_days":
            start = window.start(now) if window is not None else None
            days: set[date] = set()
            for f in facts:
                end = min(period_end(f, now), now)
                if start is not None and period_end(f, now) < start:
                    continue
                first = max(f["occurred_at"], start) if start is not None else f["occurred_at"]
                d = first.date()
                while d <= end.date():
                    days.add(d)
                    d += DAY
            return float(len(days))
        assert window is not None and gap is not None
        blocks: list[list[datetime]] = []
        for f in facts:
            end = min(period_end(f, now), now)
            if blocks and gap.start(f["occurred_at"]) <= blocks[-1][1]:
                blocks[-1][1] = max(blocks[-1][1], end)
            else:
                blocks.append([f["occurred_at"], end])
        cover = window.start(now)
        return any(b[0] <= cover and b[1] >= now for b in blocks)

    def relation(self, after: bool, others: list[dict[str, Any]], window: Window) -> bool:
        for f in self.done():
            t = f["occurred_at"]
            for o in others:
                u = o["occurred_at"]
                if (after and window.start(t) <= u <= t) or (not after and t <= u <= window.end(t)):
                    return True
        return False


def finite(x: Any) -> Any:
    """``x``, or ``None`` when it is not a finite real number (overflow, a complex power)."""
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, complex):
        return None
    if isinstance(x, float | int) and not math.isfinite(x):
        return None
    return x
