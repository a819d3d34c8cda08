"""FHIR R4: ``screener connect fhir --listen HOST:PORT`` (HTTP) or ``--from-file PATH`` (Bundles, bulk NDJSON).

See :mod:`connectors.fhir.parse` for the resources read and :mod:`connectors.fhir.server` for the HTTP contract.
Timestamps without an offset are read as Europe/London time.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from connectors._common import format_unmapped
from screener.connector import SimpleConnector, SinkFactory

from .files import LoadResult, load_files
from .parse import SUPPORTED, FHIRReject, ParsedPayload, parse_payload, parse_resource
from .server import build_app, load_path, operation_outcome, serve

if TYPE_CHECKING:
    from .history import FileHistory

__all__ = [
    "SUPPORTED",
    "FHIRReject",
    "LoadResult",
    "ParsedPayload",
    "build_app",
    "connector",
    "load_files",
    "load_path",
    "operation_outcome",
    "parse_payload",
    "parse_resource",
]


def _command() -> click.Command:
    from screener.connector import connector_options

    @click.command("fhir")
    @click.option("--listen", default=None, help="HOST:PORT to serve the FHIR endpoint on.")
    @click.option(
        "--from-file",
        "from_file",
        type=click.Path(exists=True, path_type=Path),
        default=None,
        help="A Bundle/resource .json, a bulk-data .ndjson, or a directory of them.",
    )
    @connector_options
    def fhir(listen: str | None, from_file: Path | None, sink_factory: SinkFactory) -> None:
        """Receive FHIR R4 resources and Bundles over HTTP, or load them from files."""
        if (listen is None) == (from_file is None):
            raise click.UsageError("give exactly one of --listen HOST:PORT or --from-file PATH")
        sink = sink_factory("fhir")
        try:
            if from_file is not None:
                result = load_files(from_file, sink, progress=True)
                click.echo(
                    f"fhir: {result.resources} resources -> {result.events} events, {result.rejected} rejected; "
                    f"{format_unmapped(result.unmapped)}",
                    err=True,
                )
                if result.rejected:
                    raise SystemExit(1)  # something went to the dead-letter topic: the load is not complete
                return
            serve(sink, listen or "", sink_factory.settings, dry_run=sink_factory.dry_run)
        finally:
            from connectors.hl7v2 import close_sink

            close_sink(sink)

    return fhir


def _history_frames(path: Path, **options: Any) -> FileHistory:
    from .history import history_frames

    return history_frames(path, **options)


connector = SimpleConnector(
    "fhir",
    "FHIR R4 resources and Bundles over HTTP, or from JSON/NDJSON files",
    _command,
    history_source=_history_frames,
)
