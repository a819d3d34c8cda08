"""Honest connector health: is the broker reachable, and publishing that fails fast while it is not.

:class:`BrokerHealth` asks the broker for its metadata every ``interval_s`` seconds from a thread of its own (a
real Kafka request on kafka-python's client, with the same security options as the producer), and is also told
of every failed publish. Listeners read :attr:`BrokerHealth.ok` before they publish, so while the broker is down
a FHIR POST gets 503 and an MLLP message AE at once instead of waiting through the producer's retries, and their
``GET /healthz`` answers 503 with the reason.

:func:`guarded_call` runs one blocking sink call (publish, dead letter) and gives up when the probe sees the
broker go down or after ``timeout_s``. A call given up on keeps running in its worker thread; if it succeeds
later its records are on the topic although the sender was told to retry, which is safe: ``event_id`` is the
idempotency key downstream.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from screener.errors import DeliveryError
from screener.logging import get_logger

__all__ = [
    "AlwaysHealthy",
    "BrokerHealth",
    "DaemonPool",
    "Health",
    "guarded_call",
    "guarded_call_async",
    "start_health_http",
]

log = get_logger(__name__)


class DaemonPool(concurrent.futures.Executor):
    """A fixed pool of daemon worker threads: unlike ``ThreadPoolExecutor`` it never holds up interpreter exit,
    so a sink call stuck on a dead broker cannot stop a SIGTERM'd connector from exiting."""

    def __init__(self, workers: int, name: str) -> None:
        self._queue: queue.SimpleQueue[tuple[concurrent.futures.Future[Any], Callable[..., Any], tuple[Any, ...]]]
        self._queue = queue.SimpleQueue()
        for i in range(workers):
            threading.Thread(target=self._work, name=f"{name}-{i}", daemon=True).start()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._queue.put((future, functools.partial(fn, **kwargs) if kwargs else fn, args))
        return future

    def _work(self) -> None:
        while True:
            future, fn, args = self._queue.get()
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # handed to the waiter, like ThreadPoolExecutor does
                future.set_exception(exc)


_POOL = DaemonPool(32, "sink-call")


class Health(Protocol):
    """What a listener reads: ``ok`` and, when not ok, a short ``reason`` (no patient data)."""

    @property
    def ok(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    def report_failure(self, reason: str) -> None: ...


class AlwaysHealthy:
    """The health of a sink with no broker behind it (``--dry-run``, tests with an in-memory sink)."""

    ok = True
    reason = ""

    def report_failure(self, reason: str) -> None:
        """Ignored: there is no broker to be down."""


def _metadata_probe(bootstrap: list[str], kafka_options: dict[str, Any], timeout_s: float) -> Callable[[], str | None]:
    """A probe on one long-lived kafka-python client: ``None`` when a broker answered a metadata request."""
    from kafka.client_async import KafkaClient
    from kafka.protocol.metadata import MetadataRequest

    client = KafkaClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=int(timeout_s * 1000),
        reconnect_backoff_max_ms=1000,
        api_version=(2, 0),  # skips version probing, which tansu answers slowly
        client_id="screener-health",
        **kafka_options,
    )

    def probe() -> str | None:
        deadline = time.monotonic() + timeout_s
        node = client.least_loaded_node()
        if node is None:
            return "no broker known"
        while not client.ready(node) and time.monotonic() < deadline:
            client.poll(timeout_ms=100)
        if not client.ready(node):
            return f"broker unreachable: no connection to {', '.join(bootstrap)[:120]} within {timeout_s:g}s"
        future = client.send(node, MetadataRequest[0]([]))
        client.poll(future=future, timeout_ms=int(max(0.0, deadline - time.monotonic()) * 1000) or 1)
        if not future.is_done:
            return f"broker unreachable: no metadata answer within {timeout_s:g}s"
        if future.failed():
            return f"broker unreachable: {type(future.exception).__name__}"
        return None

    return probe


