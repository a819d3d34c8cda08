"""Users, teams, sessions and API tokens."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from screener.alerts import auth
from screener.alerts import schema as t
from screener.alerts._common import (
    StoreBase,
    User,
    _utc,
)


class AccountsPart(StoreBase):
    # --- users, teams, sessions ----------------------------------------------------------------------------
    def add_user(
        self, username: str, password: str, role: str, teams: Iterable[str] = (), email: str | None = None
    ) -> User:
        """Create a user (or reset an existing user's password, role, teams and email).

        :raises ValueError: unknown role, empty username, or a password the policy refuses
            (:func:`screener.alerts.auth.check_password_policy`: 12 characters at least, not a common one).
        """
        if role not in auth.ROLES:
            raise ValueError(f"unknown role {role!r}; expected one of {list(auth.ROLES)}")
        if not username:
            raise ValueError("username must not be empty")
        auth.check_password_policy(password, username)
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

    def disable_user(self, username: str, *, by: str = "system") -> bool:
        """Deactivate ``username``: no login, and its sessions and API tokens stop working at once (both
        lookups require an active user; sessions are also deleted). Returns False when there is no such user."""
        return self._set_active(username, False, by)

    def enable_user(self, username: str, *, by: str = "system") -> bool:
        """Reactivate a disabled user. Returns False when there is no such user."""
        return self._set_active(username, True, by)

    def _set_active(self, username: str, active: bool, by: str) -> bool:
        with self.engine.begin() as conn:
            uid = conn.execute(sa.select(t.users.c.id).where(t.users.c.username == username)).scalar()
            if uid is None:
                return False
            conn.execute(t.users.update().where(t.users.c.id == uid).values(active=active))
            if not active:
                conn.execute(t.sessions.delete().where(t.sessions.c.user_id == uid))
            self._audit(conn, by, "user_enable" if active else "user_disable", "user", username, None)
        return True

    def remove_user(self, username: str, *, by: str = "system") -> bool:
        """Delete the account with its sessions, tokens and memberships; actions and audit entries keep the name.
        Returns False when there is no such user."""
        with self.engine.begin() as conn:
            uid = conn.execute(sa.select(t.users.c.id).where(t.users.c.username == username)).scalar()
            if uid is None:
                return False
            for table in (t.sessions, t.api_tokens, t.memberships):
                conn.execute(table.delete().where(table.c.user_id == uid))
            conn.execute(t.users.delete().where(t.users.c.id == uid))
            self._audit(conn, by, "user_remove", "user", username, None)
        return True
