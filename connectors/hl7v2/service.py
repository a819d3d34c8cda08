"""Running the MLLP listener as a process: SIGTERM/SIGINT handling, the broker probe and ``/healthz``.

``run_listener`` serves until SIGTERM or SIGINT, then stops accepting, gives blocks in flight up to
``grace_s`` seconds to be answered, and returns (the caller closes the sink). ``GET /healthz`` on
``health_listen`` answers 200 while the listener accepts and the broker answers its probe, else 503 with the
reason; ``GET /metrics`` there serves the process's Prometheus metrics.
"""

from __future__ import annotations

import asyncio
import signal

from screener.logging import get_logger
from screener.sources.health import Health, start_health_http

from .server import MLLPServer

__all__ = ["run_listener"]

log = get_logger(__name__)


def run_listener(
    server: MLLPServer,
    *,
    health: Health,
    health_listen: tuple[str, int] | None = None,
    grace_s: float = 5.0,
) -> None:
    """Serve ``server`` until SIGTERM/SIGINT; returns within about ``grace_s`` seconds of the signal."""
    asyncio.run(_serve(server, health=health, health_listen=health_listen, grace_s=grace_s))


async def _serve(server: MLLPServer, *, health: Health, health_listen: tuple[str, int] | None, grace_s: float) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    http = None
    if health_listen is not None:

        def status() -> str | None:
            if not server.listening:
                return "MLLP listener not accepting connections"
            return None if health.ok else health.reason or "broker unavailable"

        def metrics_text() -> bytes:
            from prometheus_client import REGISTRY, generate_latest

            registry = server.metrics.registry if server.metrics is not None else REGISTRY
            return generate_latest(registry)

        http = await start_health_http(*health_listen, status, metrics_text=metrics_text)
        log.info("health_listening", host=health_listen[0], port=http.sockets[0].getsockname()[1])
    try:
        await stop.wait()
    finally:
        log.info("mllp_stopping", connections=server.connections)
        if http is not None:
            http.close()
        await server.stop(grace_s=grace_s)
