"""Time windows: ``'30m'``, ``'6h'``, ``'90d'``, ``'12w'``, ``'6mo'``, ``'2y'``.

A window ``w`` relative to the screening time ``now`` covers ``[now - w, now]``: both ends are INCLUSIVE, so a
fact exactly ``w`` before ``now`` is inside and a fact one microsecond earlier is not. Facts after ``now`` are
never used (``now`` is an injectable clock). Minutes, hours, days and weeks are exact durations; months and
years are calendar arithmetic (``now`` 2026-03-31 minus ``'1mo'`` is 2026-02-28, the day clamped to the month).
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass
from datetime import datetime, timedelta

__all__ = ["UNITS", "Window", "parse_window"]

UNITS = {"m": "minute", "h": "hour", "d": "day", "w": "week", "mo": "month", "y": "year"}
_PATTERN = re.compile(r"^([0-9]{1,6})(m|h|d|w|mo|y)$")


@dataclass(frozen=True)
class Window:
    """A look-back window. ``text`` is the canonical spelling (``'90d'``)."""

    amount: int
    unit: str

    @property
    def text(self) -> str:
        return f"{self.amount}{self.unit}"

    @property
    def fine(self) -> bool:
        """True for minute and hour windows (evidence then shows times, not just dates)."""
        return self.unit in ("m", "h")

    def start(self, now: datetime) -> datetime:
        """The earliest instant inside the window ending at ``now`` (inclusive)."""
        return self.shift(now, -1)

    def end(self, now: datetime) -> datetime:
        """The last instant of the look-ahead window starting at ``now`` (inclusive): ``now + w``."""
        return self.shift(now, 1)

    def offset(self, sign: int) -> str:
        """The Polars ``dt.offset_by`` spelling of ``sign * w`` (same calendar arithmetic as :meth:`shift`)."""
        return f"{'-' if sign < 0 else ''}{self.amount}{self.unit}"

    def shift(self, t: datetime, sign: int) -> datetime:
        """``t + sign * w``: exact for minutes to weeks; months and years by the calendar, the day clamped."""
        step = {"m": timedelta(minutes=1), "h": timedelta(hours=1), "d": timedelta(days=1), "w": timedelta(weeks=1)}
        if self.unit in step:
            return t + sign * self.amount * step[self.unit]
        now = t
        months = sign * -1 * self.amount * (12 if self.unit == "y" else 1)
        total = now.year * 12 + (now.month - 1) - months
        year, month = divmod(total, 12)
        month += 1
        day = min(now.day, calendar.monthrange(year, month)[1])
        return now.replace(year=year, month=month, day=day)

    @property
    def upper_bound(self) -> timedelta:
        """A duration at least as long as the window (months count 31 days, years 366)."""
        per = {
            "m": timedelta(minutes=1),
            "h": timedelta(hours=1),
            "d": timedelta(days=1),
            "w": timedelta(weeks=1),
            "mo": timedelta(days=31),
            "y": timedelta(days=366),
        }[self.unit]
        return per * self.amount

    def describe(self) -> str:
        """Plain English: ``'90d'`` -> ``'90 days'``."""
        name = UNITS[self.unit]
        return f"{self.amount} {name}{'' if self.amount == 1 else 's'}"


def parse_window(text: object) -> Window:
    """Parse a window literal.

    :raises ValueError: with a message fit for a rule author when ``text`` is not a window.
    """
    if not isinstance(text, str):
        raise ValueError(f"a window must be a quoted string such as '90d', got {text!r}")
    m = _PATTERN.match(text.strip())
    if not m:
        raise ValueError(
            f"bad window '{text}': expected a whole number and a unit "
            "(m minutes, h hours, d days, w weeks, mo months, y years), e.g. '90d'"
        )
    amount = int(m.group(1))
    if amount <= 0:
        raise ValueError(f"bad window '{text}': the length must be at least 1")
    return Window(amount, m.group(2))
