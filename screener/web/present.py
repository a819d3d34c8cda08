"""How pages say things to people: local times (``settings.timezone``, Europe/London by default), en-GB dates,
units as people write them, criteria in words, and the deadline a closing window sets.

Choices (the issue leaves their form to us): times read ``1 Jun 2026, 10:05 BST`` (the zone's abbreviation says
whether summer time applies); dates ``15 June 2026``; a snooze date is typed as ``DD/MM/YYYY`` (an HTML date input
shows the browser's locale, mm/dd/yyyy in a US-English browser) and ISO ``YYYY-MM-DD`` is accepted too. The
deadline of a match is the earliest ``expires_at`` of its inclusion criteria that hold (the moment a windowed
criterion such as "onset within 6 hours" stops holding).
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from screener.alerts.store import humanise

__all__ = [
    "criterion_label",
    "date_gb",
    "deadline",
    "install_filters",
    "local_time",
    "parse_day",
    "plain_text",
    "time_left",
]

#: Units as people write them (the rule files' UCUM-like spellings on the left).
_UNITS = (
    (re.compile(r"\s*\{score\}"), ""),
    (re.compile(r"\s*\{[^}]*\}"), ""),  # other UCUM annotations ({cells}, {beats}) read as nothing
    (re.compile(r"mL/min/1\.73m2\b"), "mL/min/1.73 m²"),
    (re.compile(r"\bkg/m2\b"), "kg/m²"),
    (re.compile(r"\bm2\b"), "m²"),
    (re.compile(r"\bumol/L\b"), "µmol/L"),
    (re.compile(r"10\*9/L"), "× 10⁹/L"),
    (re.compile(r"10\*12/L"), "× 10¹²/L"),
    (re.compile(r"\bCel\b"), "°C"),
    (re.compile(r"\[in_i\]"), "in"),
    (re.compile(r"mm\[Hg\]"), "mmHg"),
)
_IDENT = re.compile(r"\b([a-z][a-z0-9]*(?:_[a-z0-9]+)+)\b")


def plain_text(text: str | None) -> str:
    """Evidence for people: units as written by hand, ``snake_case`` names as words."""
    if not text:
        return ""
    out = text
    for pattern, repl in _UNITS:
        out = pattern.sub(repl, out)
    return _IDENT.sub(lambda m: m.group(1).replace("_", " "), out)


def criterion_label(c: dict[str, Any]) -> str:
    """A criterion's ``label`` from the rule file, else its name humanised."""
    return str(c.get("label") or humanise(str(c.get("name", ""))))


def _aware(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float):  # microseconds since the epoch (Polars' JSON of a datetime)
        return datetime.fromtimestamp(value / 1_000_000, UTC)
    text = str(value).strip().removesuffix(" UTC").replace(" ", "T", 1)
    try:
        parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def local_time(value: Any, tz: str = "Europe/London", *, with_date: bool = True) -> str:
    """``1 Jun 2026, 10:05 BST`` in ``tz`` (or ``10:05 BST`` without the date); empty for None."""
    dt = _aware(value)
    if dt is None:
        return ""
    here = dt.astimezone(ZoneInfo(tz))
    clock = f"{here:%H:%M} {here.tzname()}"
    return f"{here.day} {here:%b %Y}, {clock}" if with_date else clock


def date_gb(value: date | datetime | None) -> str:
    """``15 June 2026``; empty for None."""
    if value is None:
        return ""
    return f"{value.day} {value:%B %Y}"


def parse_day(text: str) -> date | None:
    """A date typed as ``DD/MM/YYYY`` (also ``D/M/YYYY``, ``DD-MM-YYYY``) or ISO ``YYYY-MM-DD``; None if empty.

    :raises ValueError: with a message in words when it is not a date."""
    text = text.strip()
    if not text:
        return None
    m = re.fullmatch(r"(\d{1,2})[/.-](\d{1,2})[/.-](\d{4})", text)
    try:
        if m:
            return date(int(m.group(3)), int(m.group(2)), int(m.group(1)))
        return date.fromisoformat(text)
    except ValueError:
        pass
    raise ValueError(f"'{text}' is not a date; write it as day/month/year, for example 15/06/2026.")


def deadline(criteria: list[dict[str, Any]]) -> tuple[datetime, str] | None:
    """The earliest ``expires_at`` among inclusion criteria that hold, with that criterion's label; None when no
    criterion depends on a closing window."""
    found: list[tuple[datetime, str]] = []
    for c in criteria:
        at = _aware(c.get("expires_at"))
        if at is not None and c.get("group") == "include" and c.get("result") is True:
            found.append((at, criterion_label(c)))
    return min(found) if found else None


def time_left(until: datetime, now: datetime) -> str:
    """``1 h 16 min left``, ``40 min left``, ``2 days 3 h left``, or ``passed 5 min ago``."""
    delta = until - now
    past = delta < timedelta(0)
    minutes = int(abs(delta).total_seconds() // 60)
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        text = f"{days} day{'s' if days != 1 else ''} {hours} h"
    elif hours:
        text = f"{hours} h {mins} min"
    else:
        text = f"{mins} min"
    return f"passed {text} ago" if past else f"{text} left"


def install_filters(env: Any, tz: str) -> None:
    """Register the filters on a Jinja environment: ``local``, ``local_clock``, ``date_gb``, ``plain``, ``label``."""
    env.filters["local"] = lambda v: local_time(v, tz)
    env.filters["local_clock"] = lambda v: local_time(v, tz, with_date=False)
    env.filters["date_gb"] = date_gb
    env.filters["plain"] = plain_text
    env.filters["label"] = criterion_label
    env.globals["timezone"] = tz
