"""The worklist store: :class:`SqlStore`, SQLAlchemy Core over SQLite (default) or PostgreSQL (by URL).

Opening a store runs the Alembic migrations in ``screener/alerts/migrations`` up to head (under an advisory lock
on PostgreSQL, an immediate transaction on SQLite), so a fresh database and an old one both end up current.

Policies this module owns (the issue leaves their exact form to us):

- **One alert per patient and study, ever.** :meth:`SqlStore.record_matches` inserts a (study, patient) once;
  later screens update the stored outcome, criteria and rule hash in place and never alert again.
- **Dismissed stays dismissed unless the rule file changes materially.** A match at stage ``not_eligible`` or
  ``declined`` goes back to ``new`` (and is marked *reopened* on the worklist, without a second outbound alert)
  only when BOTH the rule hash changed AND the result changed materially: the outcome differs, or some
  criterion's result (true / false / unknown) differs, or a criterion was added or removed. A new value in the
  evidence text alone (say a new eGFR still in range) is not material.
- **A snoozed match comes back on its date**: it is hidden from the open worklist while ``snoozed_until`` is
  after today (UTC) and shows again from that day, flagged "snooze ended".
- **Do-not-contact**: a patient on the register gets no new match rows (the engine filters too) and their
  existing matches disappear from every worklist, page and API answer; removing them from the register shows
  the matches again.
- **Outbox**: each new match adds to one outbox row per (channel, study) in the same transaction, carrying
  the study, its team and a count, never a patient.
- **Urgency** on the worklist, most urgent first, then newest first within a tier:
  tier 0 *acute*: the study's longest criterion window is 72 hours or less (the patient may be discharged or
  the window closes within days); tier 1 *closing soon*: the study closes within 30 days; tier 2 everything else.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from screener.alerts import auth
from screener.alerts import schema as t
from screener.alerts.base import MATCH_COLUMNS
from screener.errors import ConfigError, DeliveryError
from screener.logging import get_logger

__all__ = [
    "ACTIONS",
    "ACTIVE_STAGES",
    "CHANNELS",
    "CLOSED_STAGES",
    "DECLINED_REASONS",
    "NOT_ELIGIBLE_REASONS",
    "InvalidAction",
    "SqlStore",
    "User",
]

log = get_logger("screener.alerts.store")

#: Worklist actions, in funnel order. ``snoozed`` needs an ``until`` date; the two dismissals need a reason.
ACTIONS = ("reviewed", "not_eligible", "approached", "consented", "declined", "enrolled", "snoozed")
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
ACTIVE_STAGES = ("new", "reviewed", "approached", "consented")
CLOSED_STAGES = ("enrolled", "not_eligible", "declined")
DISMISSED_STAGES = ("not_eligible", "declined")
CHANNELS = ("webhook", "email")
VIEWS = ("open", "snoozed", "closed", "all")
ACUTE_HORIZON_S = 72 * 3600.0
CLOSING_SOON_DAYS = 30
_CHUNK = 500


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


class SqlStore:
    """The worklist database. Implements :class:`screener.alerts.base.MatchStore` and everything the web app,
    the outbox sender and the CLI need. Thread-safe (one SQLAlchemy engine, a connection per call).

    :param url: SQLAlchemy URL: ``sqlite:///path.db`` (default form), ``sqlite://`` (memory, one process) or
        ``postgresql+psycopg://user@host:port/db``.
    :param metrics: a :class:`screener.metrics.Metrics` for the funnel counters (optional).
    :param channels: outbound channels that get outbox rows for new matches (``webhook``, ``email``).
    :param clock: returns the current UTC time (tests pass a settable clock).
    :raises ConfigError: the URL is malformed or its driver is not installed.
    :raises DeliveryError: the database cannot be reached or migrated.
    """

    def __init__(
        self,
        url: str,
        *,
        metrics: Any = None,
        channels: Sequence[str] = CHANNELS,
        clock: Callable[[], datetime] = _now,
    ) -> None:
        unknown = set(channels) - set(CHANNELS)
        if unknown:
            raise ConfigError(f"unknown outbound channel(s) {sorted(unknown)}; known: {list(CHANNELS)}")
        self.url = url
        self.metrics = metrics
        self.channels = tuple(channels)
        self.clock = clock
        self.engine = _make_engine(url)
        self._migrate()

    # --- lifecycle ---------------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: Any, *, metrics: Any = None) -> SqlStore:
        """A store on ``settings.database_url`` whose outbox feeds the channels the settings configure."""
        channels = [c for c, on in (("webhook", settings.webhook_url), ("email", settings.smtp_host)) if on]
        return cls(settings.database_url, metrics=metrics, channels=channels)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> SqlStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self) -> None:
        from pathlib import Path

        from alembic import command
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
        try:
            with self.engine.begin() as conn:
                if conn.dialect.name == "postgresql":
                    conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274001)"))
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, "head")
        except sa.exc.SQLAlchemyError as exc:
            raise DeliveryError(f"cannot open or migrate the worklist database: {exc}", channel="store") from exc

    # --- MatchStore ----------------------------------------------------------------------------------------
    def record_matches(self, matches: pl.DataFrame) -> pl.DataFrame:
        """Insert matches idempotently: one row per (study_id, patient_id), ever. See the module docstring.

        Returns the rows of ``matches`` that were new (the ones to alert on), with the input's columns. Rows for
        patients on the do-not-contact register and new rows whose outcome is ``ineligible`` are not stored.
        Atomic: if it raises (:class:`DeliveryError`), nothing was written.
        """
        if matches.height == 0:
            return matches.clear()
        missing = [c for c in ("study_id", "patient_id", "outcome", "rule_hash") if c not in matches.columns]
        if missing:
            raise ValueError(f"record_matches: missing column(s) {missing}; expected {list(MATCH_COLUMNS)}")
        frame = matches.unique(subset=["study_id", "patient_id"], keep="last", maintain_order=True)
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                new_keys = self._record(conn, frame, now)
        except sa.exc.SQLAlchemyError as exc:
            raise DeliveryError(f"cannot record matches: {exc}", channel="store") from exc
        if not new_keys:
            return matches.clear()
        keys = pl.DataFrame(list(new_keys), schema={"study_id": pl.String, "patient_id": pl.String}, orient="row")
        return frame.join(keys, on=["study_id", "patient_id"], how="semi", maintain_order="left")

    def _record(self, conn: Connection, frame: pl.DataFrame, now: datetime) -> set[tuple[str, str]]:
        dnc = self._dnc_ids(conn)
        rows = [_match_row(r, now) for r in frame.to_dicts()]
        rows = [r for r in rows if r["patient_id"] not in dnc]
        existing = self._existing(conn, rows)
        inserts = [r for r in rows if (r["study_id"], r["patient_id"]) not in existing and r["outcome"] != "ineligible"]
        new_keys: set[tuple[str, str]] = set()
        if inserts:
            for r in inserts:
                r["token"] = auth.new_token(16)
            new_keys = self._insert_new(conn, inserts)
        updates, reopened = [], []
        for r in rows:
            old = existing.get((r["study_id"], r["patient_id"]))
            if old is None:
                continue
            if (old["outcome"], old["rule_hash"], old["criteria"]) == (r["outcome"], r["rule_hash"], r["criteria"]):
                continue
            reopen = (
                old["stage"] in DISMISSED_STAGES
                and old["rule_hash"] != r["rule_hash"]
                and materially_changed(old["outcome"], old["criteria"], r["outcome"], r["criteria"])
            )
            updates.append(
                {
                    "b_id": old["id"],
                    "outcome": r["outcome"],
                    "criteria": r["criteria"],
                    "rule_hash": r["rule_hash"],
                    "setting": r["setting"],
                    "imd_decile": r["imd_decile"],
                    "ethnic_group": r["ethnic_group"],
                    "updated_at": now,
                }
            )
            if reopen:
                reopened.append(old)
        if updates:
            conn.execute(
                t.matches.update()
                .where(t.matches.c.id == sa.bindparam("b_id"))
                .values(
                    outcome=sa.bindparam("outcome"),
                    criteria=sa.bindparam("criteria"),
                    rule_hash=sa.bindparam("rule_hash"),
                    setting=sa.bindparam("setting"),
                    imd_decile=sa.bindparam("imd_decile"),
                    ethnic_group=sa.bindparam("ethnic_group"),
                    updated_at=sa.bindparam("updated_at"),
                ),
                updates,
            )
        for old in reopened:
            conn.execute(
                t.matches.update()
                .where(t.matches.c.id == old["id"])
                .values(stage="new", reason=None, snoozed_until=None, reopened_at=now)
            )
            self._audit(
                conn,
                "system",
                "reopen",
                "match",
                old["token"],
                {"study": old["study_id"], "was": old["stage"], "why": "rule file changed materially"},
            )
        if new_keys:
            self._enqueue(conn, [r for r in inserts if (r["study_id"], r["patient_id"]) in new_keys], now)
        return new_keys

    def _existing(self, conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        by_study: dict[str, list[str]] = {}
        for r in rows:
            by_study.setdefault(r["study_id"], []).append(r["patient_id"])
        m = t.matches.c
        found: dict[tuple[str, str], dict[str, Any]] = {}
        if conn.dialect.name == "postgresql" and rows:
            # One round trip: join against the keys as arrays (an IN list per chunk costs ~30 ms a query).
            keys = sa.text(
                "SELECT m.id, m.token, m.study_id, m.patient_id, m.outcome, m.rule_hash, m.criteria, m.stage "
                "FROM matches m JOIN unnest(CAST(:s AS text[]), CAST(:p AS text[])) AS k(study_id, patient_id) "
                "ON m.study_id = k.study_id AND m.patient_id = k.patient_id"
            )
            result = conn.execute(keys, {"s": [r["study_id"] for r in rows], "p": [r["patient_id"] for r in rows]})
            return {(row["study_id"], row["patient_id"]): dict(row) for row in result.mappings()}
        for study_id, pids in by_study.items():
            for i in range(0, len(pids), _CHUNK):
                q = sa.select(m.id, m.token, m.study_id, m.patient_id, m.outcome, m.rule_hash, m.criteria, m.stage)
                q = q.where(m.study_id == study_id, m.patient_id.in_(pids[i : i + _CHUNK]))
                for row in conn.execute(q).mappings():
                    found[(row["study_id"], row["patient_id"])] = dict(row)
        return found

    def _insert_new(self, conn: Connection, inserts: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """Insert, skipping keys another writer inserted meanwhile; return the keys this call inserted."""
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            from sqlalchemy.dialects import postgresql, sqlite

            dialect_insert: Any = sqlite.insert if dialect == "sqlite" else postgresql.insert
            stmt = dialect_insert(t.matches).on_conflict_do_nothing(index_elements=["study_id", "patient_id"])
            keys: set[tuple[str, str]] = set()
            for i in range(0, len(inserts), _CHUNK):
                result = conn.execute(
                    stmt.returning(t.matches.c.study_id, t.matches.c.patient_id), inserts[i : i + _CHUNK]
                )
                keys.update((row[0], row[1]) for row in result)
            return keys
        conn.execute(t.matches.insert(), inserts)
        return {(r["study_id"], r["patient_id"]) for r in inserts}

    def _enqueue(self, conn: Connection, inserted: list[dict[str, Any]], now: datetime) -> None:
        counts: dict[str, int] = {}
        for r in inserted:
            counts[r["study_id"]] = counts.get(r["study_id"], 0) + 1
        if not self.channels or not counts:
            return
        teams = dict(
            conn.execute(sa.select(t.studies.c.id, t.studies.c.team).where(t.studies.c.id.in_(list(counts)))).all()
        )
        conn.execute(
            t.outbox.insert(),
            [
                {
                    "channel": ch,
                    "team": teams.get(sid) or "",
                    "study_id": sid,
                    "count": n,
                    "created_at": now,
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                }
                for sid, n in sorted(counts.items())
                for ch in self.channels
            ],
        )

    def unpublished_matches(self, settled_before: datetime | None = None, limit: int = 10_000) -> pl.DataFrame:
        """Stored matches not yet acknowledged on ``screening.matches`` (oldest first, at most ``limit``): the
        publisher's columns (``study_id, patient_id, outcome, rule_hash, criteria, matched_at, setting``).
        Only rows last written before ``settled_before`` when given (a live engine's own matches are still in
        flight), and none of a patient on the do-not-contact register."""
        m = t.matches.c
        q = (
            sa.select(m.study_id, m.patient_id, m.outcome, m.rule_hash, m.criteria, m.matched_at, m.setting)
            .where(m.published_at.is_(None), m.patient_id.not_in(sa.select(t.do_not_contact.c.patient_id)))
            .order_by(m.id)
            .limit(limit)
        )
        if settled_before is not None:
            q = q.where(m.updated_at < settled_before)
        try:
            with self.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(q).mappings()]
        except sa.exc.SQLAlchemyError as exc:
            raise DeliveryError(f"cannot read unpublished matches: {exc}", channel="store") from exc
        schema: dict[str, pl.DataType] = {
            "study_id": pl.String(),
            "patient_id": pl.String(),
            "outcome": pl.String(),
            "rule_hash": pl.String(),
            "criteria": pl.String(),
            "matched_at": pl.Datetime("us", "UTC"),
            "setting": pl.String(),
        }
        for r in rows:
            r["matched_at"] = _utc(r["matched_at"])
        return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)

    def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Record that the broker acknowledged these (study_id, patient_id) matches on ``screening.matches``."""
        if not keys:
            return
        m = t.matches.c
        now = self.clock()
        pairs = list(dict.fromkeys(keys))
        try:
            with self.engine.begin() as conn:
                for i in range(0, len(pairs), _CHUNK):
                    conn.execute(
                        t.matches.update()
                        .where(sa.tuple_(m.study_id, m.patient_id).in_(pairs[i : i + _CHUNK]), m.published_at.is_(None))
                        .values(published_at=now)
                    )
        except sa.exc.SQLAlchemyError as exc:
            raise DeliveryError(f"cannot mark matches published: {exc}", channel="store") from exc

    def do_not_contact(self) -> pl.Series:
        """Patient ids currently on the do-not-contact register (String series named ``patient_id``)."""
        with self.engine.connect() as conn:
            ids = sorted(self._dnc_ids(conn))
        return pl.Series("patient_id", ids, dtype=pl.String)

    @staticmethod
    def _dnc_ids(conn: Connection) -> set[str]:
        return set(conn.execute(sa.select(t.do_not_contact.c.patient_id)).scalars())

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
                out.append(d)
            return out

    # --- users, teams, sessions ----------------------------------------------------------------------------
    def add_user(
        self, username: str, password: str, role: str, teams: Iterable[str] = (), email: str | None = None
    ) -> User:
        """Create a user (or reset an existing user's password, role, teams and email).

        :raises ValueError: unknown role or empty username/password.
        """
        if role not in auth.ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {list(auth.ROLES)}")
        if not username:
            raise ValueError("username must not be empty")
        teams = sorted(set(teams))
        pw_hash = auth.hash_password(password)
        with self.engine.begin() as conn:
            uid = conn.execute(sa.select(t.users.c.id).where(t.users.c.username == username)).scalar()
            values = {"password_hash": pw_hash, "role": role, "email": email, "active": True}
            if uid is None:
                uid = conn.execute(
                    t.users.insert()
                    .values(username=username, created_at=self.clock(), **values)
                    .returning(t.users.c.id)
                ).scalar_one()
            else:
                conn.execute(t.users.update().where(t.users.c.id == uid).values(**values))
                conn.execute(t.memberships.delete().where(t.memberships.c.user_id == uid))
            known = set(conn.execute(sa.select(t.teams.c.name)).scalars())
            for team in teams:
                if team not in known:
                    conn.execute(t.teams.insert().values(name=team))
                conn.execute(t.memberships.insert().values(user_id=uid, team=team))
            self._audit(conn, "system", "user_set", "user", username, {"role": role, "teams": teams})
        return User(uid, username, role, frozenset(teams), email)

    def set_team_email(self, team: str, email: str | None) -> None:
        with self.engine.begin() as conn:
            if conn.execute(sa.select(t.teams.c.name).where(t.teams.c.name == team)).first() is None:
                conn.execute(t.teams.insert().values(name=team, email=email))
            else:
                conn.execute(t.teams.update().where(t.teams.c.name == team).values(email=email))

    def users(self) -> list[User]:
        with self.engine.connect() as conn:
            return [
                self._user(conn, row)
                for row in conn.execute(
                    sa.select(t.users).where(t.users.c.active.is_(True)).order_by(t.users.c.username)
                ).mappings()
            ]

    @staticmethod
    def _user(conn: Connection, row: Any) -> User:
        teams = frozenset(
            conn.execute(sa.select(t.memberships.c.team).where(t.memberships.c.user_id == row["id"])).scalars()
        )
        return User(row["id"], row["username"], row["role"], teams, row["email"])

    def authenticate(self, username: str, password: str) -> User | None:
        """The user when the password is right and the account active; None otherwise (same timing)."""
        with self.engine.connect() as conn:
            row = (
                conn.execute(sa.select(t.users).where(t.users.c.username == username, t.users.c.active.is_(True)))
                .mappings()
                .first()
            )
            ok = auth.verify_password(row["password_hash"] if row else None, password)
            return self._user(conn, row) if ok and row else None

    def create_session(self, user: User, ttl: timedelta = timedelta(hours=12)) -> tuple[str, str]:
        """Start a session; returns (session token for the cookie, CSRF token for forms). Only hashes are kept."""
        token, csrf = auth.new_token(), auth.new_token()
        now = self.clock()
        with self.engine.begin() as conn:
            conn.execute(t.sessions.delete().where(t.sessions.c.expires_at < now))
            conn.execute(
                t.sessions.insert().values(
                    token_hash=auth.hash_token(token),
                    user_id=user.id,
                    csrf_token=csrf,
                    created_at=now,
                    expires_at=now + ttl,
                )
            )
        return token, csrf

    def session_user(self, token: str | None) -> tuple[User, str] | None:
        """(user, csrf token) for a live session token, else None."""
        if not token:
            return None
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(t.sessions.c.csrf_token, t.sessions.c.expires_at, t.users)
                    .join(t.users, t.users.c.id == t.sessions.c.user_id)
                    .where(t.sessions.c.token_hash == auth.hash_token(token), t.users.c.active.is_(True))
                )
                .mappings()
                .first()
            )
            expires = _utc(row["expires_at"]) if row is not None else None
            if row is None or expires is None or expires <= self.clock():
                return None
            return self._user(conn, row), row["csrf_token"]

    def end_session(self, token: str | None) -> None:
        if token:
            with self.engine.begin() as conn:
                conn.execute(t.sessions.delete().where(t.sessions.c.token_hash == auth.hash_token(token)))

    def create_api_token(self, username: str, name: str = "api") -> str:
        """A new bearer token for ``username`` (shown once; only its hash is stored)."""
        token = auth.new_token()
        with self.engine.begin() as conn:
            uid = conn.execute(sa.select(t.users.c.id).where(t.users.c.username == username)).scalar()
            if uid is None:
                raise ValueError(f"no such user {username!r}")
            conn.execute(
                t.api_tokens.insert().values(
                    token_hash=auth.hash_token(token), user_id=uid, name=name, created_at=self.clock()
                )
            )
            self._audit(conn, "system", "token_create", "user", username, {"name": name})
        return token

    def token_user(self, token: str | None) -> User | None:
        if not token:
            return None
        with self.engine.connect() as conn:
            row = (
                conn.execute(
                    sa.select(t.users)
                    .join(t.api_tokens, t.api_tokens.c.user_id == t.users.c.id)
                    .where(t.api_tokens.c.token_hash == auth.hash_token(token), t.users.c.active.is_(True))
                )
                .mappings()
                .first()
            )
            return self._user(conn, row) if row else None

    # --- worklist --------------------------------------------------------------------------------------------
    def _visible(self, user: User) -> Any:
        """The WHERE clause that limits matches to the user's teams and hides do-not-contact patients."""
        clauses = [t.matches.c.patient_id.not_in(sa.select(t.do_not_contact.c.patient_id))]
        if not user.is_admin:
            clauses.append(t.studies.c.team.in_(sorted(user.teams) or [""]))
        return sa.and_(*clauses)

    def worklist(
        self,
        user: User,
        *,
        study: str | None = None,
        setting: str | None = None,
        outcome: str | None = None,
        view: str = "open",
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """The user's matches, most urgent first, then newest first (see the module docstring).

        ``view``: ``open`` (active and not snoozed), ``snoozed``, ``closed`` (enrolled, dismissed, no longer
        eligible) or ``all``. Each row has ``token`` (the opaque id for URLs), study fields, ``outcome``,
        ``stage``, ``urgency`` (0 acute, 1 closing soon, 2 other), ``unknowns`` (criteria to verify) and
        ``patient_id`` (for display to the logged-in team member only).
        """
        if view not in VIEWS:
            raise ValueError(f"unknown view {view!r}; expected one of {list(VIEWS)}")
        today = self.clock().date()
        m, s = t.matches.c, t.studies.c
        urgency = sa.case(
            (s.horizon_s <= ACUTE_HORIZON_S, 0),
            (s.closes <= today + timedelta(days=CLOSING_SOON_DAYS), 1),
            else_=2,
        ).label("urgency")
        q = (
            sa.select(
                m.token,
                m.study_id,
                m.patient_id,
                m.outcome,
                m.stage,
                m.reason,
                m.matched_at,
                m.setting,
                m.snoozed_until,
                m.reopened_at,
                m.criteria,
                s.title,
                s.team,
                s.closes,
                urgency,
            )
            .select_from(t.matches.join(t.studies, t.studies.c.id == m.study_id))
            .where(self._visible(user))
        )
        not_snoozed = sa.or_(m.snoozed_until.is_(None), m.snoozed_until <= today)
        if view == "open":
            q = q.where(m.stage.in_(ACTIVE_STAGES), m.outcome != "ineligible", not_snoozed)
        elif view == "snoozed":
            q = q.where(m.stage.in_(ACTIVE_STAGES), m.snoozed_until > today)
        elif view == "closed":
            q = q.where(sa.or_(m.stage.in_(CLOSED_STAGES), m.outcome == "ineligible"))
        if study:
            q = q.where(m.study_id == study)
        if setting:
            q = q.where(m.setting == setting)
        if outcome:
            q = q.where(m.outcome == outcome)
        q = q.order_by(urgency, m.matched_at.desc(), m.id.desc()).limit(limit)
        with self.engine.connect() as conn:
            rows = [dict(r) for r in conn.execute(q).mappings()]
        for r in rows:
            r["matched_at"] = _utc(r["matched_at"])
            r["reopened_at"] = _utc(r["reopened_at"])
            crit = json.loads(r.pop("criteria") or "[]")
            r["unknowns"] = [c.get("name") for c in crit if c.get("result") is None]
            r["snooze_ended"] = r["snoozed_until"] is not None and r["snoozed_until"] <= today
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
        for k in ("matched_at", "event_time", "reopened_at", "updated_at"):
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
            raise InvalidAction(f"unknown action {action!r}; expected one of {list(ACTIONS)}")
        codes = {"not_eligible": NOT_ELIGIBLE_REASONS, "declined": DECLINED_REASONS}.get(action)
        if codes is not None and reason not in codes:
            raise InvalidAction(f"{action} needs a coded reason, one of {list(codes)}")
        if codes is None and reason is not None:
            raise InvalidAction(f"{action} takes no reason")
        today = self.clock().date()
        if action == "snoozed" and (until is None or until <= today):
            raise InvalidAction("snoozed needs an 'until' date after today")
        if action != "snoozed" and until is not None:
            raise InvalidAction(f"{action} takes no 'until' date")
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

    # --- do-not-contact ------------------------------------------------------------------------------------
    def dnc_add(self, patient_ids: Iterable[str], *, by: str, source: str = "web") -> int:
        """Add patients to the register (idempotent); returns how many were new. Their matches disappear."""
        ids = sorted({p.strip() for p in patient_ids if p and p.strip()})
        if not ids:
            return 0
        now = self.clock()
        with self.engine.begin() as conn:
            present: set[str] = set()
            for i in range(0, len(ids), _CHUNK):
                present.update(
                    conn.execute(
                        sa.select(t.do_not_contact.c.patient_id).where(
                            t.do_not_contact.c.patient_id.in_(ids[i : i + _CHUNK])
                        )
                    ).scalars()
                )
            new = [p for p in ids if p not in present]
            if new:
                conn.execute(
                    t.do_not_contact.insert(),
                    [{"patient_id": p, "added_at": now, "added_by": by, "source": source} for p in new],
                )
            self._audit(conn, by, "dnc_add", "do_not_contact", None, {"count": len(new), "source": source})
        return len(new)

    def dnc_remove(self, patient_ids: Iterable[str], *, by: str) -> int:
        """Remove patients from the register; returns how many were removed."""
        ids = sorted({p.strip() for p in patient_ids if p and p.strip()})
        if not ids:
            return 0
        with self.engine.begin() as conn:
            n = 0
            for i in range(0, len(ids), _CHUNK):
                n += conn.execute(
                    t.do_not_contact.delete().where(t.do_not_contact.c.patient_id.in_(ids[i : i + _CHUNK]))
                ).rowcount
            self._audit(conn, by, "dnc_remove", "do_not_contact", None, {"count": n})
        return n

    def dnc_entries(self, limit: int = 1000) -> list[dict[str, Any]]:
        with self.engine.connect() as conn:
            return [
                dict(r)
                for r in conn.execute(
                    sa.select(t.do_not_contact).order_by(t.do_not_contact.c.added_at.desc()).limit(limit)
                ).mappings()
            ]

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

    # --- outbox ------------------------------------------------------------------------------------------------
    def outbox_due(self, channel: str, now: datetime) -> list[dict[str, Any]]:
        """Pending outbox rows of ``channel`` whose next attempt is due, oldest first, with the study title."""
        o = t.outbox.c
        q = (
            sa.select(t.outbox, t.studies.c.title)
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


def _match_row(r: dict[str, Any], now: datetime) -> dict[str, Any]:
    criteria = r.get("criteria")
    if criteria is not None and not isinstance(criteria, str):
        criteria = json.dumps(criteria, default=str)
    imd = r.get("imd_decile")
    return {
        "study_id": str(r["study_id"]),
        "patient_id": str(r["patient_id"]),
        "outcome": str(r["outcome"]),
        "criteria": criteria or "[]",
        "rule_hash": str(r["rule_hash"]),
        "matched_at": _utc(r.get("matched_at")) or now,
        "event_time": _utc(r.get("event_time")),
        "setting": r.get("setting"),
        "imd_decile": int(imd) if imd is not None else None,
        "ethnic_group": r.get("ethnic_group"),
        "stage": "new",
        "updated_at": now,
    }


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
        "active": True,
        "updated_at": now,
    }


def _make_engine(url: str) -> Engine:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ConfigError(f"not a database URL: {url!r}", setting="database_url") from exc
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        kwargs["connect_args"] = {"timeout": 30, "check_same_thread": False}
        if parsed.database in (None, "", ":memory:"):
            kwargs["poolclass"] = StaticPool
        else:
            from pathlib import Path

            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    else:
        kwargs["pool_pre_ping"] = True
    try:
        engine = sa.create_engine(parsed, **kwargs)
    except (ImportError, sa.exc.NoSuchModuleError) as exc:
        raise ConfigError(f"no driver for {parsed.drivername}: {exc}", setting="database_url") from exc
    if parsed.get_backend_name() == "sqlite":
        _sqlite_pragmas(engine)
    return engine


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL (readers never block the writer), foreign keys, and BEGIN IMMEDIATE so two writers queue on the busy
    timeout instead of failing with 'database is locked' when a read transaction upgrades to a write."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        try:
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            # SQLite can answer "database is locked" here without waiting on the busy timeout (while another
            # process checkpoints or recovers the WAL index), so a new connection retries instead of failing: an
            # engine starting next to a busy one was seen to exit on it.
            deadline = time.monotonic() + 30
            while True:
                try:
                    if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                        cur.execute("PRAGMA journal_mode=WAL")
                    break
                except sqlite3.OperationalError as exc:
                    transient = "locked" in str(exc) or "busy" in str(exc)
                    if not transient or time.monotonic() >= deadline:
                        raise
                    time.sleep(0.05)
        finally:
            cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")
