"""``screener backfill fhir PATH --into-store URL``: FHIR JSON files and bulk-data NDJSON straight into the history
store (the connector's ``history_source``).

The files are read exactly as ``screener connect fhir --from-file PATH`` reads them (:func:`iter_file_events`:
the same mapping, the same rejects, the same unmapped counts); the events become the JSON frames
(``key`` = patient id, ``value`` = the canonical event) that :func:`screener.history.backfill.backfill_frames`
validates and partitions as the producer would have. What cannot be read (bad JSON, a refused resource, a
refused Bundle entry) has no dead-letter topic to go to: it is counted with its ``file:line`` position and
reason on the returned :class:`FileHistory` (``rejected``, ``reasons``, ``unmapped``), which the command prints
and turns into a non-zero exit, as ``--from-file`` does.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import polars as pl

from screener.connector import MemorySink
from screener.events import Event, dump_event

from .files import LoadResult, iter_file_events

__all__ = ["FileHistory", "history_frames"]

_FRAME_SCHEMA = {"key": pl.Binary, "value": pl.Binary}


@dataclass
class FileHistory:
    """The frames of the files under ``path`` (iterate once), and afterwards what could not be read."""

    path: Path
    chunk_rows: int = 50_000
    rejected: int = 0
    #: ``file:line reason`` of the first rejects (a resource's location and why, never its content)
    reasons: list[str] = field(default_factory=list)
    unmapped: dict[str, int] = field(default_factory=dict)
    resources: int = 0

    def __iter__(self) -> Iterator[pl.DataFrame]:
        sink, result = MemorySink(), LoadResult()
        buffer: list[Event] = []
        for events, n in iter_file_events(self.path, sink, result):
            self.resources += n
            buffer.extend(events)
            if len(buffer) >= self.chunk_rows:
                yield _frame(buffer)
                buffer = []
            if sink.rejections:
                self._note(sink, result)
        if buffer:
            yield _frame(buffer)
        self._note(sink, result)

    def _note(self, sink: MemorySink, result: LoadResult) -> None:
        self.rejected, self.unmapped = result.rejected, dict(result.unmapped)
        for rej in sink.rejections:
            if len(self.reasons) < 5:
                self.reasons.append(f"{rej.position} {rej.reason}"[:200])
        sink.rejections.clear()


def _frame(events: list[Event]) -> pl.DataFrame:
    return pl.DataFrame(
        {"key": [e.patient_id.encode() for e in events], "value": [dump_event(e) for e in events]},
        schema=_FRAME_SCHEMA,
    )


def history_frames(path: Path, *, chunk_rows: int = 50_000, now: datetime | None = None, **_: Any) -> FileHistory:
    """The connector's ``history_source``: the events of the ``.json``/``.ndjson`` file(s) at ``path`` (a file or
    a directory) as JSON frames of at most ``chunk_rows`` events. ``now`` and other options (``tables``) do not
    apply to FHIR files and are ignored."""
    return FileHistory(Path(path), chunk_rows)
