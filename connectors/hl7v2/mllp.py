"""MLLP framing, the one blocking MLLP client, and an asyncio server run on a thread.

Framing: ``<VT> payload <FS><CR>`` (``START_BLOCK`` + payload + ``END_BLOCK``). :class:`MLLPClient` is what the
synthetic connector, the tests and the benchmark use to talk to a listener: send one framed payload, wait for
the one framed answer. :class:`ServerThread` runs any object with ``async start()`` / ``async stop()`` (an
:class:`~connectors.hl7v2.server.MLLPServer`) on an event loop in a daemon thread, for tests, the benchmark and
embedding the listener in another process.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any, Generic, Protocol, TypeVar

from screener.errors import ConnectorError

__all__ = ["END_BLOCK", "START_BLOCK", "MLLPClient", "ServerThread", "frame", "parse_target", "unframe"]

START_BLOCK = b"\x0b"
END_BLOCK = b"\x1c\x0d"


def frame(text: str | bytes) -> bytes:
    """Wrap one message (or batch) in MLLP framing (text is encoded as UTF-8)."""
    data = text.encode() if isinstance(text, str) else text
    return START_BLOCK + data + END_BLOCK


def unframe(block: bytes) -> bytes:
    """The payload of one block that ends with (or without) ``END_BLOCK``; bytes before ``START_BLOCK`` dropped."""
    if block.endswith(END_BLOCK):
        block = block[: -len(END_BLOCK)]
    start = block.find(START_BLOCK)
    return block[start + 1 :] if start >= 0 else block


def parse_target(target: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``, host 127.0.0.1) -> ``(host, port)``.

    :raises ConnectorError: when the port is not a number in 0..65535.
    """
    host, _, port = target.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConnectorError(f"expected HOST:PORT, got {target[:80]!r}", connector="hl7v2")
    return host or "127.0.0.1", int(port)


class MLLPClient:
    """A blocking MLLP client on one TCP connection: :meth:`send` one message, get its ACK text back.

    ``timeout`` bounds connecting and each wait for bytes. Usable as a context manager.

    :raises ConnectorError: from :meth:`send`/:meth:`receive` when the peer closes before a whole answer arrived.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 30.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buf = b""

    @classmethod
    def connect(cls, target: str, *, timeout: float = 30.0) -> MLLPClient:
        """A client connected to ``HOST:PORT``."""
        return cls(*parse_target(target), timeout=timeout)

    def send(self, message: str | bytes) -> str:
        """Frame and send ``message``, wait for the answer; returns it decoded (UTF-8, bad bytes replaced)."""
        self.sock.sendall(frame(message))
        return self.receive().decode("utf-8", "replace")

    def send_raw(self, data: bytes) -> None:
        """Send bytes as they are (no framing): for tests of partial, oversize or malformed blocks."""
        self.sock.sendall(data)

    def receive(self) -> bytes:
        """The payload of the next framed answer."""
        while END_BLOCK not in self._buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectorError("MLLP peer closed the connection", connector="hl7v2")
            self._buf += chunk
        block, _, self._buf = self._buf.partition(END_BLOCK)
        return unframe(block)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> MLLPClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _AsyncServer(Protocol):
    async def start(self) -> Any: ...

    async def stop(self) -> None: ...


S = TypeVar("S", bound=_AsyncServer)


class ServerThread(Generic[S]):
    """Run ``server`` (``async start()`` / ``async stop()``) on its own event loop in a daemon thread.

    ``with ServerThread(MLLPServer(sink, port=0)) as srv: ... srv.port``: entering returns the started server;
    leaving stops it and the loop (each within ``timeout`` seconds).

    :raises ConnectorError: when the server did not start within ``timeout`` (its exception is chained).
    """

    def __init__(self, server: S, *, timeout: float = 10.0) -> None:
        self.server = server
        self.timeout = timeout
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="mllp-server", daemon=True)

    def start(self) -> S:
        self._thread.start()
        try:
            asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(self.timeout)
        except Exception as exc:
            self._stop_loop()
            raise ConnectorError(f"server did not start: {exc}", connector="hl7v2") from exc
        return self.server

    def stop(self) -> None:
        if self.loop.is_running():
            try:
                asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(self.timeout)
            finally:
                self._stop_loop()

    def _stop_loop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(self.timeout)
        if not self._thread.is_alive():
            self.loop.close()

    def __enter__(self) -> S:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
