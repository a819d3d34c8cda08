"""The Kafka publisher every connector shares: ``ehr.events`` keyed by patient id, and ``ehr.events.dlq``.

Contract:

- events go to ``events_topic`` with key = ``patient_id`` (UTF-8), value = :func:`screener.events.dump_event`,
  so one patient's events stay in one partition, in order;
- the producer is idempotent (``enable_idempotence=True``) with ``acks=all``; :meth:`KafkaSink.publish`
  returns only when the broker acknowledged every record and raises :class:`~screener.errors.DeliveryError`
  otherwise (after the producer's own retries and ``attempts`` whole-batch attempts);
- a dead letter is one JSON object on ``dlq_topic``, keyed by the source name::

      {"source": "hl7v2", "position": "127.0.0.1:50122 msg CNTRL-3456", "reason": "...",
       "received_at": "2026-05-01T09:30:00+00:00",
       "payload": "<the original text>", "payload_encoding": "utf-8"}

  ``payload_encoding`` is ``"base64"`` when the original bytes are not valid UTF-8.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from screener.errors import DeliveryError
from screener.events import Event, dump_event
from screener.logging import get_logger
from screener.metrics import Metrics

if TYPE_CHECKING:
    from screener._kafka import Producer, SendFuture
    from screener.settings import Settings

__all__ = ["KafkaSink", "dead_letter_record", "sink_from_settings"]

log = get_logger(__name__)


def dead_letter_record(payload: bytes | str, source: str, position: str, reason: str) -> bytes:
    """The JSON value of one dead letter (see the module docstring for its shape)."""
    if isinstance(payload, bytes):
        try:
            text, encoding = payload.decode("utf-8"), "utf-8"
        except UnicodeDecodeError:
            text, encoding = base64.b64encode(payload).decode("ascii"), "base64"
    else:
        text, encoding = payload, "utf-8"
    record = {
        "source": source,
        "position": position,
        "reason": reason,
        "received_at": datetime.now(UTC).isoformat(),
        "payload": text,
        "payload_encoding": encoding,
    }
    return json.dumps(record, ensure_ascii=False).encode()


class KafkaSink:
    """An :class:`~screener.connector.base.EventSink` backed by one kafka-python producer.

    Thread-safe (kafka-python producers are). ``kafka_options`` go to ``KafkaProducer`` (security, ...);
    ``producer_options`` override the throughput defaults (``linger_ms``, ``batch_size``, ...).

    ``idempotent=False`` is for the embedded tansu broker only: tansu 0.6 with memory storage answers an
    idempotent produce (one that carries a producer id) with UnknownError. Retried batches may then duplicate
    records; consumers are safe because ``event_id`` is the idempotency key. ``Settings.producer_idempotence``
    (``SCREENER_PRODUCER_IDEMPOTENCE``) sets it from the command line.
    """

    def __init__(
        self,
        bootstrap: str | list[str],
        *,
        connector: str,
        events_topic: str = "ehr.events",
        dlq_topic: str = "ehr.events.dlq",
        metrics: Metrics | None = None,
        timeout_s: float = 30.0,
        attempts: int = 3,
        idempotent: bool = True,
        kafka_options: Mapping[str, object] | None = None,
        producer_options: Mapping[str, object] | None = None,
    ) -> None:
        from kafka import KafkaProducer

        self.connector = connector
        self.events_topic = events_topic
        self.dlq_topic = dlq_topic
        self.metrics = metrics
        self.timeout_s = timeout_s
        self.attempts = max(1, attempts)
        options: dict[str, object] = {
            "bootstrap_servers": bootstrap,
            "acks": "all",
            "enable_idempotence": idempotent,
            "retries": 5,
            # fail within seconds when the broker is gone, so an MLLP sender gets AE rather than a hung socket
            "max_block_ms": 10_000,
            "linger_ms": 5,
            "batch_size": 256 * 1024,
            "max_request_size": 8 * 1024 * 1024,
            "compression_type": None,
            # kafka-python requires 1 in flight for idempotence; it also keeps per-partition order on retries.
            "max_in_flight_requests_per_connection": 1,
        }
        options.update(kafka_options or {})
        options.update(producer_options or {})
        try:
            self._producer: Producer = KafkaProducer(**options)
        except Exception as exc:
            raise DeliveryError(f"cannot connect a producer to {bootstrap}: {exc}", channel="kafka") from exc

    # --- EventSink ---------------------------------------------------------------------------------------
    def publish(self, events: Sequence[Event]) -> None:
        """Send the events and wait for the broker's acknowledgement of all of them.

        :raises DeliveryError: when any record is not acknowledged after every attempt.
        """
        if not events:
            return
        self.publish_raw([(e.patient_id.encode(), dump_event(e)) for e in events])

    def dead_letter(self, payload: bytes | str, source: str, position: str, reason: str) -> None:
        """Write one dead letter and wait for its acknowledgement. Counts ``screener_dead_letters_total``."""
        value = dead_letter_record(payload, source, position, reason)
        self._send_all(self.dlq_topic, [(source.encode(), value)])
        if self.metrics is not None:
            self.metrics.dead_letters.labels(stage=source, reason=_reason_label(reason)).inc()
        log.info("dead_letter", source=source, reason=_reason_label(reason))

    # --- bulk --------------------------------------------------------------------------------------------
    def publish_raw(self, records: Iterable[tuple[bytes, bytes]]) -> int:
        """Send pre-serialised ``(key, value)`` events to the events topic; wait for every ack.

        Used by bulk loaders that build the JSON themselves (OMOP backfill). Returns the record count.
        """
        batch = list(records)
        self._send_all(self.events_topic, batch)
        if self.metrics is not None:
            self.metrics.events_published.labels(connector=self.connector).inc(len(batch))
        return len(batch)

    def send_nowait(self, key: bytes, value: bytes) -> SendFuture:
        """Queue one event without waiting; returns the kafka-python future. Call :meth:`flush` later."""
        return self._producer.send(self.events_topic, key=key, value=value)

    def flush(self, futures: Sequence[SendFuture] = ()) -> None:
        """Flush the producer and check the given futures.

        :raises DeliveryError: naming the first failure.
        """
        self._producer.flush(timeout=self.timeout_s)
        for fut in futures:
            try:
                fut.get(timeout=self.timeout_s)
            except Exception as exc:
                raise DeliveryError(f"broker did not acknowledge a record: {exc}", channel="kafka") from exc

    def _send_all(self, topic: str, records: Sequence[tuple[bytes, bytes]]) -> None:
        pending = list(records)
        for attempt in range(1, self.attempts + 1):
            futures: list[tuple[tuple[bytes, bytes], SendFuture | None]] = []
            last: Exception | None = None
            try:
                for rec in pending:
                    futures.append((rec, self._producer.send(topic, key=rec[0], value=rec[1])))
            except Exception as exc:  # send() itself raises when metadata or buffer space is unavailable
                last = exc
                futures.extend((rec, None) for rec in pending[len(futures) :])
            # flush() sends at once, ignoring linger_ms (measured faster than waiting on the futures alone,
            # even though it also waits for other threads' records)
            try:
                self._producer.flush(timeout=self.timeout_s)
            except Exception as exc:
                last = exc
            failed: list[tuple[bytes, bytes]] = []
            for rec, fut in futures:
                if fut is None:
                    failed.append(rec)
                    continue
                try:
                    fut.get(timeout=self.timeout_s)
                except Exception as exc:
                    failed.append(rec)
                    last = exc
            if not failed:
                return
            log.warning("publish_retry", topic=topic, failed=len(failed), attempt=attempt, error=str(last))
            pending = failed
            if attempt < self.attempts:
                time.sleep(0.2 * attempt)
        if self.metrics is not None:
            self.metrics.delivery_failures.labels(channel="kafka").inc()
        raise DeliveryError(
            f"{len(pending)} record(s) to {topic} not acknowledged: {last}", channel="kafka", attempt=self.attempts
        )

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush and close the producer."""
        self._producer.close(timeout=timeout_s)

    def __enter__(self) -> KafkaSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _reason_label(reason: str) -> str:
    """A bounded metric label from a reason: the text before the first colon, at most 40 characters."""
    return reason.split(":", 1)[0].strip()[:40] or "unknown"


