"""HL7 v2 over MLLP: ``screener connect hl7v2 --listen HOST:PORT``.

See :mod:`connectors.hl7v2.parse` for the message types and fields read (timestamps without an offset are
Europe/London time) and :mod:`connectors.hl7v2.server` for the ACK contract (AA only after Kafka acknowledged).
"""

from __future__ import annotations

from pathlib import Path

import click

from screener.connector import SimpleConnector, SinkFactory

from .mllp import MLLPClient, ServerThread, frame
from .parse import CodeMap, HL7Reject, ParsedMessage, load_code_map, parse_message, split_batch
from .server import MLLPLimits, MLLPServer, process_block

__all__ = [
    "CodeMap",
    "HL7Reject",
    "MLLPClient",
    "MLLPLimits",
    "MLLPServer",
    "ParsedMessage",
    "ServerThread",
    "close_sink",
    "connector",
    "frame",
    "load_code_map",
    "parse_message",
    "process_block",
    "split_batch",
]


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (or ``:PORT``) -> (host, port)."""
    host, _, port = value.rpartition(":")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise click.BadParameter(f"expected HOST:PORT, got {value!r}")
    return host or "0.0.0.0", int(port)


def close_sink(sink: object) -> None:
    """Close the sink within a bounded time (a producer facing a dead broker gives up after 2 s)."""
    from screener.sources.kafka import KafkaSink

    if isinstance(sink, KafkaSink):
        sink.close(timeout_s=2.0)
    elif (close := getattr(sink, "close", None)) is not None:
        close()


def _command() -> click.Command:
    from screener.connector import connector_options

    @click.command("hl7v2")
    @click.option("--listen", default="127.0.0.1:2575", show_default=True, help="HOST:PORT to accept MLLP on.")
    @click.option(
        "--code-map",
        type=click.Path(exists=True, dir_okay=False, path_type=Path),
        default=None,
        envvar="SCREENER_HL7_CODE_MAP",
        help="OBX local-code mapping file (YAML or CSV).",
    )
    @connector_options
    def hl7v2(listen: str, code_map: Path | None, sink_factory: SinkFactory) -> None:
        """Receive HL7 v2 (ADT, ORU^R01) over MLLP; ACK AA only after Kafka acknowledged the events."""
        from screener.metrics import Metrics
        from screener.sources.health import AlwaysHealthy, BrokerHealth

        from .service import run_listener

        host, port = parse_listen(listen)
        settings = sink_factory.settings
        health_at = parse_listen(settings.mllp_health_listen) if settings.mllp_health_listen else None
        sink = sink_factory("hl7v2")
        metrics = Metrics()
        health = (
            AlwaysHealthy()
            if sink_factory.dry_run
            else BrokerHealth.from_settings(settings, on_change=metrics.broker_up.set).start()
        )
        server = MLLPServer(
            sink,
            host=host,
            port=port,
            code_map=load_code_map(code_map),
            limits=MLLPLimits.from_settings(settings),
            health=health,
            publish_timeout_s=settings.connector_publish_timeout_s,
            metrics=metrics,
        )
        click.echo(f"hl7v2: listening for MLLP on {host}:{port}", err=True)
        try:
            run_listener(server, health=health, health_listen=health_at, grace_s=3.0)
        finally:
            if isinstance(health, BrokerHealth):
                health.stop()
            close_sink(sink)
        click.echo("hl7v2: stopped", err=True)

    return hl7v2


connector = SimpleConnector("hl7v2", "HL7 v2 ADT and ORU^R01 over MLLP (asyncio server)", _command)
