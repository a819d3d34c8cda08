"""``screener connect fhir --from-file PATH``: FHIR JSON files and bulk-data NDJSON into the sink.

A ``.json`` file (resource or Bundle), an ``.ndjson`` file (bulk data export, one resource per line), or a
directory of them. Nothing is lost silently: a bad line or file is dead-lettered with ``path:line`` (or the
file and the entry's location) and loading continues; a refused entry of a batch/collection Bundle is
dead-lettered on its own while the rest of the Bundle is loaded; resource types not mapped are counted per type
(:attr:`LoadResult.unmapped`, and ``screener_connector_unmapped_total`` on a sink with metrics). The command
prints the counts and exits non-zero when anything was rejected.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from connectors._common import merge_counts, record_unmapped
from screener.errors import DeliveryError
from screener.events import Event
from screener.logging import get_logger
from screener.sources.base import EventSink

from .parse import SOURCE, FHIRReject, ParsedPayload, parse_payload, parse_resource

__all__ = ["LoadResult", "dead_letter_rejected", "iter_file_events", "load_files", "load_path"]

log = get_logger(__name__)


@dataclass
class LoadResult:
    """What a load did: resources read, events published, inputs rejected, types not mapped."""

    resources: int = 0
    events: int = 0
    rejected: int = 0
    unmapped: dict[str, int] = field(default_factory=dict)


def _dead_letter(sink: EventSink, payload: bytes, position: str, reason: str) -> None:
    try:
        sink.dead_letter(payload, SOURCE, position, reason)
    except DeliveryError as exc:
        log.error("dead_letter_failed", error=str(exc))


def dead_letter_rejected(sink: EventSink, payload: dict[str, Any], parsed: ParsedPayload, position: str) -> int:
    """Dead-letter each refused entry of a Bundle (its resource JSON, the location, the reason); returns how many.

    ``payload`` is the decoded Bundle (kept in the signature for callers that log it; the resources come from
    ``parsed``)."""
    for (_index, exc), resource in zip(parsed.rejected, parsed.rejected_resources, strict=True):
        body = json.dumps(resource, separators=(",", ":")).encode()
        _dead_letter(sink, body, f"{position} {exc.path}", f"{exc.status}: {exc.reason}")
    return len(parsed.rejected)


def _files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.suffix.lower() in (".json", ".ndjson") and p.is_file():
                yield p
    else:
        yield path


def iter_file_events(
    path: Path, sink: EventSink, result: LoadResult | None = None
) -> Iterator[tuple[list[Event], int]]:
    """(events, resources read) per resource line or per JSON file; rejects go to ``sink.dead_letter`` and are
    counted in ``result`` (with the unmapped types) when one is given."""
    result = result if result is not None else LoadResult()
    for file in _files(path):
        if file.suffix.lower() == ".ndjson":
            with file.open("rb") as fh:
                for lineno, line in enumerate(fh, start=1):
                    if not line.strip():
                        continue
                    position = f"{file}:{lineno}"
                    try:
                        res = json.loads(line)
                        events = parse_resource(res, f"{file.name}:{lineno}")
                    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                        _dead_letter(sink, line, position, f"400: not valid JSON: {exc}"[:200])
                        result.rejected += 1
                        continue
                    except FHIRReject as exc:
                        _dead_letter(sink, line, position, f"{exc.status}: {exc.reason}")
                        result.rejected += 1
                        continue
                    if events is None:
                        rtype = str(res.get("resourceType"))[:40] if isinstance(res, dict) else "?"
                        merge_counts(result.unmapped, {rtype: 1})
                    yield (events or []), 1 if events is not None else 0
        else:
            body = file.read_bytes()
            try:
                payload = json.loads(body)
                parsed = parse_payload(payload)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:
                _dead_letter(sink, body, str(file), f"400: not valid JSON: {exc}"[:200])
                result.rejected += 1
                continue
            except FHIRReject as exc:
                _dead_letter(sink, body, str(file), f"{exc.status}: {exc.reason}")
                result.rejected += 1
                continue
            result.rejected += dead_letter_rejected(sink, payload, parsed, str(file))
            merge_counts(result.unmapped, parsed.skipped)
            yield parsed.events, parsed.resources


def load_files(path: Path, sink: EventSink, *, chunk: int = 5000, progress: bool = False) -> LoadResult:
    """Load files into ``sink`` in chunks of ``chunk`` events; the counts of what was read, rejected, unmapped."""
    from tqdm import tqdm

    result = LoadResult()
    buffer: list[Event] = []
    bar = tqdm(desc="fhir", unit=" resources", disable=not progress)
    for events, n in iter_file_events(path, sink, result):
        result.resources += n
        buffer.extend(events)
        bar.update(n)
        if len(buffer) >= chunk:
            sink.publish(buffer)
            result.events += len(buffer)
            buffer = []
    if buffer:
        sink.publish(buffer)
        result.events += len(buffer)
    bar.close()
    record_unmapped(sink, SOURCE, result.unmapped)
    return result


def load_path(path: Path, sink: EventSink, *, chunk: int = 5000, progress: bool = False) -> tuple[int, int]:
    """Load files into ``sink``. Returns ``(resources, events)``; see :func:`load_files` for the full counts."""
    result = load_files(path, sink, chunk=chunk, progress=progress)
    return result.resources, result.events
