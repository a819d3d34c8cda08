"""The append-only audit log (reads and the failed-login count)."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa

from screener.alerts import schema as t
from screener.alerts._common import (
    StoreBase,
    _utc,
)


class AuditPart(StoreBase):
    # --- audit -------------------------------------------------------------------------------------------------
    def audit(
        self,
        username: str,
        action: str,
        object_type: str | None = None,
        object_id: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Append one entry to the audit log (views, logins and anything not already audited)."""
        with self.engine.begin() as conn:
            self._audit(conn, username, action, object_type, object_id, detail)

    def failed_logins(self, username: str, within: timedelta) -> int:
        """Failed logins recorded for ``username`` in the audit log during the last ``within``."""
        a = t.audit_log.c
        with self.engine.connect() as conn:
            return int(
                conn.execute(
                    sa.select(sa.func.count())
                    .select_from(t.audit_log)
                    .where(a.username == username, a.action == "login_failed", a.at >= self.clock() - within)
                ).scalar()
                or 0
            )

    def audit_entries(self, limit: int = 200) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            rows = [
                dict(r)
                for r in conn.execute(sa.select(t.audit_log).order_by(t.audit_log.c.id.desc()).limit(limit)).mappings()
            ]
        for r in rows:
            r["at"] = _utc(r["at"])
        return rows

    def last_viewed(self, username: str, token: str) -> datetime | None:
        """When ``username`` last opened the match ``token`` (from the audit log), or None if never."""
        a = t.audit_log.c
        q = sa.select(sa.func.max(a.at)).where(
            a.username == username, a.action == "view_match", a.object_type == "match", a.object_id == token
        )
        with self.engine.connect() as conn:
            return _utc(conn.execute(q).scalar())

    def last_viewed_many(self, username: str, tokens: list[str]) -> dict[str, datetime]:
        """{token: when ``username`` last opened it} for the tokens they have opened (one query)."""
        if not tokens:
            return {}
        a = t.audit_log.c
        q = (
            sa.select(a.object_id, sa.func.max(a.at))
            .where(a.username == username, a.action == "view_match", a.object_type == "match")
            .where(a.object_id.in_(tokens))
            .group_by(a.object_id)
        )
        with self.engine.connect() as conn:
            return {str(tok): at for tok, at in ((r[0], _utc(r[1])) for r in conn.execute(q)) if at is not None}

    def login_failures(self, username: str, client: str, within: timedelta) -> tuple[int, datetime | None]:
        """(failed logins, time of the latest) for ``username`` from ``client`` during the last ``within``; a
        success from that client resets the count (failures before it are not counted)."""
        a = t.audit_log.c
        since = self.clock() - within
        with self.engine.connect() as conn:
            last_ok = conn.execute(
                sa.select(sa.func.max(a.at)).where(a.username == username, a.action == "login", a.at >= since)
            ).scalar()
            q = sa.select(sa.func.count(), sa.func.max(a.at)).where(
                a.username == username,
                a.action == "login_failed",
                a.object_type == "client",
                a.object_id == client,
                a.at >= (_utc(last_ok) or since),
            )
            n, last = conn.execute(q).one()
        return int(n or 0), _utc(last)
