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


def connector_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Decorator for connector commands: ``--bootstrap``, ``--topic``, ``--dry-run``; passes ``sink_factory``.

    ``sink_factory(name, **producer_options)`` returns an EventSink: a Kafka sink built from
    :class:`~screener.settings.Settings` (topics created if missing), or stdout with ``--dry-run``.
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
        from screener.sources.kafka import sink_from_settings

        base = load_settings()
        configure_logging(base.log_level, base.log_format)

        def sink_factory(name: str, **producer_options: Any) -> Any:
            if dry_run:
                return _StdoutSink()
            overrides: dict[str, Any] = {"bootstrap_servers": bootstrap, "events_topic": topic}
            if no_idempotence:
                overrides["producer_idempotence"] = False
            settings = load_settings(**overrides)
            return sink_from_settings(settings, name, producer_options=producer_options or None)

        try:
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

        return _with_into_store(load_connector("omop").command())


def _with_into_store(command: click.Command) -> click.Command:
    """The connector's command with ``--into-store URL``: write the extract straight into the history store
    (:func:`screener.history.backfill.backfill_frames`) instead of publishing it."""
    command.params.append(
        click.Option(
            ["--into-store", "into_store"],
            metavar="URL",
            default=None,
            help="Write into the history store at URL (a folder or s3://bucket/prefix) instead of Kafka; the "
            "engine starts reading the topic at its end offsets (or 0 without a broker). [env SCREENER_STATE_URL "
            "is the engine's store]",
        )
    )
    command.params.append(
        click.Option(
            ["--partitions", "partitions"],
            type=int,
            default=None,
            help="Partitions of the events topic (default: the topic's, or SCREENER_TOPIC_PARTITIONS).",
        )
    )
    original = command.callback
    assert original is not None

    def callback(**kwargs: Any) -> Any:
        into, partitions = kwargs.pop("into_store"), kwargs.pop("partitions")
        if into is None:
            return original(**kwargs)
        return _omop_into_store(into, partitions, kwargs["path"], kwargs["tables"], kwargs["chunk_rows"])

    command.callback = callback
    return command


def _omop_into_store(url: str, partitions: int | None, path: Any, tables: str, chunk_rows: int) -> None:
    from datetime import UTC, datetime

    from connectors.omop import TABLES, OmopSource, table_events
    from screener.history import open_store
    from screener.history.backfill import backfill_frames
    from screener.settings import load_settings

    wanted = tuple(t.strip().lower() for t in tables.split(",") if t.strip())
    unknown = [t for t in wanted if t not in TABLES]
    if unknown:
        raise click.BadParameter(f"unknown table(s) {unknown}; known: {', '.join(TABLES)}", param_hint="--tables")
    settings = load_settings()
    count, starts = _topic_positions(settings, partitions)
    src = OmopSource(path, chunk_rows=chunk_rows)
    concepts, now = src.concepts(), datetime.now(UTC)
    frames = (table_events(chunk, t, concepts, now) for t in wanted for chunk in src.chunks(t))
    result = backfill_frames(open_store(url), frames, partitions=count, start_offsets=starts)
    click.echo(
        f"omop -> {url}: {result.accepted} events ({result.rejected} rejected) in {result.seconds:.1f}s "
        f"({result.rate:,.0f} rows/s), {count} partitions, {result.bytes_stored / 1e6:.1f} MB; "
        f"the engine starts at offsets {dict(sorted(starts.items()))}",
        err=True,
    )
    for reason in result.reasons:
        click.echo(f"  rejected: {reason}", err=True)


def _topic_positions(settings: Any, partitions: int | None) -> tuple[int, dict[int, int]]:
    """The events topic's partition count and end offsets, from the broker when one is configured and reachable;
    otherwise ``partitions`` (or the setting) and offset 0 everywhere."""
    count = partitions or settings.topic_partitions
    if not settings.bootstrap_servers:
        return count, dict.fromkeys(range(count), 0)
    try:
        from kafka import TopicPartition

        from screener.bus import make_consumer

        consumer = make_consumer(settings, group_id=None)
        try:
            known = consumer.partitions_for_topic(settings.events_topic)
            if known:
                count = len(known)
            tps = [TopicPartition(settings.events_topic, p) for p in range(count)]
            ends = consumer.end_offsets(tps) if known else {}
            return count, {tp.partition: int(ends.get(tp, 0)) for tp in tps}
        finally:
            consumer.close()
    except Exception as exc:
        raise click.ClickException(f"cannot read the end offsets of {settings.events_topic}: {exc}") from exc


@click.group("backfill", cls=_BackfillGroup)
def backfill() -> None:
    """Load a historical extract into Kafka, or straight into the history store with --into-store URL
    (screener backfill omop PATH [--into-store URL])."""


COMMANDS: list[click.Command] = [connect, backfill]
