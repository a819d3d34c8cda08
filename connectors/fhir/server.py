"""FHIR R4 intake: an HTTP endpoint (Starlette, served by uvicorn) and a file loader.

HTTP contract:

- ``POST /`` or ``POST /{type}`` (or ``PUT /{type}/{id}``) with ``application/fhir+json`` or
  ``application/json``: a resource or a Bundle. The response is sent only after Kafka acknowledged every event.
  Success: ``200`` with a ``batch-response`` / ``transaction-response`` Bundle for batch/transaction Bundles
  (one ``201 Created`` per entry), otherwise an informational OperationOutcome.
- Errors are OperationOutcomes: ``400`` (not JSON, JSON nested too deeply for the parser, not FHIR), ``413``
  (too large: refused on its ``Content-Length`` before reading, or as soon as a streamed body passes the limit;
  the rest is never read and the connection is closed), ``415`` (content type), ``422`` (an invalid resource:
  the diagnostics name the resource type and the location, e.g.
  ``Observation at Bundle.entry[2].resource.valueQuantity.value``), ``503`` (broker unavailable: at once while
  the health probe says so, else when the broker did not acknowledge within the publish timeout). Every 4xx
  also goes to the dead-letter topic with the original body (a 413 with its first 4 KiB); a 4xx whose dead
  letter cannot be stored is answered 503 instead, so nothing is lost. A parser bug is a 500 OperationOutcome
  without a traceback, and the body is dead-lettered.
- ``GET /metadata``: a minimal CapabilityStatement. ``GET /healthz``: ``200 ok`` or ``503`` with the reason.

File loading (``--from-file``): a ``.json`` file (resource or Bundle), an ``.ndjson`` file (bulk data export,
one resource per line), or a directory of them. A bad line or file is dead-lettered with ``path:line`` and
loading continues.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route

from screener.errors import DeliveryError
from screener.events import Event
from screener.logging import get_logger
from screener.sources.base import EventSink
from screener.sources.health import AlwaysHealthy, Health, guarded_call_async

from .parse import SOURCE, SUPPORTED, FHIRReject, ParsedPayload, parse_payload, parse_resource

__all__ = ["build_app", "load_path", "operation_outcome", "serve"]

log = get_logger(__name__)
FHIR_JSON = "application/fhir+json"
#: How much of an oversize body is kept in its dead letter.
PREFIX_BYTES = 4096


def operation_outcome(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _error(status: int, code: str, message: str, expression: str | None = None) -> JSONResponse:
    return JSONResponse(operation_outcome("error", code, message, expression), status_code=status, media_type=FHIR_JSON)


def build_app(
    sink: EventSink,
    *,
    max_body_bytes: int = 32 * 1024 * 1024,
    health: Health | None = None,
    publish_timeout_s: float = 20.0,
) -> Starlette:
    """The Starlette app. Sink calls run on worker threads (publishing blocks until acknowledged).

    ``health`` (a :class:`~screener.sources.health.BrokerHealth`): while it says the broker is down, requests get
    503 at once and ``GET /healthz`` answers 503 with the reason; a publish is given up after
    ``publish_timeout_s`` (503 too). Without it the endpoint is always healthy (in-memory sinks).
    """
    status = health or AlwaysHealthy()

    async def dead_letter(payload: bytes, position: str, reason: str) -> bool:
        """True when the dead letter was stored."""
        try:
            await guarded_call_async(
                sink.dead_letter, payload, SOURCE, position, reason, health=status, timeout_s=publish_timeout_s
            )
            return True
        except DeliveryError as exc:
            log.error("dead_letter_failed", error=str(exc))
            return False

    async def reject(status_code: int, code: str, reason: str, body: bytes, position: str, where: str | None) -> Any:
        """A 4xx answer, given only once its dead letter is stored (else 503: the client retries later)."""
        if not await dead_letter(body, position, f"{status_code}: {reason}"):
            return _error(503, "transient", "the rejection could not be recorded: broker unavailable; retry")
        return _error(status_code, code, reason, where)

    async def too_large(prefix: bytes, position: str) -> Any:
        await dead_letter(prefix, position, f"413: body larger than {max_body_bytes} bytes (first {len(prefix)} kept)")
        response = _error(413, "too-costly", f"body larger than {max_body_bytes} bytes")
        response.headers["connection"] = "close"  # the rest of the body is never read
        return response

    async def healthz(_request: Request) -> PlainTextResponse:
        if status.ok:
            return PlainTextResponse("ok\n")
        return PlainTextResponse(f"unavailable: {status.reason or 'broker unavailable'}\n", status_code=503)

    async def metadata(_request: Request) -> JSONResponse:
        return JSONResponse(
            {
                "resourceType": "CapabilityStatement",
                "status": "active",
                "kind": "instance",
                "fhirVersion": "4.0.1",
                "format": ["json"],
                "rest": [
                    {
                        "mode": "server",
                        "resource": [
                            {"type": t, "interaction": [{"code": "create"}, {"code": "update"}]}
                            for t in sorted(SUPPORTED)
                        ],
                        "interaction": [{"code": "batch"}, {"code": "transaction"}],
                    }
                ],
            },
            media_type=FHIR_JSON,
        )

    async def receive(request: Request) -> Any:
        position = f"{request.method} {request.url.path}"
        if not status.ok:
            return _error(503, "transient", f"{status.reason or 'broker unavailable'}; retry")
        declared = request.headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > max_body_bytes):
            if not declared.isdigit():
                return _error(400, "invalid", "Content-Length is not a number")
            return await too_large(await _read_prefix(request, PREFIX_BYTES), position)
        body = await _read_limited(request, max_body_bytes)
        if isinstance(body, _TooLarge):
            return await too_large(body.prefix, position)
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype not in (FHIR_JSON, "application/json", "application/json+fhir"):
            return await reject(
                415, "not-supported", f"content type {ctype[:60]} is not FHIR JSON", body, position, None
            )
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            return await reject(400, "invalid", f"not valid JSON: {exc}"[:200], body, position, "$")
        except RecursionError:
            return await reject(400, "too-costly", "JSON nested too deeply", body, position, "$")
        rtype = request.path_params.get("rtype")
        try:
            if rtype and isinstance(payload, dict) and payload.get("resourceType") != rtype:
                raise FHIRReject(
                    f"resourceType must be {rtype[:40]} at this URL",
                    path="$.resourceType",
                    resource_type=str(payload.get("resourceType"))[:40],
                    status=400,
                )
            parsed = parse_payload(payload)
        except FHIRReject as exc:
            code = "invalid" if exc.status == 400 else "processing"
            return await reject(exc.status, code, exc.reason, body, position, exc.path)
        except RecursionError:
            return await reject(400, "too-costly", "JSON nested too deeply", body, position, "$")
        except Exception as exc:  # a parser bug: no traceback to the client, the body kept for a replay
            log.exception("fhir_parser_crash", error_type=type(exc).__name__)
            await dead_letter(body, position, f"500: internal error while parsing: {type(exc).__name__}")
            return _error(500, "exception", f"internal error while parsing: {type(exc).__name__}")
        if parsed.events:
            try:
                await guarded_call_async(sink.publish, parsed.events, health=status, timeout_s=publish_timeout_s)
            except DeliveryError as exc:
                log.error("publish_failed", error=str(exc))
                return _error(503, "transient", "events not stored: broker unavailable; retry")
        return _success(parsed)

    return Starlette(
        routes=[
            Route("/metadata", metadata, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/", receive, methods=["POST"]),
            Route("/{rtype:str}", receive, methods=["POST"]),
            Route("/{rtype:str}/{rid:str}", receive, methods=["PUT"]),
        ]
    )


@dataclass(frozen=True)
class _TooLarge:
    prefix: bytes


async def _read_prefix(request: Request, n: int) -> bytes:
    """Up to ``n`` bytes from the start of the body; the rest is never read."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) >= n:
            break
    return bytes(buf[:n])


