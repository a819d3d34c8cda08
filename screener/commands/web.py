"""``screener web`` (the worklist), ``screener users``, ``screener dnc`` and ``screener outbox``.

All of them open the worklist store at ``--database-url`` / ``SCREENER_DATABASE_URL`` (migrating it if needed).
"""

from __future__ import annotations

import csv
import getpass
import os
import threading
from pathlib import Path
from typing import Any

import click

from screener.errors import ScreenerError
from screener.settings import load_settings

__all__ = ["COMMANDS"]

COMMANDS: list[click.Command] = []

_db_option = click.option(
    "--database-url", envvar="SCREENER_DATABASE_URL", default=None, help="Worklist store [env: SCREENER_DATABASE_URL]."
)


def _store(database_url: str | None, **overrides: Any) -> tuple[Any, Any]:
    from screener.alerts.store import SqlStore

    try:
        settings = load_settings(database_url=database_url, **overrides)
        return settings, SqlStore.from_settings(settings)
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("web")
@_db_option
@click.option("--host", envvar="SCREENER_WEB_HOST", default=None, help="Bind address [env: SCREENER_WEB_HOST].")
@click.option("--port", envvar="SCREENER_WEB_PORT", type=int, default=None, help="Port [env: SCREENER_WEB_PORT].")
@click.option("--no-outbox", is_flag=True, help="Do not deliver webhook/email notifications from this process.")
def web(database_url: str | None, host: str | None, port: int | None, no_outbox: bool) -> None:
    """Serve the worklist web app (and deliver the outbox when a webhook or SMTP host is configured)."""
    from screener.logging import configure_logging

    try:  # configure logging before importing the modules that create loggers
        early = load_settings(database_url=database_url, web_host=host, web_port=port)
        early.check_secrets()  # a service never runs on the shipped default secret outside demo mode
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(early.log_level, early.log_format)
    from screener.commands.service import _stop_on_signals
    from screener.metrics import Metrics
    from screener.web.server import serve

    settings, store = _store(database_url, web_host=host, web_port=port)
    metrics = Metrics()
    store.metrics = metrics
    try:
        handle = serve(settings, store, metrics.registry, run_outbox=not no_outbox)
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"worklist on {handle.url} (open studies: {handle.url}/studies); Ctrl-C to stop")
    stop = threading.Event()
    _stop_on_signals(stop)
    try:
        while not stop.wait(0.5) and handle.thread.is_alive():
            pass
    finally:
        handle.stop()
        store.close()


@click.group("db")
def db() -> None:
    """The worklist database's schema version (for upgrades and rollbacks; see docs/operating.md)."""


@db.command("current")
@_db_option
def db_current(database_url: str | None) -> None:
    """Print the schema revision (opening the store migrates it to this release's head first)."""
    from screener.alerts._database import current_revision

    _settings, store = _store(database_url)
    try:
        click.echo(current_revision(store.engine) or "(empty)")
    finally:
        store.close()


@db.command("downgrade")
@_db_option
@click.argument("revision")
def db_downgrade(database_url: str | None, revision: str) -> None:
    """Migrate the schema down to REVISION (e.g. 0002) before installing the release that only knows it."""
    from sqlalchemy import create_engine

    from screener.alerts._database import current_revision, downgrade

    settings = load_settings(database_url=database_url)
    engine = create_engine(settings.database_url)  # not SqlStore: opening it would migrate back up
    try:
        downgrade(engine, revision)
        click.echo(f"worklist schema now at {current_revision(engine)}")
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        engine.dispose()


@click.group("users")
def users() -> None:
    """Worklist users: roles nurse, coordinator, admin; team membership decides which studies they see."""


@users.command("add")
@_db_option
@click.argument("username")
@click.option("--role", type=click.Choice(["nurse", "coordinator", "admin"]), default="nurse", show_default=True)
@click.option("--team", "teams", multiple=True, help="Team name (repeat for several); must match rule files' team.")
@click.option("--email", default=None, help="Address for the team's email digest.")
@click.option(
    "--password-env",
    default=None,
    metavar="VAR",
    help="Read the password from this environment variable instead of prompting.",
)
def users_add(
    database_url: str | None,
    username: str,
    role: str,
    teams: tuple[str, ...],
    email: str | None,
    password_env: str | None,
) -> None:
    """Create USERNAME (or reset their password, role, teams and email)."""
    if password_env:
        password = os.environ.get(password_env, "")
        if not password:
            raise click.ClickException(f"environment variable {password_env} is empty or unset")
    else:
        password = getpass.getpass(f"Password for {username}: ")
        if password != getpass.getpass("Again: "):
            raise click.ClickException("passwords differ")
    _settings, store = _store(database_url)
    try:
        user = store.add_user(username, password, role, teams, email=email)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()
    click.echo(f"user {user.username}: {user.role}, teams {', '.join(sorted(user.teams)) or '(none)'}")


def _set_active(database_url: str | None, username: str, op: str) -> None:
    _settings, store = _store(database_url)
    try:
        done = {"disable": store.disable_user, "enable": store.enable_user, "remove": store.remove_user}[op](
            username, by="cli"
        )
    finally:
        store.close()
    if not done:
        raise click.ClickException(f"no user {username!r} (see `screener users list --all`)")


@users.command("disable")
@_db_option
@click.argument("username")
def users_disable(database_url: str | None, username: str) -> None:
    """Stop USERNAME logging in (someone who has left): their sessions and API tokens stop working at once;
    their actions stay in the history and the audit log."""
    _set_active(database_url, username, "disable")
    click.echo(f"user {username} disabled")


