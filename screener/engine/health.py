"""Honest health: whether the engine reaches its broker and holds its consumer group, and the HTTP endpoint that
says so (``/healthz``: 200 with ``{"status": "ok"}``, or 503 with the reason) beside ``/metrics``.

The check runs on the consumer's thread at every loop iteration and never blocks: it reads the consumer's
connection state (a consumer may offer ``health() -> (ok, reason)``, as :class:`screener.testing.InMemoryConsumer`
does; for kafka-python's ``KafkaConsumer`` its client's connections and group coordinator are read). A problem is
reported once it has lasted ``health_broker_timeout_s`` (a reconnect is not an outage). While it lasts, consumer lag
is reported as unknown (NaN), never as 0.
"""

from __future__ import annotations

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from screener.engine._base import EngineBase, log

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

__all__ = ["HealthRole", "consumer_health", "serve_health"]


def consumer_health(consumer: object) -> tuple[bool, str | None]:
    """``(ok, reason)`` of a consumer's link to its broker and group, without any network call. The consumer's
    ``health()`` is used when it has one, else kafka-python's private client state is read when present."""
    probe = getattr(consumer, "health", None)
    if callable(probe):
        ok, reason = probe()
        return bool(ok), reason
    client = getattr(consumer, "_client", None)
    if client is None:
        return True, None
    conns = list(getattr(client, "_conns", {}).values())
    if not any(_connected(c) for c in conns):
        return False, "broker unreachable: no connection to any broker"
    coordinator = getattr(consumer, "_coordinator", None)
    connected = getattr(coordinator, "connected", None)
    if callable(connected) and getattr(coordinator, "group_id", None) and not connected():
        return False, "consumer group lost: no connection to the group coordinator"
    return True, None


def _connected(conn: Any) -> bool:
    """Whether a kafka-python ``BrokerConnection`` (untyped: kafka-python ships no types) is up."""
    try:
        return bool(conn.connected())
    except Exception:
        return False


class HealthRole(EngineBase):
    """Tracks the consumer's health between loop iterations; :meth:`health` is safe from any thread."""

    _unhealthy_since: float | None = None
    _health_state: tuple[bool, str | None] = (True, None)

    def _check_health(self) -> None:
        """On the consumer's thread, once per loop iteration."""
        ok, reason = consumer_health(self._consumer)
        now = self.clock.monotonic()
        if ok:
            recovered = not self._health_state[0]
            self._unhealthy_since, self._health_state = None, (True, None)
            if recovered:
                log.info("engine_healthy_again")
                self._update_gauges()  # lag is known again
        else:
            if self._unhealthy_since is None:
                self._unhealthy_since = now
            if now - self._unhealthy_since >= self.settings.health_broker_timeout_s:
                if self._health_state[0]:
                    log.warning("engine_unhealthy", reason=reason)
                self._health_state = (False, reason)
                for p in list(self._parts):
                    self.metrics.consumer_lag.labels(self.settings.events_topic, str(p)).set(math.nan)
        self.metrics.health.set(1 if self._health_state[0] else 0)

    def health(self) -> tuple[bool, dict[str, object]]:
        """``(healthy, document)``: the document says ``status`` (``ok`` / ``unavailable``), the ``reason`` and
        the partitions held."""
        ok, reason = self._health_state
        doc: dict[str, object] = {"status": "ok" if ok else "unavailable", "partitions": sorted(self._parts)}
        if not ok:
            doc["reason"] = reason
        return ok, doc


class _Handler(BaseHTTPRequestHandler):
    engine: HealthRole
    registry: CollectorRegistry

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            ok, doc = self.engine.health()
            self._send(200 if ok else 503, "application/json", json.dumps(doc).encode())
        elif path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

            self._send(200, CONTENT_TYPE_LATEST, generate_latest(self.registry))
        else:
            self._send(404, "text/plain", b"not found\n")

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def serve_health(
    engine: HealthRole, registry: CollectorRegistry, host: str, port: int
) -> tuple[ThreadingHTTPServer, str]:
    """Serve ``/healthz`` and ``/metrics`` on ``host:port`` (0: any free port) from a daemon thread. Returns the
    server (``shutdown()`` it) and its base URL."""
    handler = type("Handler", (_Handler,), {"engine": engine, "registry": registry})
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="screener-health", daemon=True).start()
    return server, f"http://{host}:{server.server_address[1]}"
