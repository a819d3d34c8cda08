"""``screener connect NAME [OPTIONS]``, ``screener connect --list`` and ``screener backfill omop PATH``.

Connectors are found through the ``screener.connectors`` entry-point group (:mod:`screener.connector.registry`);
each contributes its own click command, loaded only when it is run.
"""

from __future__ import annotations

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
    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["omop"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name != "omop":
            return None
        from screener.connector.registry import load_connector

        return load_connector("omop").command()


@click.group("backfill", cls=_BackfillGroup)
def backfill() -> None:
    """Load a historical extract into Kafka (screener backfill omop PATH)."""


COMMANDS: list[click.Command] = [connect, backfill]
