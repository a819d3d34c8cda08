"""An asyncio MLLP server: frames in, canonical events to the sink, ACKs out.

Contract, per received block (``<VT> ... <FS><CR>``):

1. the block is split into messages (an FHS/BHS batch may hold many; a bare message is one);
2. each message is parsed (:func:`connectors.hl7v2.parse.parse_message`);
3. the events of every accepted message are published in one call and the server waits for the broker's
   acknowledgement; only then is ``AA`` written back. If the broker fails, accepted messages get ``AE``
   (error 207) so the sending engine re-sends them (and are dead-lettered if the broker takes that); while the
   health probe says the broker is down neither is attempted, so the AE comes at once;
4. rejected messages get ``AE`` (unparseable or invalid field) or ``AR`` (unsupported type) with an ERR
   segment, and the original bytes go to the dead-letter topic with the reason.

A batch is answered with one BHS/BTS batch of ACKs. One connection is served in order (the next block is read
only after the previous ACK was written); connections are served concurrently. Bytes that are not valid UTF-8
are decoded as ISO-8859-1 (the usual charset of English feeds), never dropped.

Limits (:class:`MLLPLimits`, from the ``SCREENER_MLLP_*`` settings), so no sender can exhaust the listener:

- a connection is closed when no complete block arrived within ``idle_timeout_s`` of connecting or of the
  previous ACK (quiet and trickling senders alike), or when writing an ACK takes that long;
- at most ``max_connections`` connections at once; one more is closed at once;
- a block longer than ``max_message_bytes`` is answered AE, dead-lettered with its first
  :data:`DEAD_LETTER_PREFIX_BYTES` bytes, and the connection closed;
- all connections together buffer at most ``max_buffered_bytes`` (+ one 64 KiB read each): a connection that
  would pass it is answered AE ("busy") and closed, and may retry.

Each closed-by-limit connection counts in ``screener_mllp_connections_dropped_total{reason}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from screener.errors import DeliveryError
from screener.logging import get_logger
from screener.metrics import Metrics
from screener.sources.base import EventSink
from screener.sources.health import AlwaysHealthy, DaemonPool, Health, guarded_call

from .ack import build_ack, wrap_batch
from .mllp import END_BLOCK, START_BLOCK, frame
from .parse import SOURCE, CodeMap, HL7Reject, ParsedMessage, load_code_map, parse_message, split_batch

__all__ = ["DEAD_LETTER_PREFIX_BYTES", "END_BLOCK", "START_BLOCK", "MLLPLimits", "MLLPServer", "frame", "process_block"]

log = get_logger(__name__)
#: How much of an oversize block is kept in its dead letter.
DEAD_LETTER_PREFIX_BYTES = 4096
_READ = 64 * 1024
#: Blocks are parsed and published here (daemon threads: a stuck publish never holds up a SIGTERM'd exit).
_BLOCKS = DaemonPool(8, "mllp-block")


def _decode(block: bytes) -> str:
    try:
        return block.decode("utf-8")
    except UnicodeDecodeError:
        return block.decode("iso-8859-1")


def _call(fn: Callable[..., Any], *args: Any, health: Health | None, timeout_s: float) -> None:
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
            _call(sink.publish, events, health=health, timeout_s=publish_timeout_s)
        except DeliveryError as exc:
            broker_error = f"events not stored, broker unavailable: {exc.message}"[:200]
            log.error("publish_failed", error=str(exc), messages=len(messages))
    acks: list[str] = []
    codes: list[str] = []
    for raw, p in zip(messages, parsed, strict=True):
        if isinstance(p, ParsedMessage):
            if broker_error is None:
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
            _call(
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


@dataclass(frozen=True)
class MLLPLimits:
    """The listener's limits (see the module docstring); defaults are the settings' defaults."""

    idle_timeout_s: float = 120.0
    max_connections: int = 64
    max_message_bytes: int = 16 * 1024 * 1024
    max_buffered_bytes: int = 128 * 1024 * 1024

    @classmethod
    def from_settings(cls, settings: Any) -> MLLPLimits:
        return cls(
            idle_timeout_s=settings.mllp_idle_timeout_s,
            max_connections=settings.mllp_max_connections,
            max_message_bytes=settings.mllp_max_message_bytes,
            max_buffered_bytes=settings.mllp_max_buffered_bytes,
        )


class _Drop(Exception):
    """Close this connection; ``reason`` is the metric label."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


