"""The ``studies`` table: metadata synced from rule files, read by the worklist and the public page."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from screener.alerts import schema as t
from screener.alerts._common import IMMEDIATE_HORIZON, StoreBase, User, humanise
from screener.logging import get_logger

log = get_logger("screener.alerts.store")


class StudiesPart(StoreBase):
    def sync_studies(self, studies: Sequence[object]) -> None:
        """Upsert study metadata from the loaded rule files (``screener.rules.Study`` or anything with the same
        attributes). ``studies`` is the complete current set, as the engine passes it: a known study missing from
        a non-empty call is marked inactive (its rule file was removed), which takes it off the public page and
        the worklist's study filter while its matches stay on the worklist. An empty call changes nothing.
        ``render_markdown()`` output is stored for the public page; if it is missing or fails, the page shows
        the summary alone."""
        now = self.clock()
        rows = [_study_row(s, now) for s in studies]
        if not rows:
            return
        with self.engine.begin() as conn:
            known = set(conn.execute(sa.select(t.studies.c.id)).scalars())
            teams = set(conn.execute(sa.select(t.teams.c.name)).scalars())
            for team in sorted({r["team"] for r in rows} - teams):
                conn.execute(t.teams.insert().values(name=team))
                teams.add(team)
            for r in rows:
                if r["id"] in known:
                    conn.execute(t.studies.update().where(t.studies.c.id == r["id"]).values(**r))
                else:
                    conn.execute(t.studies.insert().values(**r))
                    known.add(r["id"])
            gone = sorted(known - {r["id"] for r in rows})
            if gone:
                conn.execute(
                    t.studies.update()
                    .where(t.studies.c.id.in_(gone), t.studies.c.active.is_(True))
                    .values(active=False, updated_at=now)
                )

    # --- studies -----------------------------------------------------------------------------------------
    def studies(self, *, open_on: date | None = None, user: User | None = None) -> list[dict[str, Any]]:
        """Known studies (id order); ``open_on`` keeps those open that day; ``user`` keeps the ones they see."""
        s = t.studies.c
        q = sa.select(t.studies).where(s.active.is_(True)).order_by(s.id)
        if open_on is not None:
            q = q.where(sa.or_(s.opens.is_(None), s.opens <= open_on), sa.or_(s.closes.is_(None), s.closes >= open_on))
        if user is not None and not user.is_admin:
            q = q.where(s.team.in_(sorted(user.teams)))
        with self.engine.connect() as conn:
            out = []
            for row in conn.execute(q).mappings():
                d = dict(row)
                d["settings"] = json.loads(d["settings"] or "[]")
                for k in ("contacts", "sites", "criteria_plain"):
                    d[k] = json.loads(d[k] or "[]")
                out.append(d)
            return out


def _study_row(s: object, now: datetime) -> dict[str, Any]:
    def get(name: str, default: Any = None) -> Any:
        return getattr(s, name, default)

    horizon = get("horizon")
    markdown = None
    render = get("render_markdown")
    if callable(render):
        try:
            markdown = str(render())
        except Exception as exc:  # a rendering bug must not stop the sync; the page falls back to the summary
            log.warning("study_markdown_failed", study=get("id"), error=str(exc))
    team = get("team") or ""
    return {
        "id": str(get("id")),
        "title": str(get("title") or get("id")),
        "summary": str(get("summary") or ""),
        "team": str(team),
        "sponsor": get("sponsor"),
        "portfolio": bool(get("portfolio", False)),
        "target": get("target"),
        "opens": get("opens"),
        "closes": get("closes"),
        "settings": json.dumps(list(get("settings") or ())),
        "horizon_s": horizon.total_seconds() if isinstance(horizon, timedelta) else None,
        "content_hash": get("content_hash"),
        "criteria_markdown": markdown,
        "lay_summary": get("lay_summary"),
        "contacts": json.dumps([_contact(c) for c in get("contacts") or ()]),
        "protocol_url": get("protocol_url"),
        "pis_url": get("pis_url"),
        "sites": json.dumps([str(x) for x in get("sites") or ()]),
        "criteria_plain": json.dumps(
            [
                {"group": g, "label": _plain_label(c)}
                for g in ("include", "exclude")
                for c in get(g) or ()
                if getattr(c, "kind", None) != "setting"  # the implicit setting check: the page says where
            ]
        ),
        "alert": _alert_mode(get("alert"), horizon),
        "active": True,
        "updated_at": now,
    }


def _contact(c: object) -> dict[str, Any]:
    if isinstance(c, dict):
        return {k: c.get(k) for k in ("name", "role", "email", "phone")}
    return {k: getattr(c, k, None) for k in ("name", "role", "email", "phone")}


def _plain_label(c: object) -> str:
    """The criterion in words: its ``display`` (label, or name humanised), else the name humanised here."""
    return str(getattr(c, "display", None) or getattr(c, "label", None) or humanise(str(getattr(c, "name", c))))


def _alert_mode(alert: object, horizon: object) -> str:
    """The rule file's ``alert``; without one, ``immediate`` when every window is 24 hours or less (the contract's
    default counts the shortest window; until the loader gives ``alert`` the longest, ``horizon``, is used)."""
    if alert in ("immediate", "digest"):
        return str(alert)
    return "immediate" if isinstance(horizon, timedelta) and horizon <= IMMEDIATE_HORIZON else "digest"
