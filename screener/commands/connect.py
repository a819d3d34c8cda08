"""``screener connect NAME [OPTIONS]``, ``screener connect --list``, ``screener backfill omop PATH`` and
``screener backfill fhir PATH --into-store URL``.

Connectors are found through the ``screener.connectors`` entry-point group (:mod:`screener.connector.registry`);
each contributes its own click command, loaded only when it is run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from screener.connector.options import connector_options  # re-exported: its home before the connector SDK
from screener.errors import ScreenerError

__all__ = ["COMMANDS", "backfill", "connect", "connector_options"]


class _ConnectorGroup(click.Group):
    """Sub-commands come from installed connectors, imported only when asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from screener.connector.registry import available

        return [n for n in available() if n != "omop"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from screener.connector.registry import load_connector

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
        from screener.connector.registry import available, load_connector

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
    """``omop`` (the connector's own command, to Kafka or ``--into-store``) and every other installed connector
    with a ``history_source`` (files straight into the history store: ``screener backfill fhir PATH
    --into-store URL``)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        from screener.connector.registry import available, load_connector

        names = []
        for name in available():
            try:
                if getattr(load_connector(name), "history_source", None) is not None:
                    names.append(name)
            except ScreenerError:
                continue
        return names

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        from screener.connector.registry import load_connector

        try:
            connector = load_connector(cmd_name)
        except ScreenerError as exc:
            raise click.UsageError(str(exc), ctx) from exc
        if cmd_name == "omop":
            return _with_into_store(connector.command())
        if getattr(connector, "history_source", None) is None:
            raise click.UsageError(f"connector '{cmd_name}' cannot backfill into the history store", ctx)
        return _files_into_store(cmd_name)


def _files_into_store(name: str) -> click.Command:
    @click.command(name)
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    @click.option(
        "--into-store",
        "into_store",
        metavar="URL",
        required=True,
        help="The history store (a folder or s3://bucket/prefix; the engine's SCREENER_STATE_URL).",
    )
    @click.option("--partitions", type=int, default=None, help="Partitions of the events topic (default: the topic's).")
    @click.option("--chunk-rows", "chunk_rows", type=int, default=50_000, show_default=True, help="Events per chunk.")
    def command(path: Path, into_store: str, partitions: int | None, chunk_rows: int) -> None:
        _into_store(name, into_store, partitions, path, tables=None, chunk_rows=chunk_rows)

    command.help = (
        f"Write {name} files straight into the history store (to publish them to Kafka instead: screener connect "
        f"{name}). PATH is a file or a folder; the engine then reads the topic from its current end."
    )
    return command


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
    _into_store("omop", url, partitions, path, tables=tables, chunk_rows=chunk_rows)


def _into_store(name: str, url: str, partitions: int | None, path: Any, *, tables: str | None, chunk_rows: int) -> None:
    """Backfill the connector's ``history_source`` frames into the store at ``url``. A source may report, after
    iteration, inputs it could not read (``rejected``, ``reasons``, ``unmapped`` attributes): they are printed, and
    any rejected input makes the command exit 1 (the backfill is not complete)."""
    from datetime import UTC, datetime

    from screener.connector.registry import load_history_source
    from screener.history import open_store
    from screener.history.backfill import backfill_frames
    from screener.settings import load_settings

    source = load_history_source(name)
    settings = load_settings()
    count, starts = _topic_positions(settings, partitions)
    options: dict[str, Any] = {"chunk_rows": chunk_rows, "now": datetime.now(UTC)}
    if tables is not None:
        options["tables"] = tables
    frames = source(path, **options)
    try:
        result = backfill_frames(open_store(url), frames, partitions=count, start_offsets=starts)
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    unread = int(getattr(frames, "rejected", 0) or 0)
    unmapped: dict[str, int] = dict(getattr(frames, "unmapped", {}) or {})
    skipped = ", ".join(f"{k} x{v}" for k, v in sorted(unmapped.items())) or "none"
    click.echo(
        f"{name} -> {url}: {result.accepted} events ({result.rejected} rejected"
        + (f", {unread} inputs unreadable" if unread else "")
        + f") in {result.seconds:.1f}s ({result.rate:,.0f} rows/s), {count} partitions, "
        f"{result.bytes_stored / 1e6:.1f} MB; unmapped: {skipped}; "
        f"the engine starts at offsets {dict(sorted(starts.items()))}",
        err=True,
    )
    for reason in [*result.reasons, *list(getattr(frames, "reasons", []) or [])]:
        click.echo(f"  rejected: {reason}", err=True)
    if unread:
        raise SystemExit(1)


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
    (screener backfill omop PATH [--into-store URL]; screener backfill fhir PATH --into-store URL)."""


COMMANDS: list[click.Command] = [connect, backfill]