class MLLPServer:
    """Serve MLLP on ``host:port``; ``port=0`` picks a free port (read ``.port`` after :meth:`start`).

    ``health`` (a :class:`~screener.sources.health.BrokerHealth`) makes sink calls fail fast while the broker is
    down; ``metrics`` counts connections and drops. Both are optional.
    """

    def __init__(
        self,
        sink: EventSink,
        *,
        host: str = "127.0.0.1",
        port: int = 2575,
        code_map: CodeMap | None = None,
        limits: MLLPLimits | None = None,
        source: str = SOURCE,
        on_block: Callable[[list[str]], Any] | None = None,
        health: Health | None = None,
        publish_timeout_s: float = 20.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.sink = sink
        self.host = host
        self.port = port
        self.code_map = code_map or load_code_map()
        self.limits = limits or MLLPLimits()
        self.source = source
        self.on_block = on_block
        self.health: Health = health or AlwaysHealthy()
        self.publish_timeout_s = publish_timeout_s
        self.metrics = metrics
        self.connections = 0
        self.buffered_bytes = 0
        self._server: asyncio.base_events.Server | None = None
        self._open: dict[asyncio.Task[Any], _Connection] = {}

    async def start(self) -> MLLPServer:
        self._server = await asyncio.start_server(self._handle, self.host, self.port, limit=_READ)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("mllp_listening", host=self.host, port=self.port)
        return self

    @property
    def listening(self) -> bool:
        return self._server is not None and self._server.is_serving()

    async def serve_forever(self) -> None:
        if self._server is None:
            await self.start()
        assert self._server is not None
        async with self._server:
            await self._server.serve_forever()

    async def stop(self, grace_s: float = 0.0) -> None:
        """Stop accepting; close connections waiting for a block at once, and give the ones with a block in
        flight up to ``grace_s`` seconds to answer it before they are cancelled too."""
        if self._server is not None:
            self._server.close()
            self._server = None
        busy = [t for t, c in self._open.items() if c.busy]
        if busy and grace_s > 0:
            for task, conn in list(self._open.items()):
                if not conn.busy:
                    task.cancel()
            await asyncio.wait(busy, timeout=grace_s)
        rest = list(self._open)
        for task in rest:
            task.cancel()
        if rest:  # let the cancelled handlers close their sockets before the loop goes away
            await asyncio.wait(rest, timeout=1.0)

    def _count_drop(self, reason: str) -> None:
        log.warning("mllp_connection_dropped", reason=reason)
        if self.metrics is not None:
            self.metrics.mllp_dropped.labels(reason=reason).inc()

    def _gauges(self) -> None:
        if self.metrics is not None:
            self.metrics.mllp_connections.set(self.connections)
            self.metrics.mllp_buffered.set(self.buffered_bytes)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.connections >= self.limits.max_connections:
            self._count_drop("max_connections")
            writer.close()
            return
        self.connections += 1
        self._gauges()
        peer = writer.get_extra_info("peername")
        position = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        state = _Connection(self, reader, writer, position)
        task = asyncio.current_task()
        if task is not None:
            self._open[task] = state
        try:
            await state.serve()
        except _Drop as drop:
            self._count_drop(drop.reason)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            if task is not None:
                self._open.pop(task, None)
            self.buffered_bytes -= state.held
            self.connections -= 1
            self._gauges()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


class _Connection:
    """One connection's read loop; ``held`` is what it has counted against the server's buffered bytes."""

    def __init__(
        self, server: MLLPServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, position: str
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.position = position
        self.buf = bytearray()
        self.held = 0
        #: True while a complete block is being processed and answered
        self.busy = False

    def _hold(self, n: int) -> None:
        self.held += n
        self.server.buffered_bytes += n

    async def _answer(self, text: str) -> None:
        self.writer.write(frame(text))
        try:
            await asyncio.wait_for(self.writer.drain(), self.server.limits.idle_timeout_s)
        except TimeoutError as exc:
            raise _Drop("slow_reader") from exc

    async def _reject(self, reason: str, drop: str, payload_prefix: bytes | None) -> None:
        srv = self.server
        with contextlib.suppress(_Drop, ConnectionError):
            await self._answer(build_ack("", "AE", reason=reason, hl7_code="207"))
        if payload_prefix is not None:
            loop = asyncio.get_running_loop()
            call = functools.partial(_call, health=srv.health, timeout_s=srv.publish_timeout_s)
            try:
                await loop.run_in_executor(
                    _BLOCKS, call, srv.sink.dead_letter, payload_prefix, srv.source, self.position, f"AE: {reason}"
                )
            except DeliveryError as exc:
                log.error("dead_letter_failed", error=str(exc))
        raise _Drop(drop)

    async def _next_block(self) -> bytes | None:
        """The payload of the next complete block, or None when the peer closed."""
        limits = self.server.limits
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limits.idle_timeout_s
        scanned = 0
        while True:
            end = self.buf.find(END_BLOCK, max(0, scanned - 1))
            if end >= 0:
                break
            scanned = len(self.buf)
            start = self.buf.find(START_BLOCK)
            size = scanned - (start + 1 if start >= 0 else 0)
            if size > limits.max_message_bytes:
                await self._oversize()
            if self.server.buffered_bytes > limits.max_buffered_bytes:
                await self._reject(
                    f"listener busy: more than {limits.max_buffered_bytes} bytes buffered; retry", "busy", None
                )
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise _Drop("idle")
            try:
                chunk = await asyncio.wait_for(self.reader.read(_READ), remaining)
            except TimeoutError as exc:
                raise _Drop("idle") from exc
            if not chunk:
                return None  # peer closed (a partial frame without its end is discarded)
            self.buf += chunk
            self._hold(len(chunk))
        raw = bytes(self.buf[:end])
        start = raw.find(START_BLOCK)
        block = raw[start + 1 :] if start >= 0 else raw
        if len(block) > limits.max_message_bytes:
            await self._oversize()
        del self.buf[: end + len(END_BLOCK)]
        return block

    async def _oversize(self) -> None:
        start = self.buf.find(START_BLOCK)
        first = start + 1 if start >= 0 else 0
        prefix = bytes(self.buf[first : first + DEAD_LETTER_PREFIX_BYTES])
        limit = self.server.limits.max_message_bytes
        await self._reject(
            f"MLLP block larger than {limit} bytes (the dead letter keeps its first {len(prefix)} bytes)",
            "oversize",
            prefix,
        )

    async def serve(self) -> None:
        srv = self.server
        loop = asyncio.get_running_loop()
        while True:
            block = await self._next_block()
            if block is None:
                return
            self.busy = True
            response, codes = await loop.run_in_executor(
                _BLOCKS,
                functools.partial(
                    process_block,
                    block,
                    srv.sink,
                    code_map=srv.code_map,
                    position=self.position,
                    source=srv.source,
                    health=srv.health,
                    publish_timeout_s=srv.publish_timeout_s,
                ),
            )
            released = self.held - len(self.buf)
            self.held -= released
            srv.buffered_bytes -= released
            await self._answer(response)
            self.busy = False
            if srv.on_block is not None:
                srv.on_block(codes)