@users.command("enable")
@_db_option
@click.argument("username")
def users_enable(database_url: str | None, username: str) -> None:
    """Let a disabled USERNAME log in again (with the password they had)."""
    _set_active(database_url, username, "enable")
    click.echo(f"user {username} enabled")


@users.command("remove")
@_db_option
@click.argument("username")
@click.confirmation_option(prompt="Remove the account? Its actions stay in the history under its name.")
def users_remove(database_url: str | None, username: str) -> None:
    """Delete USERNAME's account, sessions, tokens and team memberships (the history keeps the name)."""
    _set_active(database_url, username, "remove")
    click.echo(f"user {username} removed")


@users.command("list")
@_db_option
def users_list(database_url: str | None) -> None:
    """List active users with their role and teams."""
    _settings, store = _store(database_url)
    try:
        for u in store.users():
            click.echo(f"{u.username}\t{u.role}\t{','.join(sorted(u.teams))}\t{u.email or ''}")
    finally:
        store.close()


@users.command("token")
@_db_option
@click.argument("username")
@click.option("--name", default="api", show_default=True, help="A label for the token.")
def users_token(database_url: str | None, username: str, name: str) -> None:
    """Print a new API bearer token for USERNAME (shown once; only its hash is stored)."""
    _settings, store = _store(database_url)
    try:
        click.echo(store.create_api_token(username, name))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        store.close()


@users.command("team-email")
@_db_option
@click.argument("team")
@click.argument("email", required=False)
def users_team_email(database_url: str | None, team: str, email: str | None) -> None:
    """Set (or clear) the shared mailbox that receives TEAM's email digest."""
    _settings, store = _store(database_url)
    try:
        store.set_team_email(team, email)
    finally:
        store.close()
    click.echo(f"team {team}: digest to {email or 'members'}")


@click.group("dnc")
def dnc() -> None:
    """The do-not-contact register: patients on it are never matched and their matches are hidden."""


def _read_ids(path: Path, column: str | None) -> list[str]:
    """Patient ids from a CSV: the named column, else a column called patient_id, else the first column.
    A first row that is not an id (a header) is skipped when it names a column."""
    with path.open(newline="", encoding="utf-8-sig") as fh:
        rows = [r for r in csv.reader(fh) if r and any(c.strip() for c in r)]
    if not rows:
        return []
    header = [c.strip().lower() for c in rows[0]]
    wanted = (column or "patient_id").lower()
    if wanted in header:
        idx = header.index(wanted)
        rows = rows[1:]
    elif column:
        raise click.ClickException(f"{path}: no column {column!r} (columns: {', '.join(header)})")
    else:
        idx = 0
    return [r[idx].strip() for r in rows if len(r) > idx and r[idx].strip()]


@dnc.command("import")
@_db_option
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--column", default=None, help="Column holding the patient id (default: patient_id, else the first).")
@click.option("--by", default=lambda: getpass.getuser(), show_default="current user", help="Recorded as the author.")
def dnc_import(database_url: str | None, file: Path, column: str | None, by: str) -> None:
    """Add every patient id in FILE (CSV) to the register."""
    ids = _read_ids(file, column)
    _settings, store = _store(database_url)
    try:
        added = store.dnc_add(ids, by=by, source=f"import:{file.name}")
    finally:
        store.close()
    click.echo(f"read {len(ids)} ids from {file}; {added} new on the register")


@dnc.command("add")
@_db_option
@click.argument("patient_ids", nargs=-1, required=True)
@click.option("--by", default=lambda: getpass.getuser(), show_default="current user")
def dnc_add(database_url: str | None, patient_ids: tuple[str, ...], by: str) -> None:
    """Add PATIENT_IDS to the register."""
    _settings, store = _store(database_url)
    try:
        click.echo(f"{store.dnc_add(patient_ids, by=by, source='cli')} added")
    finally:
        store.close()


@dnc.command("remove")
@_db_option
@click.argument("patient_ids", nargs=-1, required=True)
@click.option("--by", default=lambda: getpass.getuser(), show_default="current user")
def dnc_remove(database_url: str | None, patient_ids: tuple[str, ...], by: str) -> None:
    """Remove PATIENT_IDS from the register."""
    _settings, store = _store(database_url)
    try:
        click.echo(f"{store.dnc_remove(patient_ids, by=by)} removed")
    finally:
        store.close()


@click.group("outbox")
def outbox() -> None:
    """Outbound notifications (webhook, email digests)."""


@outbox.command("send")
@_db_option
@click.option("--flush", is_flag=True, help="Send email digests now instead of waiting for the digest interval.")
def outbox_send(database_url: str | None, flush: bool) -> None:
    """Deliver what is due once (webhook and SMTP from SCREENER_WEBHOOK_URL / SCREENER_SMTP_*)."""
    from screener.alerts.outbox import OutboxSender

    settings, store = _store(database_url)
    try:
        stats = OutboxSender.from_settings(settings, store).run_once(flush_digests=flush)
        counts = store.outbox_counts()
    finally:
        store.close()
    pending = {ch: n for (ch, status), n in counts.items() if status == "pending"}
    click.echo(f"sent {stats['sent']}, failed {stats['failed']}, pending {pending or 0}")


COMMANDS.extend([web, users, dnc, outbox, db])
