"""The nurse's worklist: the visible matches, one match, funnel actions and counts."""

from __future__ import annotations

import json
from datetime import date, timedelta
from typing import Any

import sqlalchemy as sa

from screener.alerts import schema as t
from screener.alerts._common import (
    ACUTE_HORIZON_S,
    CLOSING_SOON_DAYS,
    DECLINED_REASONS,
    NOT_ELIGIBLE_REASONS,
    VIEWS,
    InvalidAction,
    StoreBase,
    User,
    _utc,
    urgency,
)
from screener.alerts._follow import ruled_out_by
from screener.vocab import ACTIONS, ACTIVE_STAGES, CLOSED_STAGES, INELIGIBLE, KEPT_VISIBLE_STAGES

#: Worklist orders (see :meth:`WorklistPart.worklist`).
SORTS = ("urgency", "newest", "oldest", "study")


class WorklistPart(StoreBase):
    # --- worklist --------------------------------------------------------------------------------------------
    def _visible(self, user: User) -> Any:
        """The WHERE clause that limits matches to the user's teams and hides do-not-contact patients."""
        clauses = [t.matches.c.patient_id.not_in(sa.select(t.do_not_contact.c.patient_id))]
        if not user.is_admin:
            clauses.append(t.studies.c.team.in_(sorted(user.teams) or [""]))
        return sa.and_(*clauses)

    def _worklist_query(
        self,
        user: User,
        columns: list[Any],
        *,
        study: str | None,
        setting: str | None,
        outcome: str | None,
        view: str,
    ) -> Any:
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; expected one of {list(VIEWS)}")
        today = self.clock().date()
        m = t.matches.c
        q = (
            sa.select(*columns)
            .select_from(t.matches.join(t.studies, t.studies.c.id == m.study_id))
            .where(self._visible(user))
        )
        not_snoozed = sa.or_(m.snoozed_until.is_(None), m.snoozed_until <= today)
        # A match no longer eligible leaves the open list, unless the nurse is already talking to the patient.
        still_open = sa.or_(m.outcome != INELIGIBLE, m.stage.in_(KEPT_VISIBLE_STAGES))
        if view == "open":
            q = q.where(m.stage.in_(ACTIVE_STAGES), still_open, not_snoozed)
        elif view == "snoozed":
            q = q.where(m.stage.in_(ACTIVE_STAGES), m.snoozed_until > today)
        elif view == "closed":
            q = q.where(sa.or_(m.stage.in_(CLOSED_STAGES), sa.not_(still_open)))
        if study:
            q = q.where(m.study_id == study)
        if setting:
            q = q.where(m.setting == setting)
        if outcome:
            q = q.where(m.outcome == outcome)
        return q

    def worklist_count(
        self,
        user: User,
        *,
        study: str | None = None,
        setting: str | None = None,
        outcome: str | None = None,
        view: str = "open",
    ) -> int:
        """How many matches :meth:`worklist` would list with these filters over all pages."""
        q = self._worklist_query(user, [sa.func.count()], study=study, setting=setting, outcome=outcome, view=view)
        with self.engine.connect() as conn:
            return int(conn.execute(q).scalar() or 0)

    def worklist(
        self,
        user: User,
        *,
        study: str | None = None,
        setting: str | None = None,
        outcome: str | None = None,
        view: str = "open",
        sort: str = "urgency",
        limit: int = 500,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """The user's matches, one page of ``limit`` rows from ``offset`` (see the module docstring for urgency).

        ``view``: ``open`` (active and not snoozed; a match no longer eligible stays only when approached or
        consented, flagged ``no_longer_eligible``), ``snoozed``, ``closed`` (enrolled, dismissed, no longer
        eligible) or ``all``. ``sort``: ``urgency`` (most urgent, then newest; the default), ``newest``,
        ``oldest`` or ``study`` (title, then newest). Each row has ``token`` (the opaque id for URLs), study
        fields, ``outcome``, ``stage``, ``urgency`` (0 acute, 1 closing soon, 2 other), ``unknowns`` (criteria to
        verify), ``location``, ``upgraded_at``, ``closed_at``, ``changed_at`` and ``patient_id`` (for display to
        the logged-in team member only).

        :raises ValueError: unknown view or sort.
        """
        if sort not in SORTS:
            raise ValueError(f"unknown sort {sort!r}; expected one of {list(SORTS)}")
        today = self.clock().date()
        m, s = t.matches.c, t.studies.c
        urgency = sa.case(
            (s.horizon_s <= ACUTE_HORIZON_S, 0),
            (s.closes <= today + timedelta(days=CLOSING_SOON_DAYS), 1),
            else_=2,
        ).label("urgency")
        columns = [
            m.token,
            m.study_id,
            m.patient_id,
            m.outcome,
            m.stage,
            m.reason,
            m.matched_at,
            m.setting,
            m.location,
            m.snoozed_until,
            m.reopened_at,
            m.upgraded_at,
            m.closed_at,
            m.changed_at,
            m.criteria,
            s.title,
            s.team,
            s.closes,
            urgency,
        ]
        q = self._worklist_query(user, columns, study=study, setting=setting, outcome=outcome, view=view)
        order = {
            "urgency": (urgency, m.matched_at.desc(), m.id.desc()),
            "newest": (m.matched_at.desc(), m.id.desc()),
            "oldest": (m.matched_at, m.id),
            "study": (s.title, m.matched_at.desc(), m.id.desc()),
        }[sort]
        q = q.order_by(*order).limit(max(0, limit)).offset(max(0, offset))
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            for k in ("matched_at", "reopened_at", "upgraded_at", "closed_at", "changed_at"):
                r[k] = _utc(r[k])
            crit = json.loads(r.pop("criteria") or "[]")
            r["unknowns"] = [c.get("name") for c in crit if c.get("result") is None]
            r["snooze_ended"] = r["snoozed_until"] is not None and r["snoozed_until"] <= today
            r["no_longer_eligible"] = r["outcome"] == INELIGIBLE
        return rows

    def get_match(self, user: User, token: str) -> dict[str, Any] | None:
        """The match with this token if ``user`` may see it (else None: callers answer 404), with its study,
        parsed criteria (each with ``to_verify`` for unknown results) and action history, oldest first."""
        m = t.matches.c
        q = (
            sa.select(
                t.matches,
                t.studies.c.title,
                t.studies.c.team,
                t.studies.c.closes,
                t.studies.c.summary,
                t.studies.c.horizon_s,
                t.studies.c.lay_summary,
                t.studies.c.contacts,
                t.studies.c.protocol_url,
                t.studies.c.pis_url,
                t.studies.c.sites,
            )
            .select_from(t.matches.join(t.studies, t.studies.c.id == m.study_id))
            .where(m.token == token, self._visible(user))
        )
        with self.engine.connect() as conn:
            row = conn.execute(q).mappings().first()
            if row is None:
                return None
            d = dict(row)
            d["history"] = [
                dict(a)
                for a in conn.execute(
                    sa.select(t.actions).where(t.actions.c.match_id == d["id"]).order_by(t.actions.c.id)
                ).mappings()
            ]
        d["criteria"] = [{**c, "to_verify": c.get("result") is None} for c in json.loads(d["criteria"] or "[]")]
        d["urgency"] = urgency(d.pop("horizon_s"), d["closes"], self.clock().date())
        d["no_longer_eligible"] = d["outcome"] == INELIGIBLE
        d["contacts"] = json.loads(d["contacts"] or "[]")
        d["sites"] = json.loads(d["sites"] or "[]")
        d["ruled_out"] = ruled_out_by(d["criteria"]) if d["no_longer_eligible"] else []
        for k in ("matched_at", "event_time", "reopened_at", "updated_at", "changed_at", "closed_at", "upgraded_at"):
            d[k] = _utc(d[k])
        for a in d["history"]:
            a["at"] = _utc(a["at"])
        return d

    def record_action(
        self,
        user: User,
        token: str,
        action: str,
        *,
        reason: str | None = None,
        until: date | None = None,
        note: str | None = None,
    ) -> dict[str, Any] | None:
        """Record a funnel action on a match the user can see; returns the updated match, or None when the user
        cannot see it (callers answer 404). Every action is also written to the audit log.

        :raises InvalidAction: unknown action, a dismissal without a known coded reason, a snooze without a
            future date.
        """
        reason = reason or None
        if action not in ACTIONS:
            known = ", ".join(a.replace("_", " ") for a in ACTIONS)
            raise InvalidAction(f"'{action}' is not something that can be recorded here; choose one of: {known}.")
        codes = {"not_eligible": NOT_ELIGIBLE_REASONS, "declined": DECLINED_REASONS}.get(action)
        if codes is not None and reason not in codes:
            what = "is not eligible" if action == "not_eligible" else "declined"
            raise InvalidAction(f"Choose a reason why the patient {what}: {', '.join(codes.values())}.")
        if codes is None and reason is not None:
            raise InvalidAction(f"A reason is only recorded with 'not eligible' or 'declined', not with '{action}'.")
        today = self.clock().date()
        if action == "snoozed" and (until is None or until <= today):
            raise InvalidAction("Give the date to snooze until: a day after today, for example 15/06/2026.")
        if action != "snoozed" and until is not None:
            raise InvalidAction(f"A snooze date is only recorded with 'snooze', not with '{action}'.")
        note = (note or "").strip()[:2000] or None
        now = self.clock()
        with self.engine.begin() as conn:
            row = (
                conn.execute(
                    sa.select(t.matches.c.id, t.matches.c.study_id, t.matches.c.setting)
                    .select_from(t.matches.join(t.studies, t.studies.c.id == t.matches.c.study_id))
                    .where(t.matches.c.token == token, self._visible(user))
                )
                .mappings()
                .first()
            )
            if row is None:
                return None
            conn.execute(
                t.actions.insert().values(
                    match_id=row["id"],
                    action=action,
                    reason=reason,
                    until=until,
                    note=note,
                    username=user.username,
                    at=now,
                )
            )
            values: dict[str, Any] = {"updated_at": now}
            if action == "snoozed":
                values["snoozed_until"] = until
            else:
                values.update(stage=action, reason=reason, snoozed_until=None)
            conn.execute(t.matches.update().where(t.matches.c.id == row["id"]).values(**values))
            self._audit(
                conn,
                user.username,
                "action",
                "match",
                token,
                {"action": action, "reason": reason, "until": until.isoformat() if until else None},
            )
        if self.metrics is not None:
            self.metrics.funnel_actions.labels(row["study_id"], row["setting"] or "unknown", action).inc()
        return self.get_match(user, token)

    def funnel(self, user: User) -> list[dict[str, Any]]:
        """Counts of matches by study and stage for the user's studies (no patient data)."""
        m = t.matches.c
        q = (
            sa.select(m.study_id, m.stage, sa.func.count().label("n"))
            .select_from(t.matches.join(t.studies, t.studies.c.id == m.study_id))
            .where(self._visible(user))
            .group_by(m.study_id, m.stage)
            .order_by(m.study_id, m.stage)
        )
        with self.engine.connect() as conn:
            return [dict(r) for r in conn.execute(q).mappings()]