class BrokerHealth:
    """Broker reachability, probed in the background every ``interval_s`` seconds.

    ``probe`` (for tests) returns ``None`` when healthy or the reason it is not; by default it is a metadata
    request to ``bootstrap`` with ``kafka_options`` (security). Starts unknown-as-healthy until the first probe
    finishes (:meth:`start` runs that first probe before it returns).
    """

    def __init__(
        self,
        bootstrap: list[str] | None = None,
        *,
        kafka_options: dict[str, Any] | None = None,
        interval_s: float = 2.0,
        timeout_s: float = 2.0,
        probe: Callable[[], str | None] | None = None,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        if probe is None:
            if not bootstrap:
                raise ValueError("BrokerHealth needs bootstrap servers or a probe")
            probe = _metadata_probe(bootstrap, dict(kafka_options or {}), timeout_s)
        self._probe = probe
        self._on_change = on_change
        self.interval_s = interval_s
        self._reason: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def from_settings(cls, settings: Any, *, on_change: Callable[[bool], None] | None = None) -> BrokerHealth:
        """A probe of ``settings.bootstrap_servers`` with the settings' security options (not started)."""
        options = settings.kafka_options()
        bootstrap = options.pop("bootstrap_servers")
        return cls(
            bootstrap, kafka_options=options, interval_s=settings.connector_health_interval_s, on_change=on_change
        )

    @property
    def ok(self) -> bool:
        with self._lock:
            return self._reason is None

    @property
    def reason(self) -> str:
        with self._lock:
            return self._reason or ""

    def report_failure(self, reason: str) -> None:
        """A publish failed: unhealthy until the next probe succeeds."""
        with self._lock:
            self._reason = reason[:200]

    def check(self) -> bool:
        """Probe once now; returns :attr:`ok`."""
        try:
            reason = self._probe()
        except Exception as exc:  # a probe error is a finding about the broker, never a crash of the listener
            reason = f"broker probe failed: {type(exc).__name__}"
        with self._lock:
            changed = (reason is None) != (self._reason is None)
            self._reason = reason
        if self._on_change is not None:
            self._on_change(reason is None)
        if changed:
            (log.info if reason is None else log.error)("broker_health", ok=reason is None, reason=reason or "")
        return reason is None

    def start(self) -> BrokerHealth:
        self.check()
        self._thread = threading.Thread(target=self._run, name="broker-health", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=1.0)  # a daemon thread: a probe in flight is abandoned
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.check()


def guarded_call(fn: Callable[..., Any], *args: Any, health: Health, timeout_s: float) -> None:
    """Run ``fn(*args)`` (a blocking sink call) and wait for it while the broker is healthy.

    :raises DeliveryError: at once when ``health`` is not ok; when ``fn`` raises it (health is told); when the
        probe sees the broker go down meanwhile; or after ``timeout_s``.
    """
    if not health.ok:
        raise DeliveryError(health.reason or "broker unavailable", channel="kafka")
    future = _POOL.submit(fn, *args)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            future.result(timeout=0.2)
            return
        except concurrent.futures.TimeoutError:
            pass
        except DeliveryError as exc:
            health.report_failure(exc.message)
            raise
        if not health.ok or time.monotonic() >= deadline:
            reason = health.reason if not health.ok else f"broker did not acknowledge within {timeout_s:g}s"
            future.add_done_callback(_log_late)
            raise DeliveryError(reason, channel="kafka")


async def guarded_call_async(fn: Callable[..., Any], *args: Any, health: Health, timeout_s: float) -> None:
    """:func:`guarded_call` for a coroutine: the wait is cancellable (a server shutting down cancels it)."""
    if not health.ok:
        raise DeliveryError(health.reason or "broker unavailable", channel="kafka")
    future = _POOL.submit(fn, *args)
    wrapped = asyncio.wrap_future(future)
    deadline = time.monotonic() + timeout_s
    while True:
        done, _ = await asyncio.wait({wrapped}, timeout=0.2)
        if done:
            try:
                wrapped.result()
                return
            except DeliveryError as exc:
                health.report_failure(exc.message)
                raise
        if not health.ok or time.monotonic() >= deadline:
            reason = health.reason if not health.ok else f"broker did not acknowledge within {timeout_s:g}s"
            future.add_done_callback(_log_late)
            wrapped.add_done_callback(lambda f: f.cancelled() or f.exception())
            raise DeliveryError(reason, channel="kafka")


def _log_late(future: concurrent.futures.Future[Any]) -> None:
    exc = future.exception()
    log.warning("sink_call_finished_late", ok=exc is None, error=type(exc).__name__ if exc else "")


async def start_health_http(
    host: str, port: int, status: Callable[[], str | None], *, metrics_text: Callable[[], bytes] | None = None
) -> asyncio.Server:
    """A minimal HTTP/1.0 endpoint: ``GET /healthz`` -> 200 ``ok`` or 503 with the reason ``status()`` returns;
    ``GET /metrics`` -> ``metrics_text()`` (Prometheus text) when given; anything else 404.

    For listeners that are not HTTP servers themselves (MLLP). Each request is answered and the connection closed;
    a request line that does not arrive within 5 s is dropped.
    """

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 5.0)
            parts = line.decode("latin-1").split()
            path = parts[1].split("?")[0] if len(parts) >= 2 else ""
            ctype = "text/plain; charset=utf-8"
            if path == "/healthz":
                reason = status()
                code, body = (200, b"ok\n") if reason is None else (503, f"unavailable: {reason}\n".encode())
            elif path == "/metrics" and metrics_text is not None:
                code, body, ctype = 200, metrics_text(), "text/plain; version=0.0.4; charset=utf-8"
            else:
                code, body = 404, b"not found\n"
            phrase = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[code]
            head = f"HTTP/1.0 {code} {phrase}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
            writer.write(head.encode() + b"Connection: close\r\n\r\n" + body)
            await asyncio.wait_for(writer.drain(), 5.0)
        except (TimeoutError, ConnectionError, UnicodeDecodeError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1.0)

    return await asyncio.start_server(handle, host, port)
