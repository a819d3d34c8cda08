"""Run the web app with uvicorn on a background thread (``screener web``, ``screener demo``, tests)."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import uvicorn

from screener.errors import ConfigError
from screener.logging import get_logger
from screener.web.app import create_app, refresh_store_metrics

if TYPE_CHECKING:
    from fastapi import FastAPI
    from prometheus_client import CollectorRegistry

    from screener.alerts.outbox import OutboxSender
    from screener.alerts.store import SqlStore
    from screener.settings import Settings

__all__ = ["WebHandle", "serve"]

log = get_logger("screener.web.server")


@dataclass
class WebHandle:
    """A running server. ``url`` is its base URL (the real port when ``web_port`` was 0)."""

    url: str
    server: uvicorn.Server
    thread: threading.Thread
    sender: OutboxSender | None = None
    app: FastAPI | None = field(default=None, repr=False)
    refresher: _Refresher | None = None

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the outbox sender (if any) and the server; returns once the thread ended (or the timeout)."""
        for helper in (self.sender, self.refresher):
            if helper is not None:
                helper.stop()
        self.server.should_exit = True
        self.thread.join(timeout_s)

    def __enter__(self) -> WebHandle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(
    settings: Settings,
    store: SqlStore,
    metrics_registry: CollectorRegistry | None = None,
    *,
    run_outbox: bool = True,
    startup_timeout_s: float = 20.0,
) -> WebHandle:
    """Start the worklist on ``settings.web_host:web_port`` (port 0: a free port) in a daemon thread.

    When ``run_outbox`` and a webhook URL or SMTP host is configured, an :class:`OutboxSender` runs beside it
    every ``settings.outbox_interval_s`` seconds (metrics from ``store.metrics``).

    :raises ConfigError: the server did not start (port in use, bad host) within ``startup_timeout_s``.
    """
    app = create_app(settings, store, registry=metrics_registry)
    config = uvicorn.Config(
        app,
        host=settings.web_host,
        port=settings.web_port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        server_header=False,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="screener-web", daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise ConfigError(
                f"web server did not start on {settings.web_host}:{settings.web_port}", setting="web_port"
            )
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    host = settings.web_host if settings.web_host not in ("0.0.0.0", "::") else "127.0.0.1"
    url = f"http://{host}:{port}"
    sender = None
    if run_outbox and (settings.webhook_url or settings.smtp_host):
        from screener.alerts.outbox import OutboxSender

        sender = OutboxSender.from_settings(settings, store).start(getattr(settings, "outbox_interval_s", 10.0))
    refresher = (
        _Refresher(store, interval_s=30.0, min_count=_min_count(settings)).start()
        if getattr(store, "metrics", None) is not None
        else None
    )
    log.info("web_started", url=url, outbox=sender is not None)
    return WebHandle(url=url, server=server, thread=thread, sender=sender, app=app, refresher=refresher)


def _min_count(settings: Settings) -> int:
    return int(getattr(settings, "metrics_min_count", 8))


class _Refresher:
    """Refresh the store-derived gauges on a timer, for a Prometheus that scrapes another /metrics endpoint."""

    def __init__(self, store: SqlStore, interval_s: float, min_count: int = 8) -> None:
        self.store, self.interval_s, self.min_count = store, interval_s, min_count
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="screener-store-metrics", daemon=True)

    def start(self) -> _Refresher:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            refresh_store_metrics(self.store, min_count=self.min_count)
            self._stop.wait(self.interval_s)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
