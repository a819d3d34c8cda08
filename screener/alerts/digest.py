"""Compose outbound messages from outbox rows. Pure functions: rows in, :class:`Message` out.

A message names studies (id and title), counts and a link to the worklist filtered by study. It never carries a
patient identifier, name, NHS number or any clinical detail: outbox rows hold none, and these functions read
only ``study_id``, ``title``, ``team`` and ``count``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any
from urllib.parse import urlencode

from screener.alerts.sinks.base import Message

__all__ = ["team_digest", "webhook_message", "worklist_link"]


def worklist_link(public_url: str, study_id: str | None = None) -> str:
    base = public_url.rstrip("/") + "/worklist"
    return f"{base}?{urlencode({'study': study_id})}" if study_id else base


def _plural(n: int) -> str:
    return f"{n} new match" if n == 1 else f"{n} new matches"


def webhook_message(study_id: str, rows: Sequence[dict[str, Any]], public_url: str) -> Message:
    """One chat message for every pending row of one study."""
    n = sum(int(r["count"]) for r in rows)
    title = next((r.get("title") for r in rows if r.get("title")), None)
    named = f"{study_id} ({title})" if title else study_id
    urgent = "URGENT: " if any(r.get("alert") == "immediate" for r in rows) else ""
    text = f"{urgent}screener: {_plural(n)} for {named}."
    return Message(subject=text, text=text, link=worklist_link(public_url, study_id))


def team_digest(team: str, rows: Sequence[dict[str, Any]], public_url: str, recipients: Sequence[str]) -> Message:
    """One email for every pending row of one team, a line per study, most matches first."""
    per_study: dict[str, list[Any]] = {}
    for r in rows:
        entry = per_study.setdefault(r["study_id"], [0, r.get("title")])
        entry[0] += int(r["count"])
    total = sum(v[0] for v in per_study.values())
    urgent = any(r.get("alert") == "immediate" for r in rows)
    lines = [f"screener digest for team {team or '(no team)'}: {_plural(total)} waiting for review.", ""]
    for study_id, (n, title) in sorted(per_study.items(), key=lambda kv: (-kv[1][0], kv[0])):
        lines.append(f"- {study_id}{f' - {title}' if title else ''}: {_plural(n)}")
        lines.append(f"  {worklist_link(public_url, study_id)}")
    lines += ["", "Patient details are only shown in the worklist, after you log in."]
    return Message(
        subject=f"{'URGENT: ' if urgent else ''}screener: {_plural(total)} for {team or 'your team'}",
        text="\n".join(lines),
        link=worklist_link(public_url),
        recipients=tuple(recipients),
    )
