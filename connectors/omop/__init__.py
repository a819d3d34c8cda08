"""OMOP CDM v5.4 backfill: ``screener backfill omop PATH`` (directory of CSV/Parquet, DuckDB or SQLite file).

See :mod:`connectors.omop.backfill` for the tables, the concept mapping and the event shapes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Any

import click
import polars as pl

from connectors._common import format_unmapped
from screener.connector import SimpleConnector, SinkFactory

from ._rows import table_rows
from .backfill import TABLES, BackfillResult, OmopSource, backfill, table_events

__all__ = ["TABLES", "BackfillResult", "OmopSource", "backfill", "connector", "table_events", "table_rows"]


def _command() -> click.Command:
    from screener.connector import connector_options

    @click.command("omop")
    @click.argument("path", type=click.Path(exists=True, path_type=Path))
    @click.option("--tables", default=",".join(TABLES), show_default=True, help="Comma-separated tables to load.")
    @click.option("--chunk-rows", default=200_000, show_default=True, help="Rows read and published per batch.")
    @connector_options
    def omop(path: Path, tables: str, chunk_rows: int, sink_factory: SinkFactory) -> None:
        """Load an OMOP CDM v5.4 extract into Kafka (one canonical event per row)."""
        wanted = tuple(t.strip().lower() for t in tables.split(",") if t.strip())
        unknown = [t for t in wanted if t not in TABLES]
        if unknown:
            raise click.BadParameter(f"unknown table(s) {unknown}; known: {', '.join(TABLES)}", param_hint="--tables")
        sink = sink_factory("omop", linger_ms=50, batch_size=1024 * 1024)
        try:
            result = backfill(path, sink, tables=wanted, chunk_rows=chunk_rows)
        finally:
            close = getattr(sink, "close", None)
            if close:
                close()
        rate = result.total_events / result.seconds if result.seconds else 0.0
        for t in wanted:
            click.echo(
                f"  {t:<22} rows {result.rows_in.get(t, 0):>10}  events {result.events_out.get(t, 0):>10}", err=True
            )
        click.echo(
            f"omop: {result.total_events} events in {result.seconds:.1f}s ({rate:,.0f} rows/s); "
            f"{format_unmapped(result.unmapped)}",
            err=True,
        )

    return omop


def _history_frames(path: Path, *, tables: str, chunk_rows: int, now: datetime, rows: bool = True) -> Iterator[object]:
    """The events of every wanted table, chunk by chunk (``screener backfill omop --into-store``): event rows
    (:func:`table_rows`, the column-wise fast path) or, with ``rows=False``, JSON frames (:func:`table_events`).
    Each chunk is read here and given as the function that maps it, so the backfill maps it on its decode
    workers (beside the next chunk's read) instead of on the reading thread; consecutive chunks of small tables
    (up to ``chunk_rows`` rows in all, the person table apart) make one frame."""
    wanted = tuple(t.strip().lower() for t in tables.split(",") if t.strip())
    unknown = [t for t in wanted if t not in TABLES]
    if unknown:
        raise click.BadParameter(f"unknown table(s) {unknown}; known: {', '.join(TABLES)}", param_hint="--tables")
    src = OmopSource(path, chunk_rows=chunk_rows)
    build = table_rows if rows else table_events
    try:
        concepts = src.concepts()
        batch: list[tuple[pl.DataFrame, str]] = []
        for t in wanted:
            for chunk in src.chunks(t):
                if batch and (
                    _shape(t, rows) != _shape(batch[0][1], rows) or _height(batch) + chunk.height > chunk_rows
                ):
                    yield partial(_mapped, batch, build, concepts, now)
                    batch = []
                batch.append((chunk, t))
        if batch:
            yield partial(_mapped, batch, build, concepts, now)
    finally:
        src.close()


def _shape(table: str, rows: bool) -> str:
    """Which frames of mapped events can be stacked: the person table's rows are text-form, the others typed."""
    return "person" if rows and table == "person" else "events"


def _height(batch: list[tuple[pl.DataFrame, str]]) -> int:
    return sum(chunk.height for chunk, _ in batch)


def _mapped(
    batch: list[tuple[pl.DataFrame, str]], build: Callable[..., pl.DataFrame], concepts: Any, now: datetime
) -> pl.DataFrame:
    """The events of consecutive chunks (small tables share one frame: decoding a frame has a fixed cost of a
    few milliseconds, Eunomia's eight clinical tables are 1 to 68 thousand rows), in order."""
    frames = [build(chunk, table, concepts, now) for chunk, table in batch]
    return frames[0] if len(frames) == 1 else pl.concat(frames)


connector = SimpleConnector(
    "omop",
    "OMOP CDM v5.4 backfill from CSV/Parquet, DuckDB or SQLite",
    _command,
    history_source=_history_frames,
)