async def _read_limited(request: Request, limit: int) -> bytes | _TooLarge:
    """The whole body, or :class:`_TooLarge` with its first bytes as soon as it passes ``limit`` bytes."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            return _TooLarge(bytes(buf[:PREFIX_BYTES]))
    return bytes(buf)


def serve(sink: EventSink, listen: str, settings: Any, *, dry_run: bool = False, grace_s: float = 3.0) -> None:
    """Serve the endpoint on ``HOST:PORT`` until SIGTERM/SIGINT (uvicorn's handlers), with the broker probe
    and the settings' limits; requests in flight get ``grace_s`` seconds to finish, then the call returns."""
    import uvicorn

    from connectors.hl7v2 import parse_listen
    from screener.sources.health import BrokerHealth

    host, port = parse_listen(listen)
    health = None if dry_run else BrokerHealth.from_settings(settings).start()
    app = build_app(
        sink,
        max_body_bytes=settings.fhir_max_body_bytes,
        health=health,
        publish_timeout_s=settings.connector_publish_timeout_s,
    )
    try:
        uvicorn.run(
            app, host=host, port=port, log_level="warning", access_log=False, timeout_graceful_shutdown=int(grace_s)
        )
    finally:
        if health is not None:
            health.stop()


def _success(parsed: ParsedPayload) -> JSONResponse:
    if parsed.bundle_type in ("batch", "transaction"):
        return JSONResponse(
            {
                "resourceType": "Bundle",
                "type": f"{parsed.bundle_type}-response",
                "entry": [{"response": {"status": "201 Created"}} for _ in range(parsed.entries)],
            },
            media_type=FHIR_JSON,
        )
    skipped = ", ".join(f"{k} x{v}" for k, v in sorted(parsed.skipped.items()))
    text = f"{parsed.resources} resource(s) read, {len(parsed.events)} event(s) published" + (
        f"; skipped (not read by screener): {skipped}" if skipped else ""
    )
    return JSONResponse(operation_outcome("information", "informational", text), media_type=FHIR_JSON)


def _dead_letter(sink: EventSink, payload: bytes, position: str, reason: str) -> None:
    try:
        sink.dead_letter(payload, SOURCE, position, reason)
    except DeliveryError as exc:
        log.error("dead_letter_failed", error=str(exc))


# --- files -------------------------------------------------------------------------------------------
def _files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        for p in sorted(path.rglob("*")):
            if p.suffix.lower() in (".json", ".ndjson") and p.is_file():
                yield p
    else:
        yield path


def iter_file_events(path: Path, sink: EventSink) -> Iterator[tuple[list[Event], int]]:
    """(events, resources read) per resource line or per JSON file; rejects go to ``sink.dead_letter``."""
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
                    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                        _dead_letter(sink, line, position, f"400: not valid JSON: {exc}"[:200])
                        continue
                    except RecursionError:
                        _dead_letter(sink, line, position, "400: JSON nested too deeply")
                        continue
                    except FHIRReject as exc:
                        _dead_letter(sink, line, position, f"{exc.status}: {exc.reason}")
                        continue
                    yield (events or []), 1 if events is not None else 0
        else:
            body = file.read_bytes()
            try:
                parsed = parse_payload(json.loads(body))
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                _dead_letter(sink, body, str(file), f"400: not valid JSON: {exc}"[:200])
                continue
            except RecursionError:
                _dead_letter(sink, body, str(file), "400: JSON nested too deeply")
                continue
            except FHIRReject as exc:
                _dead_letter(sink, body, str(file), f"{exc.status}: {exc.reason}")
                continue
            yield parsed.events, parsed.resources


def load_path(path: Path, sink: EventSink, *, chunk: int = 5000, progress: bool = False) -> tuple[int, int]:
    """Load files into ``sink`` in chunks of ``chunk`` events. Returns ``(resources, events)``."""
    from tqdm import tqdm

    resources = events_n = 0
    buffer: list[Event] = []
    bar = tqdm(desc="fhir", unit=" resources", disable=not progress)
    for events, n in iter_file_events(path, sink):
        resources += n
        buffer.extend(events)
        bar.update(n)
        if len(buffer) >= chunk:
            sink.publish(buffer)
            events_n += len(buffer)
            buffer = []
    if buffer:
        sink.publish(buffer)
        events_n += len(buffer)
    bar.close()
    return resources, events_n
