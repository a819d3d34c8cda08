"""``screener connect NAME [OPTIONS]``, ``screener connect --list`` and ``screener backfill omop PATH``.

Connectors are found through the ``screener.connectors`` entry-point group (:mod:`screener.sources.registry`);
each contributes its own click command, loaded only when it is run.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from screener.errors import ScreenerError
from screener.events import Event, dump_event

__all__ = ["COMMANDS", "backfill", "connect", "connector_options"]


class _StdoutSink:
    """``--dry-run``: events as JSON lines on stdout, rejections as JSON lines on stderr."""

    def publish(self, events: Sequence[Event]) -> None:
        out = sys.stdout.buffer
        for ev in events:
            out.write(dump_event(ev) + b"\n")
        out.flush()

    def publish_raw(self, records: Any) -> int:
        n = 0
        for _key, value in records:
            sys.stdout.buffer.write(value + b"\n")
            n += 1
        return n

    def dead_letter(self, payload: bytes | str, source: str, position: str, reason: str) -> None:
        click.echo(json.dumps({"source": source, "position": position, "reason": reason}), err=True)

    def close(self) -> None:
        sys.stdout.flush()


class _SinkFactory:
    """``sink_factory(name, **producer_options)`` -> an EventSink; ``.settings`` are the effective settings
    (command-line overrides applied) and ``.dry_run`` says the sink is stdout (no broker: no health probe)."""

    def __init__(self, settings: Any, *, dry_run: bool) -> None:
        self.settings = settings
        self.dry_run = dry_run

    def __call__(self, name: str, **producer_options: Any) -> Any:
        if self.dry_run:
            return _StdoutSink()
        from screener.sources.kafka import sink_from_settings

        return sink_from_settings(self.settings, name, producer_options=producer_options or None)


def connector_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for connector commands: ``--bootstrap``, ``--topic``, ``--dry-run``; passes ``sink_factory``.

    ``sink_factory(name, **producer_options)`` returns an EventSink: a Kafka sink built from
    :class:`~screener.settings.Settings` (topics created if missing), or stdout with ``--dry-run``;
    ``sink_factory.settings`` are those settings (listener limits, health) and ``sink_factory.dry_run`` the flag.
    """

    @click.option(
        "--bootstrap",
        envvar="SCREENER_BOOTSTRAP_SERVERS",
        default=None,
        help="Kafka bootstrap servers (env SCREENER_BOOTSTRAP_SERVERS).",
    )
    @click.option(
        "--topic",
        envvar="SCREENER_EVENTS_TOPIC",
        default=None,
        help="Events topic (env SCREENER_EVENTS_TOPIC; default ehr.events).",
    )
    @click.option(
        "--no-idempotence",
        is_flag=True,
        default=False,
        help="Plain acks=all producer (the embedded tansu broker rejects idempotent produce).",
    )
    @click.option("--dry-run", is_flag=True, help="Print events as JSON lines instead of publishing.")
    @functools.wraps(func)
    def wrapper(
        *args: Any, bootstrap: str | None, topic: str | None, no_idempotence: bool, dry_run: bool, **kwargs: Any
    ) -> Any:
        from screener.logging import configure_logging
        from screener.settings import load_settings

        base = load_settings()
        configure_logging(base.log_level, base.log_format)

        overrides: dict[str, Any] = {"bootstrap_servers": bootstrap, "events_topic": topic}
        if no_idempotence:
            overrides["producer_idempotence"] = False
        try:
            sink_factory = _SinkFactory(load_settings(**overrides), dry_run=dry_run)
            return func(*args, sink_factory=sink_factory, **kwargs)
        except ScreenerError as exc:
            raise click.ClickException(str(exc)) from exc

    return wrapper


class _ConnectorGroup(click.Group):
    """Sub-commands come from installed connectors, imported only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from screener.sources.registry import available

        return [n for n in available() if n != "omop"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from screener.sources.registry import load_connector

        try:
            return load_connector(cmd_name).command()
        except ScreenerError as exc:
            raise click.UsageError(str(exc), ctx) from exc


@click.group("connect", cls=_ConnectorGroup, invoke_without_command=True)
@click.option("--list", "list_", is_flag=True, help="List the installed connectors and exit.")
@click.pass_context
def connect(ctx: click.Context, list_: bool) -> None:
    """Run an EHR connector: screener connect NAME [OPTIONS] (see --list)."""
    if list_:
        from screener.sources.registry import available, load_connector

        for name, target in available().items():
            try:
                summary = load_connector(name).summary
            except ScreenerError as exc:
                summary = f"(cannot load: {exc})"
            click.echo(f"{name:<10} {summary}  [{target}]")
        ctx.exit(0)
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())


class _BackfillGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["omop"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "omop":
            return None
        from screener.sources.registry import load_connector

        return load_connector("omop").command()


@click.group("backfill", cls=_BackfillGroup)
def backfill() -> None:
    """Load a historical extract into Kafka (screener backfill omop PATH)."""


COMMANDS: list[click.Command] = [connect, backfill]
