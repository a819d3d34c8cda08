"""Database setup: the SQLAlchemy engine (SQLite pragmas, PostgreSQL pool) and the Alembic migrations to head."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from screener.errors import ConfigError, DeliveryError


def _config() -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    return cfg


def current_revision(engine: Engine) -> str | None:
    """The worklist schema's Alembic revision (``0003``...), or None for an empty database."""
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        rev: str | None = MigrationContext.configure(conn).get_current_revision()
        return rev


def downgrade(engine: Engine, revision: str) -> None:
    """Migrate the worklist schema down to ``revision`` (before rolling back to a release that only knows it).

    :raises DeliveryError: the database cannot be reached or the downgrade failed."""
    from alembic import command

    cfg = _config()
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, revision)
    except sa.exc.SQLAlchemyError as exc:
        raise DeliveryError(f"cannot downgrade the worklist database: {exc}", channel="store") from exc


def migrate(engine: Engine) -> None:
    """Run the Alembic migrations in ``migrations/`` up to head (under an advisory lock on PostgreSQL, an immediate
    transaction on SQLite). :raises DeliveryError: the database cannot be reached or migrated."""
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(727274001)"))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "head")
    except sa.exc.SQLAlchemyError as exc:
        raise DeliveryError(f"cannot open or migrate the worklist database: {exc}", channel="store") from exc


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
