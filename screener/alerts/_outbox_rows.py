"""The ``outbox`` table: rows added with new matches, claimed, marked, counted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from screener.alerts import schema as t
from screener.alerts._common import (
    _CHUNK,
    StoreBase,
    _utc,
)


class OutboxPart(StoreBase):
    def _enqueue(self, conn: Connection, inserted: list[dict[str, Any]], now: datetime) -> None:
        counts: dict[str, int] = {}
        for r in inserted:
            counts[r["study_id"]] = counts.get(r["study_id"], 0) + 1
        if not self.channels or not counts:
            return
        meta = {
            sid: (team, alert)
            for sid, team, alert in conn.execute(
                sa.select(t.studies.c.id, t.studies.c.team, t.studies.c.alert).where(t.studies.c.id.in_(list(counts)))
            )
        }
        rows = [
            {
                "channel": ch,
                "team": meta.get(sid, ("", None))[0] or "",
                "study_id": sid,
                "count": n,
                "created_at": now,
                "status": "pending",
                "attempts": 0,
                "next_attempt_at": now,
            }
            for sid, n in sorted(counts.items())
            for ch in self.channels
            if ch != "pager" or meta.get(sid, ("", None))[1] == "immediate"
        ]
        if rows:
            conn.execute(t.outbox.insert(), rows)

    # --- outbox ------------------------------------------------------------------------------------------------
    def outbox_due(self, channel: str, now: datetime) -> list[dict[str, Any]]:
        """Pending outbox rows of ``channel`` whose next attempt is due, oldest first, with the study's title and
        ``alert`` mode (``immediate`` or ``digest``)."""
        o = t.outbox.c
        q = (
            sa.select(t.outbox, t.studies.c.title, t.studies.c.alert)
            .select_from(t.outbox.outerjoin(t.studies, t.studies.c.id == o.study_id))
            .where(o.channel == channel, o.status == "pending", o.next_attempt_at <= now)
            .order_by(o.id)
        )
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            for k in ("created_at", "next_attempt_at", "sent_at"):
                r[k] = _utc(r[k])
        return rows

    def outbox_claim(self, ids: Sequence[int], now: datetime, lease: timedelta) -> set[int]:
        """Claim due pending rows for one delivery attempt by pushing their ``next_attempt_at`` to ``now + lease``.

        Returns the ids this caller claimed: a row another sender claimed first (its next attempt is no longer
        due) is left out, so two senders never deliver the same row twice. If the claimer dies before marking the
        row, it is due again when the lease ends (at-least-once delivery)."""
        if not ids:
            return set()
        o = t.outbox.c
        claimed: set[int] = set()
        with self.engine.begin() as conn:
            for i in range(0, len(ids), _CHUNK):
                result = conn.execute(
                    t.outbox.update()
                    .where(o.id.in_(list(ids[i : i + _CHUNK])), o.status == "pending", o.next_attempt_at <= now)
                    .values(next_attempt_at=now + lease)
                    .returning(o.id)
                )
                claimed.update(int(r[0]) for r in result)
        return claimed

    def outbox_mark(
        self, ids: Sequence[int], *, status: str = "sent", error: str | None = None, retry_at: datetime | None = None
    ) -> None:
        """``status='sent'`` marks rows delivered; ``status='pending'`` with ``retry_at`` records a failed attempt
        (attempts + 1, the error, the next try); ``no_recipient`` parks rows nobody can receive."""
        if not ids:
            return
        now = self.clock()
        o = t.outbox.c
        values: dict[str, Any] = {"status": status, "attempts": o.attempts + 1, "last_error": error}
        if status == "sent":
            values["sent_at"] = now
        if retry_at is not None:
            values["next_attempt_at"] = retry_at
        with self.engine.begin() as conn:
            for i in range(0, len(ids), _CHUNK):
                conn.execute(t.outbox.update().where(o.id.in_(list(ids[i : i + _CHUNK]))).values(**values))

    def outbox_counts(self) -> dict[tuple[str, str], int]:
        """{(channel, status): rows}."""
        o = t.outbox.c
        with self.engine.connect() as conn:
            return {
                (r[0], r[1]): r[2]
                for r in conn.execute(sa.select(o.channel, o.status, sa.func.count()).group_by(o.channel, o.status))
            }

    def team_recipients(self, team: str) -> list[str]:
        """Where a team's digest goes: the team mailbox, else the members' own addresses."""
        with self.engine.connect() as conn:
            mailbox = conn.execute(sa.select(t.teams.c.email).where(t.teams.c.name == team)).scalar()
            if mailbox:
                return [mailbox]
            return sorted(
                e
                for e in conn.execute(
                    sa.select(t.users.c.email)
                    .join(t.memberships, t.memberships.c.user_id == t.users.c.id)
                    .where(t.memberships.c.team == team, t.users.c.active.is_(True), t.users.c.email.is_not(None))
                ).scalars()
                if e
            )
