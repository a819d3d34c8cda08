"""FHIR R4 intake: an HTTP endpoint (Starlette, served by uvicorn) and a file loader.

HTTP contract:

- ``POST /`` or ``POST /{type}`` (or ``PUT /{type}/{id}``) with ``application/fhir+json`` or
  ``application/json``: a resource or a Bundle. The response is sent only after Kafka acknowledged every event.
  Success: ``200`` with a ``batch-response`` / ``transaction-response`` Bundle for batch/transaction Bundles
  (one ``201 Created`` per entry), otherwise an informational OperationOutcome.
- Errors are OperationOutcomes: ``400`` (not JSON / not FHIR), ``413`` (too large), ``415`` (content type),
  ``422`` (an invalid resource: the diagnostics name the resource type and the location, e.g.
  ``Observation at Bundle.entry[2].resource.valueQuantity.value``), ``503`` (broker unavailable). Every 4xx
  also goes to the dead-letter topic with the original body.
- ``GET /metadata``: a minimal CapabilityStatement.

File loading (``--from-file``) lives in :mod:`connectors.fhir.files`. A refused entry of a batch/collection
Bundle (see :mod:`connectors.fhir.parse`) is dead-lettered on its own and answered ``422`` in the batch-response;
the rest of the Bundle is accepted.
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from connectors._common import record_unmapped
from screener.errors import DeliveryError
from screener.logging import get_logger
from screener.sources.base import EventSink

from .files import dead_letter_rejected, load_path  # load_path: re-exported for existing imports
from .parse import SOURCE, SUPPORTED, FHIRReject, ParsedPayload, parse_payload

__all__ = ["build_app", "load_path", "operation_outcome"]

log = get_logger(__name__)
FHIR_JSON = "application/fhir+json"


def operation_outcome(severity: str, code: str, diagnostics: str, expression: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = [expression]
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _error(status: int, code: str, message: str, expression: str | None = None) -> JSONResponse:
    return JSONResponse(operation_outcome("error", code, message, expression), status_code=status, media_type=FHIR_JSON)


def build_app(sink: EventSink, *, max_body_bytes: int = 32 * 1024 * 1024) -> Starlette:
    """The Starlette app. ``sink`` is called in a worker thread (publishing blocks until acknowledged)."""

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

    async def receive(request: Request) -> JSONResponse:
        position = f"{request.method} {request.url.path}"
        ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if ctype and ctype not in (FHIR_JSON, "application/json", "application/json+fhir"):
            return _error(415, "not-supported", f"content type {ctype[:60]} is not FHIR JSON")
        body = await request.body()
        if len(body) > max_body_bytes:
            await run_in_threadpool(_dead_letter, sink, body[:4096], position, "413: body too large")
            return _error(413, "too-costly", f"body larger than {max_body_bytes} bytes")
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            reason = f"not valid JSON: {exc}"[:200]
            await run_in_threadpool(_dead_letter, sink, body, position, f"400: {reason}")
            return _error(400, "invalid", reason, "$")
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
            await run_in_threadpool(_dead_letter, sink, body, position, f"{exc.status}: {exc.reason}")
            return _error(exc.status, "invalid" if exc.status == 400 else "processing", exc.reason, exc.path)
        if parsed.rejected and isinstance(payload, dict):  # refused entries of a batch/collection: each one DLQ'd
            await run_in_threadpool(dead_letter_rejected, sink, payload, parsed, position)
        try:
            if parsed.events:
                await run_in_threadpool(sink.publish, parsed.events)
            record_unmapped(sink, SOURCE, parsed.skipped)
        except DeliveryError as exc:
            log.error("publish_failed", error=str(exc))
            return _error(503, "transient", "events not stored: broker unavailable; retry")
        return _success(parsed)

    return Starlette(
        routes=[
            Route("/metadata", metadata, methods=["GET"]),
            Route("/", receive, methods=["POST"]),
            Route("/{rtype:str}", receive, methods=["POST"]),
            Route("/{rtype:str}/{rid:str}", receive, methods=["PUT"]),
        ]
    )


def _success(parsed: ParsedPayload) -> JSONResponse:
    refused = dict(parsed.rejected)
    if parsed.bundle_type in ("batch", "transaction"):
        return JSONResponse(
            {
                "resourceType": "Bundle",
                "type": f"{parsed.bundle_type}-response",
                "entry": [
                    {"response": {"status": f"{refused[i].status} Rejected" if i in refused else "201 Created"}}
                    for i in range(parsed.entries)
                ],
            },
            media_type=FHIR_JSON,
        )
    skipped = ", ".join(f"{k} x{v}" for k, v in sorted(parsed.skipped.items()))
    text = (
        f"{parsed.resources} resource(s) read, {len(parsed.events)} event(s) published"
        + (f"; skipped (not read by screener): {skipped}" if skipped else "")
        + (f"; {len(parsed.rejected)} entr(y/ies) refused and dead-lettered" if parsed.rejected else "")
    )
    return JSONResponse(operation_outcome("information", "informational", text), media_type=FHIR_JSON)


def _dead_letter(sink: EventSink, payload: bytes, position: str, reason: str) -> None:
    try:
        sink.dead_letter(payload, SOURCE, position, reason)
    except DeliveryError as exc:
        log.error("dead_letter_failed", error=str(exc))
