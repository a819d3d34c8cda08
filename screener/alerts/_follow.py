"""Matches follow the patient: how a later screen's row changes a stored match (contract "Matches follow the
patient" in the shared CONTRACT; the engine sends ``ineligible`` rows only for pairs it knows have a match).

- **No longer eligible**: an ``ineligible`` row for an open match sets its outcome to ``ineligible``, keeps the
  criteria that ruled it out (the new criteria replace the old) and sets ``closed_at``; the match leaves the open
  worklist for the closed view. An *approached* or *consented* match stays on the open worklist with a warning
  (the nurse is already talking to the patient). A dismissed or enrolled match only gets the new outcome.
  A later eligible/possible row reopens it (``closed_at`` cleared), still without a second alert.
- **Upgrade**: possible -> eligible sets ``upgraded_at`` (shown as an upgrade); eligible -> possible clears it.
- ``previous_outcome`` keeps the outcome before the last change; ``changed_at`` is when the engine last changed
  the outcome or the evidence (what "changed since you last looked" compares with).
- Location, setting and demographics are taken from the row when it carries them, else kept.
- Never an outbound alert: only inserts reach the outbox.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from screener.vocab import ELIGIBLE, INELIGIBLE, KEPT_VISIBLE_STAGES, POSSIBLE

__all__ = ["KEPT_VISIBLE_STAGES", "followed", "ruled_out_by"]

_KEEP_WHEN_NULL = ("setting", "imd_decile", "ethnic_group", "location")


def followed(old: dict[str, Any], row: dict[str, Any], now: datetime) -> tuple[dict[str, Any] | None, str | None]:
    """The column values to write for an existing match ``old`` given the new screen ``row``, and the event to
    audit (``no_longer_eligible``, ``upgraded``, ``eligible_again``) or None. ``(None, None)`` when nothing
    changed."""
    kept = {k: row.get(k) if row.get(k) is not None else old.get(k) for k in _KEEP_WHEN_NULL}
    evidence_changed = (old["outcome"], old["criteria"]) != (row["outcome"], row["criteria"])
    same_rest = old["rule_hash"] == row["rule_hash"] and all(kept[k] == old.get(k) for k in _KEEP_WHEN_NULL)
    if not evidence_changed and same_rest:
        return None, None
    outcome_changed = old["outcome"] != row["outcome"]
    event: str | None = None
    closed_at, upgraded_at = old.get("closed_at"), old.get("upgraded_at")
    if row["outcome"] == INELIGIBLE:
        if old["outcome"] != INELIGIBLE:
            closed_at, upgraded_at, event = now, None, "no_longer_eligible"
    else:
        if old["outcome"] == INELIGIBLE:
            event = "eligible_again"
        closed_at = None
        if old["outcome"] == POSSIBLE and row["outcome"] == ELIGIBLE:
            upgraded_at, event = now, "upgraded"
        elif row["outcome"] == POSSIBLE:
            upgraded_at = None
    values = {
        "outcome": row["outcome"],
        "criteria": row["criteria"],
        "rule_hash": row["rule_hash"],
        **kept,
        "previous_outcome": old["outcome"] if outcome_changed else old.get("previous_outcome"),
        "changed_at": now if evidence_changed else old.get("changed_at"),
        "closed_at": closed_at,
        "upgraded_at": upgraded_at,
        "updated_at": now,
    }
    return values, event


def ruled_out_by(criteria: list[dict[str, Any]] | str | None) -> list[dict[str, Any]]:
    """The criteria that make a result ineligible: inclusions that are false and exclusions that are true."""
    items = json.loads(criteria or "[]") if isinstance(criteria, str | None) else criteria
    return [
        c
        for c in items
        if isinstance(c, dict)
        and (
            (c.get("group") == "include" and c.get("result") is False)
            or (c.get("group") == "exclude" and c.get("result") is True)
        )
    ]
