"""One MLLP payload in, one ACK (or batch of ACKs) out: parse, publish, dead-letter (see :mod:`.server`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from connectors._common import record_unmapped
from screener.errors import DeliveryError
from screener.logging import get_logger
from screener.sources.base import EventSink
from screener.sources.health import Health, guarded_call

from .ack import build_ack, wrap_batch
from .parse import SOURCE, CodeMap, HL7Reject, ParsedMessage, parse_message, split_batch

__all__ = ["call_sink", "process_block"]

log = get_logger(__name__)


def _decode(block: bytes) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("iso-8859-1")


def call_sink(fn: Callable[..., Any], *args: Any, health: Health | None, timeout_s: float) -> None:
    """``fn(*args)``; through :func:`~screener.sources.health.guarded_call` when ``health`` is given."""
    if health is None:
        fn(*args)
    else:
        guarded_call(fn, *args, health=health, timeout_s=timeout_s)


def process_block(
    block: bytes,
    sink: EventSink,
    *,
    code_map: CodeMap,
    position: str,
    source: str = SOURCE,
    health: Health | None = None,
    publish_timeout_s: float = 20.0,
) -> tuple[str, list[str]]:
    """Handle one MLLP payload synchronously. Returns ``(response text, ack codes in message order)``.

    Publishes accepted events (waiting for the broker), dead-letters rejected messages, builds the ACK(s).
    With ``health``, sink calls fail fast while the broker is down and give up after ``publish_timeout_s``.
    """
    text = _decode(block)
    messages, batch_kind = split_batch(text)
    if not messages:
        messages = [text]
    parsed: list[ParsedMessage | HL7Reject] = []
    for raw in messages:
        try:
            parsed.append(parse_message(raw, code_map=code_map, source=source))
        except HL7Reject as exc:
            parsed.append(exc)
        except Exception as exc:  # a parser bug must not kill the connection; reject and keep going
            log.exception("hl7_parser_crash", error_type=type(exc).__name__)
            parsed.append(HL7Reject(f"internal error while parsing: {type(exc).__name__}", hl7_code="207"))
    events = [ev for p in parsed if isinstance(p, ParsedMessage) for ev in p.events]
    broker_error: str | None = None
    if events:
        try:
            call_sink(sink.publish, events, health=health, timeout_s=publish_timeout_s)
        except DeliveryError as exc:
            broker_error = f"events not stored, broker unavailable: {exc.message}"[:200]
            log.error("publish_failed", error=str(exc), messages=len(messages))
    acks: list[str] = []
    codes: list[str] = []
    for raw, p in zip(messages, parsed, strict=True):
        if isinstance(p, ParsedMessage):
            if broker_error is None:
                record_unmapped(sink, source, p.unmapped)  # segment types not read: counted, never silent
                acks.append(build_ack(raw, "AA", control_id=p.control_id))
                codes.append("AA")
                continue
            p = HL7Reject(broker_error, hl7_code="207", control_id=p.control_id)
        acks.append(
            build_ack(
                raw, p.ack_code, control_id=p.control_id, reason=p.reason, hl7_code=p.hl7_code, location=p.location
            )
        )
        codes.append(p.ack_code)
        try:
            call_sink(
                sink.dead_letter,
                block if len(messages) == 1 else raw.encode("utf-8"),
                source,
                f"{position} control_id={p.control_id[:40] or '-'}",
                f"{p.ack_code}: {p.reason}",
                health=health,
                timeout_s=publish_timeout_s,
            )
        except DeliveryError as exc:
            log.error("dead_letter_failed", error=str(exc))
        log.info("hl7_rejected", ack=p.ack_code, hl7_code=p.hl7_code, location=p.location)
    if batch_kind is None and len(acks) == 1:
        return acks[0], codes
    return wrap_batch(acks, batch_kind), codes
