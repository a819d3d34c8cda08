"""``screener run`` (the screening service) and ``screener demo`` (everything on localhost, one command)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from screener.settings import Settings, load_settings

COMMANDS: list[click.Command] = []


def _start_metrics_server(settings: Settings, registry: Any) -> tuple[Any, str]:
    """Serve /metrics on metrics_host:metrics_port (port 0: any free port). Returns (server, url)."""
    from prometheus_client import start_http_server

    started = start_http_server(settings.metrics_port, addr=settings.metrics_host, registry=registry)
    server = started[0] if isinstance(started, tuple) else None
    port = server.server_address[1] if server is not None else settings.metrics_port
    return server, f"http://{settings.metrics_host}:{port}/metrics"


def _force_exit(timeout_s: float) -> None:
    from screener.logging import get_logger

    get_logger("screener.service").error("stop_timeout", seconds=timeout_s)
    os._exit(2)


def _stop_on_signals(
    stop: threading.Event, timeout_s: float | None = None, on_timeout: Callable[[float], None] = _force_exit
) -> None:
    """SIGINT/SIGTERM set ``stop``; with ``timeout_s``, a process still running that long after the first signal
    is ended by ``on_timeout`` (default: logged, exit status 2), so a stop never hangs on an unreachable broker."""
    watchdog: list[threading.Timer] = []

    def handler(signum: int, _frame: Any) -> None:
        stop.set()
        if timeout_s is not None and not watchdog:
            timer = threading.Timer(timeout_s, on_timeout, args=(timeout_s,))
            timer.daemon = True
            watchdog.append(timer)
            timer.start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(sig, handler)


@click.command("run")
@click.option(
    "--config",
    "config_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    envvar="SCREENER_CONFIG",
    help="YAML/TOML settings file (env: SCREENER_CONFIG).",
)
def run(config_file: Path | None) -> None:
    """Run the screening service: consume ehr.events, screen, record matches (settings from SCREENER_*)."""
    from screener.alerts.store import SqlStore
    from screener.bus import ensure_service_topics
    from screener.engine import Engine
    from screener.errors import ScreenerError
    from screener.logging import configure_logging, get_logger
    from screener.metrics import Metrics

    try:
        settings = load_settings(config_file)
    except ScreenerError as exc:
        raise click.ClickException(str(exc)) from exc
    configure_logging(settings.log_level, settings.log_format)
    log = get_logger("screener.service")
    if not settings.bootstrap_servers:
        raise click.ClickException(
            "bootstrap_servers (SCREENER_BOOTSTRAP_SERVERS) is required; `screener demo` starts an embedded broker"
        )
    stop = threading.Event()
    _stop_on_signals(stop, timeout_s=settings.stop_timeout_s)  # from here on a stop is bounded, even while starting
    ensure_service_topics(settings)
    metrics = Metrics()
    store = SqlStore.from_settings(settings, metrics=metrics)
    from screener.engine.health import serve_health

    engine = Engine(settings, store, metrics=metrics)
    server, base_url = serve_health(engine, metrics.registry, settings.metrics_host, settings.metrics_port)
    log.info(
        "service_started",
        metrics_url=f"{base_url}/metrics",
        health_url=f"{base_url}/healthz",
        topic=settings.events_topic,
        group=settings.group_id,
    )
    try:
        engine.run(stop)
    finally:
        if server is not None:
            server.shutdown()
        with contextlib.suppress(Exception):
            store.close()
        log.info("service_stopped")


COMMANDS.append(run)


class _Feed(threading.Thread):
    """Publishes the synthetic population to ehr.events at about ``rate`` events/s (keyed by patient id)."""

    def __init__(self, settings: Settings, patients: int, rate: float, seed: int = 7, start_index: int = 0) -> None:
        super().__init__(name="synthetic-feed", daemon=True)
        self.settings = settings
        self.patients = patients
        self.rate = rate
        self.seed = seed
        self.start_index = start_index
        self.stop = threading.Event()
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported by the demo, never silent
            self.error = exc

    def _run(self) -> None:
        from connectors.synthetic.population import generate
        from screener.bus import make_producer
        from screener.events import dump_event

        producer = make_producer(self.settings, linger_ms=20)
        started = time.monotonic()
        try:
            for patient_events in generate(
                self.patients, seed=self.seed, now=datetime.now(UTC), start_index=self.start_index
            ):
                if self.stop.is_set():
                    break
                for ev in patient_events:
                    producer.send(self.settings.events_topic, key=ev.patient_id.encode(), value=dump_event(ev))
                    self.published += 1
                ahead = self.published / self.rate - (time.monotonic() - started)
                if ahead > 0 and self.stop.wait(ahead):
                    break
        finally:
            producer.flush(timeout=10)
            producer.close(timeout=10)


@click.command("demo")
@click.option(
    "--for",
    "duration",
    type=float,
    default=None,
    metavar="SECONDS",
    help="Stop by itself after SECONDS (default: run until Ctrl-C).",
)
@click.option(
    "--workdir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("screener-demo"),
    show_default=True,
    help="Where the SQLite database, state snapshots and logs go.",
)
@click.option(
    "--patients", type=click.IntRange(min=1), default=2000, show_default=True, help="Synthetic patients to stream."
)
@click.option(
    "--rate", type=click.FloatRange(min=1), default=500.0, show_default=True, help="Synthetic events per second."
)
@click.option(
    "--rules",
    "rules_dir",
    type=click.Path(path_type=Path, file_okay=False),
    default=Path("rules"),
    show_default=True,
    help="Study rule files.",
)
def demo(duration: float | None, workdir: Path, patients: int, rate: float, rules_dir: Path) -> None:
    """Everything on localhost: embedded broker, synthetic feed, engine, worklist web app, /metrics."""
    from prometheus_client import CollectorRegistry

    from screener.alerts.store import SqlStore
    from screener.bus import EmbeddedBroker, ensure_service_topics, free_port
    from screener.engine import Engine
    from screener.logging import configure_logging
    from screener.metrics import Metrics

    if not rules_dir.is_dir():
        raise click.ClickException(
            f"no rules folder at {rules_dir.resolve()}: run from the repository root or pass --rules DIR"
        )
    workdir.mkdir(parents=True, exist_ok=True)
    # The embedded broker keeps topics in memory, so state snapshots from an earlier run describe a log that no
    # longer exists; the worklist (SQLite) is kept, and each run streams new synthetic patients.
    shutil.rmtree(workdir / "state", ignore_errors=True)
    log_file = workdir / "screener.log"
    _log_to_file(log_file)
    configure_logging("INFO", "json")
    broker = EmbeddedBroker(log_path=workdir / "broker.log").start()
    stop = threading.Event()
    _stop_on_signals(stop)
    cleanup: list[Any] = [broker.stop]
    try:
        settings = load_settings(
            bootstrap_servers=broker.bootstrap,
            rules_dir=rules_dir,
            state_dir=workdir / "state",
            database_url=f"sqlite:///{(workdir / 'screener.db').resolve()}",
            metrics_port=_port_or_free(9108, free_port),
            web_port=_port_or_free(8080, free_port),
            rules_poll_s=2.0,
            rescreen_interval_s=300.0,
            snapshot_interval_s=30.0,
            group_id="screener-demo",
        )
        ensure_service_topics(settings)
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        store = SqlStore.from_settings(settings, metrics=metrics)
        cleanup.append(store.close)
        server, metrics_url = _start_metrics_server(settings, registry)
        if server is not None:
            cleanup.append(server.shutdown)
        web_url, login = _start_web(settings, store, registry, cleanup)
        engine = Engine(settings, store, metrics=metrics)
        engine_stop = threading.Event()
        engine_thread = threading.Thread(target=engine.run, args=(engine_stop,), name="engine", daemon=True)
        engine_thread.start()
        cleanup.append(lambda: _stop_thread(engine_stop, engine_thread, 30))
        feed = _Feed(settings, patients, rate, start_index=_next_run(workdir) * patients)
        feed.start()
        cleanup.append(lambda: _stop_thread(feed.stop, feed, 15))

        click.echo("screener demo is running")
        click.echo(f"  worklist     {web_url}")
        if login:
            click.echo(f"  demo login   {login}")
        click.echo(f"  metrics      {metrics_url}")
        click.echo(
            f"  kafka        {broker.bootstrap} (topics {settings.events_topic}, {settings.dlq_topic}, "
            f"{settings.matches_topic})"
        )
        click.echo(f"  rules        {rules_dir.resolve()} (edit a file: it is reloaded and screened again)")
        click.echo(f"  workdir      {workdir.resolve()} (logs: {log_file})")
        click.echo("Press Ctrl-C to stop." if duration is None else f"Stopping by itself after {duration:g} s.")
        deadline = None if duration is None else time.monotonic() + duration
        while not stop.is_set():
            if deadline is not None and time.monotonic() >= deadline:
                break
            if not engine_thread.is_alive():
                raise click.ClickException(f"the engine stopped unexpectedly; see {log_file}")
            if feed.error is not None:
                raise click.ClickException(f"the synthetic feed failed: {feed.error!r}")
            stop.wait(0.5)
        click.echo(
            f"events published {feed.published}, batches {engine.batches}, new matches {engine.matches_recorded}, "
            f"studies loaded {len(engine.studies)} (the worklist in {workdir} keeps earlier runs' matches)"
        )
    finally:
        for step in reversed(cleanup):
            with contextlib.suppress(Exception):
                step()
        click.echo("stopped")


def _start_web(settings: Settings, store: Any, registry: Any, cleanup: list[Any]) -> tuple[str, str | None]:
    """Start the worklist web app when the web package provides ``serve``; returns (url, demo login)."""
    try:
        from screener.web import serve
    except ImportError:
        return "(the worklist web app is not available in this build)", None
    handle = serve(settings, store, registry)
    cleanup.append(handle.stop)
    login = None
    if hasattr(store, "add_user"):
        import secrets

        password = secrets.token_urlsafe(9)
        store.add_user("demo", password, "admin")  # sees every team's worklist; reset on every demo start
        login = f"user demo, password {password}"
    return str(handle.url), login


def _stop_thread(flag: threading.Event, thread: threading.Thread, timeout: float) -> None:
    flag.set()
    thread.join(timeout=timeout)


def _next_run(workdir: Path) -> int:
    """0 on the first demo run in ``workdir``, then 1, 2, ... (so each run streams different patients)."""
    counter = workdir / "demo-runs"
    try:
        n = int(counter.read_text().strip())
    except (OSError, ValueError):
        n = 0
    counter.write_text(str(n + 1))
    return n


def _port_or_free(preferred: int, free_port: Any) -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return int(free_port())
    return preferred


def _log_to_file(path: Path) -> None:
    """Send structlog's stderr output to a file so the terminal shows only the URLs and the summary."""
    import sys

    sys.stderr = open(path, "a", buffering=1)  # noqa: SIM115 - lives as long as the process


COMMANDS.append(demo)