def sink_from_settings(
    settings: Settings,
    connector: str,
    *,
    metrics: Metrics | None = None,
    producer_options: Mapping[str, object] | None = None,
) -> KafkaSink:
    """A :class:`KafkaSink` for ``settings``; creates the topics.

    :raises ConnectorError: when no bootstrap servers are configured.
    :raises DeliveryError: when the broker cannot be reached.
    """
    from screener.bus import ensure_topics
    from screener.errors import ConnectorError

    if not settings.bootstrap_servers:
        raise ConnectorError(
            "no Kafka broker configured: pass --bootstrap HOST:PORT or set SCREENER_BOOTSTRAP_SERVERS",
            connector=connector,
        )
    options = settings.kafka_options()
    bootstrap = options.pop("bootstrap_servers")
    try:
        ensure_topics(bootstrap, {settings.events_topic: settings.topic_partitions, settings.dlq_topic: 1}, **options)
    except Exception as exc:
        raise DeliveryError(f"cannot create topics on {bootstrap}: {exc}", channel="kafka") from exc
    return KafkaSink(
        bootstrap,
        connector=connector,
        events_topic=settings.events_topic,
        dlq_topic=settings.dlq_topic,
        metrics=metrics,
        idempotent=settings.producer_idempotence,
        kafka_options=options,
        producer_options=producer_options,
    )
