"""Names shared by the worklist store's parts: actions, reasons, stages, :class:`User`, and the base class."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from screener.alerts import schema as t

if TYPE_CHECKING:
    from screener.metrics import Metrics

NOT_ELIGIBLE_REASONS = {
    "criterion_not_met": "A criterion is not met on review",
    "clinical_judgement": "Not appropriate in the clinician's judgement",
    "too_unwell": "Too unwell to approach",
    "in_other_study": "Already in another study",
    "cannot_consent": "Unable to give informed consent",
    "deceased": "Deceased",
    "moved_away": "Moved away or left the service",
    "other": "Other",
}
DECLINED_REASONS = {
    "not_interested": "Not interested",
    "time_commitment": "Visits or time commitment",
    "travel": "Travel or transport",
    "treatment_concerns": "Concerns about the treatment",
    "family_advice": "Family or carer advised against",
    "no_reason": "No reason given",
    "other": "Other",
}
#: Outbound channels. ``pager`` (a second webhook, page/SMS style) only carries studies with ``alert: immediate``.
CHANNELS = ("webhook", "email", "pager")
VIEWS = ("open", "snoozed", "closed", "all")
ACUTE_HORIZON_S = 72 * 3600.0
CLOSING_SOON_DAYS = 30
_CHUNK = 500
#: A study whose windows are all this short or shorter alerts immediately unless its rule file says otherwise.
IMMEDIATE_HORIZON = timedelta(hours=24)
#: Words written in capitals or mixed case when a criterion name is humanised.
_WORDS = {
    "egfr": "eGFR",
    "hba1c": "HbA1c",
    "bmi": "BMI",
    "nihss": "NIHSS",
    "copd": "COPD",
    "ckd": "CKD",
    "fev1": "FEV1",
}


def humanise(name: str) -> str:
    """A criterion or concept name in words: ``egfr_25_to_59`` -> ``eGFR 25 to 59``, ``on_insulin`` ->
    ``On insulin``."""
    words = [_WORDS.get(w.lower(), w) for w in name.replace("-", " ").replace("_", " ").split()]
    if not words:
        return name
    if words[0] == words[0].lower():
        words[0] = words[0][:1].upper() + words[0][1:]
    return " ".join(words)


class InvalidAction(ValueError):
    """A worklist action that cannot be recorded (unknown action, missing or unknown reason, bad date)."""


@dataclass(frozen=True)
class User:
    id: int
    username: str
    role: str
    teams: frozenset[str] = field(default_factory=frozenset)
    email: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def can_see_team(self, team: str | None) -> bool:
        return self.is_admin or (team is not None and team in self.teams)


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _now() -> datetime:
    return datetime.now(UTC)


def _results(criteria_json: str | None) -> dict[tuple[str, str], Any]:
    try:
        items = json.loads(criteria_json or "[]")
    except ValueError:
        return {}
    return {(str(c.get("group", "")), str(c.get("name", ""))): c.get("result") for c in items if isinstance(c, dict)}


def urgency(horizon_s: float | None, closes: date | None, today: date) -> int:
    """0 acute (longest window <= 72 h), 1 closing within 30 days, 2 other. Mirrors the SQL in worklist()."""
    if horizon_s is not None and horizon_s <= ACUTE_HORIZON_S:
        return 0
    if closes is not None and closes <= today + timedelta(days=CLOSING_SOON_DAYS):
        return 1
    return 2


def materially_changed(old_outcome: str, old_criteria: str, new_outcome: str, new_criteria: str) -> bool:
    """True when the outcome differs or any criterion's three-valued result differs, appears or disappears."""
    return old_outcome != new_outcome or _results(old_criteria) != _results(new_criteria)


class StoreBase:
    """What every part of :class:`screener.alerts.store.SqlStore` shares: the engine, the clock, the metrics, the
    outbound channels, and the two helpers several parts use (the audit append and the register read)."""

    engine: Engine
    clock: Callable[[], datetime]
    metrics: Metrics | None
    channels: tuple[str, ...]

    def _audit(
        self,
        conn: Connection,
        username: str,
        action: str,
        object_type: str | None,
        object_id: str | None,
        detail: dict[str, Any] | None,
    ) -> None:
        conn.execute(
            t.audit_log.insert().values(
                at=self.clock(),
                username=username,
                action=action,
                object_type=object_type,
                object_id=object_id,
                detail=json.dumps(detail, sort_keys=True, default=str) if detail else None,
            )
        )

    @staticmethod
    def _dnc_ids(conn: Connection) -> set[str]:
        return set(conn.execute(sa.select(t.do_not_contact.c.patient_id)).scalars())

    def _enqueue(self, conn: Connection, inserted: list[dict[str, Any]], now: datetime) -> None:
        """Add outbox rows for newly inserted matches (implemented by the outbox part)."""
        raise NotImplementedError
