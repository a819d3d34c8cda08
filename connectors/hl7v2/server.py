"""An asyncio MLLP server: frames in, canonical events to the sink, ACKs out.

Contract, per received block (``<VT> ... <FS><CR>``):

1. the block is split into messages (an FHS/BHS batch may hold many; a bare message is one);
2. each message is parsed (:func:`connectors.hl7v2.parse.parse_message`);
3. the events of every accepted message are published in one call and the server waits for the broker's
   acknowledgement; only then is ``AA`` written back. If the broker fails, accepted messages get ``AE``
   (error 207) so the sending engine re-sends them;
4. rejected messages get ``AE`` (unparseable or invalid field) or ``AR`` (unsupported type) with an ERR
   segment, and the original bytes go to the dead-letter topic with the reason.

A batch is answered with one BHS/BTS batch of ACKs. One connection is served in order (the next block is read
only after the previous ACK was written); connections are served concurrently. Bytes that are not valid UTF-8
are decoded as ISO-8859-1 (the usual charset of English feeds), never dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from typing import Any

from connectors._common import record_unmapped
from screener.errors import DeliveryError
from screener.logging import get_logger
from screener.sources.base import EventSink

from .ack import build_ack, wrap_batch
from .parse import SOURCE, CodeMap, HL7Reject, ParsedMessage, load_code_map, parse_message, split_batch

__all__ = ["END_BLOCK", "START_BLOCK", "MLLPServer", "frame", "process_block"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"
log = get_logger(__name__)


def frame(text: str | bytes) -> bytes:
    """Wrap one message (or batch) in MLLP framing."""
    data = text.encode() if isinstance(text, str) else text
    return START_BLOCK + data + END_BLOCK


def _decode(block: bytes) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("iso-8859-1")


def process_block(
    block: bytes, sink: EventSink, *, code_map: CodeMap, position: str, source: str = SOURCE
) -> tuple[str, list[str]]:
    """Handle one MLLP payload synchronously. Returns ``(response text, ack codes in message order)``.

    Publishes accepted events (waiting for the broker), dead-letters rejected messages, builds the ACK(s).
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
            sink.publish(events)
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
        with contextlib.suppress(DeliveryError):
            sink.dead_letter(
                block if len(messages) == 1 else raw.encode("utf-8"),
                source,
                f"{position} control_id={p.control_id[:40] or '-'}",
                f"{p.ack_code}: {p.reason}",
            )
        log.info("hl7_rejected", ack=p.ack_code, hl7_code=p.hl7_code, location=p.location)
    if batch_kind is None and len(acks) == 1:
        return acks[0], codes
    return wrap_batch(acks, batch_kind), codes


class MLLPServer:
    """Serve MLLP on ``host:port``; ``port=0`` picks a free port (read ``.port`` after :meth:`start`).

    ``max_block_bytes`` bounds one framed payload; a longer one is answered AE and the connection closed.
    """

    def __init__(
        self,
        sink: EventSink,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        code_map: CodeMap | None = None,
        max_block_bytes: int = 16 * 1024 * 1024,
        source: str = SOURCE,
        on_block: Callable[[list[str]], Any] | None = None,
    ) -> None:
        self.sink = sink
        self.host = host
        self.port = port
        self.code_map = code_map or load_code_map()
        self.max_block_bytes = max_block_bytes
        self.source = source
        self.on_block = on_block
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> MLLPServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=self.max_block_bytes + 16)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp_listening", host=self.host, port=self.port)
        return self

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        position = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    data = await reader.readuntil(END_BLOCK)
                except asyncio.IncompleteReadError:
                    return  # peer closed (a partial frame without its end is discarded)
                except asyncio.LimitOverrunError:
                    reason = f"MLLP block larger than {self.max_block_bytes} bytes"
                    writer.write(frame(build_ack("", "AE", reason=reason, hl7_code="207")))
                    await writer.drain()
                    with contextlib.suppress(DeliveryError):
                        await loop.run_in_executor(
                            None, self.sink.dead_letter, b"", self.source, position, f"AE: {reason}"
                        )
                    return
                start = data.find(START_BLOCK)
                block = data[start + 1 if start >= 0 else 0 : -len(END_BLOCK)]
                response, codes = await loop.run_in_executor(
                    None,
                    functools.partial(
                        process_block, block, self.sink, code_map=self.code_map, position=position, source=self.source
                    ),
                )
                writer.write(frame(response))
                await writer.drain()
                if self.on_block is not None:
                    self.on_block(codes)
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
