"""One typed, frozen settings object. Every option has a ``SCREENER_*`` environment variable.

Precedence: explicit keyword arguments > environment variables > the optional TOML/YAML config file named by
``SCREENER_CONFIG`` > defaults. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypedDict

import yaml
from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from screener.errors import ConfigError

__all__ = ["DEFAULT_SECRET_KEY", "KafkaOptions", "Settings", "load_settings"]

#: The secret key a fresh install has; accepted only with ``SCREENER_DEMO=true`` (:meth:`Settings.check_secrets`).
DEFAULT_SECRET_KEY = "change-me-in-production"


class KafkaOptions(TypedDict, total=False):
    """The kafka-python client options :meth:`Settings.kafka_options` gives (connection and security only)."""

    bootstrap_servers: list[str]
    security_protocol: str
    sasl_mechanism: str
    sasl_plain_username: str | None
    sasl_plain_password: str | None
    ssl_cafile: str
    ssl_certfile: str
    ssl_keyfile: str
    ssl_password: str
    ssl_check_hostname: bool


class Settings(BaseSettings):
    """All of screener's options. Construct with :func:`load_settings` to get a ``ConfigError`` on bad input."""

    model_config = SettingsConfigDict(env_prefix="SCREENER_", frozen=True, extra="forbid")

    # --- bus ---------------------------------------------------------------------------------------------
    #: Kafka bootstrap servers; empty means "start the embedded broker" (demo and tests only).
    bootstrap_servers: str = ""
    events_topic: str = "ehr.events"
    dlq_topic: str = "ehr.events.dlq"
    matches_topic: str = "screening.matches"
    topic_partitions: int = Field(default=4, ge=1)
    group_id: str = "screener-engine"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    #: Client certificate and key (PEM) for mutual TLS (security_protocol SSL or SASL_SSL); the key's passphrase.
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_password: SecretStr | None = None
    #: Check that the broker's certificate names the host connected to (turn off only for a test CA).
    ssl_check_hostname: bool = True
    #: Connectors' producers use enable_idempotence (acks=all always). The embedded tansu broker rejects
    #: idempotent produce requests, so the demo and tests turn this off.
    producer_idempotence: bool = True
    #: HL7 v2 local-code mapping file for OBX codes (YAML or CSV); empty = the shipped default.
    hl7_code_map: Path | None = None

    # --- connector listeners (limits and health) --------------------------------------------------------
    #: An MLLP connection is closed when no complete block arrived within this many seconds of connecting or of
    #: the previous ACK (a quiet connection and a sender trickling bytes alike; senders reconnect).
    mllp_idle_timeout_s: float = Field(default=120.0, gt=0)
    #: Concurrent MLLP connections at most; one more is closed at once (and counted).
    mllp_max_connections: int = Field(default=64, ge=1)
    #: Bytes of one MLLP block at most (per connection); a longer block is answered AE and dead-lettered with
    #: a prefix of its payload, and the connection closed.
    mllp_max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    #: Bytes buffered by all MLLP connections together at most; a connection that would pass it gets AE
    #: ("busy") and is closed, so memory stays bounded whatever the senders do.
    mllp_max_buffered_bytes: int = Field(default=128 * 1024 * 1024, ge=1024)
    #: ``HOST:PORT`` of the MLLP listener's health endpoint (``GET /healthz``); empty = not served.
    mllp_health_listen: str = ""
    #: Bytes of one FHIR request body at most (checked on Content-Length and while streaming).
    fhir_max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    #: Seconds between the connectors' broker probes (``/healthz``; requests fail fast while it is down).
    connector_health_interval_s: float = Field(default=2.0, gt=0)
    #: Seconds a connector waits for the broker's acknowledgement before answering "unavailable" (503 / AE).
    connector_publish_timeout_s: float = Field(default=20.0, gt=0)

    # --- engine ------------------------------------------------------------------------------------------
    rules_dir: Path = Path("rules")
    state_dir: Path = Path(".screener/state")
    #: Records per micro-batch at most (a backlog is worked off in batches this size; at a steady trickle a
    #: batch holds what arrived while the previous one was processed). 50,000 measured fastest at catch-up.
    batch_max_records: int = Field(default=50_000, ge=1)
    batch_max_ms: int = Field(default=200, ge=1)
    #: A batch of at least this many records (a backlog) is screened on a second thread while the next one is
    #: polled and validated; smaller ones (a steady feed) are finished first, which keeps their latency low.
    overlap_min_records: int = Field(default=2_000, ge=1)
    #: How long the broker may hold a fetch request open when no new record is there. Kafka answers as soon as a
    #: record arrives, so any value works there; tansu (the embedded broker) holds the request for the whole
    #: wait, so this bounds the engine's pick-up delay (Kafka's 500 ms default measured 138 ms median there).
    fetch_max_wait_ms: int = Field(default=20, ge=0)
    #: Seconds between scheduled full re-screens (windows expiring, birthdays).
    rescreen_interval_s: float = Field(default=3600.0, gt=0)
    #: Seconds between checks of rules_dir for added or changed rule files.
    rules_poll_s: float = Field(default=2.0, gt=0)
    #: Seconds between sweeps that publish stored matches a crash left unpublished on screening.matches.
    matches_sweep_interval_s: float = Field(default=60.0, gt=0)
    #: A stored match counts as left unpublished once it is this old (younger ones may be another engine's,
    #: still waiting for the broker's acknowledgement).
    matches_sweep_settle_s: float = Field(default=10.0, ge=0)
    #: Seconds between periodic state snapshots: after a crash at most this many seconds of events are replayed.
    #: Written in the background; between compactions only the patients changed since are written.
    snapshot_interval_s: float = Field(default=60.0, gt=0)

    # --- store, web, alerts ------------------------------------------------------------------------------
    database_url: str = "sqlite:///.screener/screener.db"
    web_host: str = "127.0.0.1"
    web_port: int = Field(default=8080, ge=0, le=65535)
    #: Absolute base URL used in outbound links (no patient identifiers ever appear in them).
    public_url: str = "http://127.0.0.1:8080"
    secret_key: SecretStr = SecretStr(DEFAULT_SECRET_KEY)
    cookie_secure: bool = False
    webhook_url: str | None = None
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "screener@localhost"
    #: Upgrade the SMTP connection with STARTTLS before logging in.
    smtp_starttls: bool = False
    #: Seconds between outbox delivery passes (webhook messages; digests wait for digest_interval_s).
    outbox_interval_s: float = Field(default=10.0, gt=0)
    digest_interval_s: float = Field(default=3600.0, gt=0)
    #: A second webhook for page/SMS-style alerts: studies with ``alert: immediate`` post here too, on the next
    #: delivery pass (never a patient identifier: a count and a link).
    pager_webhook_url: str | None = None
    #: The time zone every page shows times in (IANA name).
    timezone: str = "Europe/London"
    #: Rows per worklist page.
    worklist_page_size: int = Field(default=50, ge=1, le=500)
    #: Seconds between the worklist page's own refreshes (an HTML meta refresh; 0 turns it off).
    worklist_refresh_s: int = Field(default=60, ge=0)
    #: Demographic counts (funnel by IMD quintile and ethnic group) below this are not exported on the worklist
    #: port's public /metrics (they are suppressed to 0 and flagged).
    metrics_min_count: int = Field(default=8, ge=1)
    #: Demo mode: the only mode in which the default secret key and passwords are accepted.
    demo: bool = False

    @field_validator("timezone")
    @classmethod
    def _known_timezone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown time zone {value!r} (an IANA name such as Europe/London)") from exc
        return value

    def check_secrets(self) -> None:
        """Refuse the shipped default secret key outside demo mode.

        :raises ConfigError: ``SCREENER_SECRET_KEY`` is the default and ``SCREENER_DEMO`` is not true."""
        if not self.demo and self.secret_key.get_secret_value() == DEFAULT_SECRET_KEY:
            raise ConfigError(
                "SCREENER_SECRET_KEY is the shipped default; set a long random value "
                "(python -c 'import secrets; print(secrets.token_urlsafe(32))'), or SCREENER_DEMO=true to try it",
                setting="secret_key",
            )

    # --- observability -----------------------------------------------------------------------------------
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9108, ge=0, le=65535)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console"] = "json"

    # --- history store (appended by the history work) ---------------------------------------------------
    #: Where every applied fact is kept, per partition (screener.history): a local folder, or
    #: ``s3://bucket/prefix`` (credentials and endpoint from the usual ``AWS_*`` variables). Empty: the folder
    #: ``history`` under ``state_dir``. Shared object storage lets any engine take a partition over without replay.
    state_url: str = ""
    #: Segments a partition's history collects before the engine compacts it (folds them into its base).
    history_compact_segments: int = Field(default=16, ge=1)
    #: Seconds the engine's ``/healthz`` tolerates without reaching the broker before it reports 503.
    health_broker_timeout_s: float = Field(default=10.0, gt=0)
    #: Seconds ``screener run`` waits for a clean stop after SIGTERM before it exits anyway.
    stop_timeout_s: float = Field(default=10.0, gt=0)

    def history_url(self) -> str:
        """``state_url``, or the default folder under ``state_dir``."""
        return self.state_url or str(Path(self.state_dir) / "history")

    def kafka_options(self) -> KafkaOptions:
        """Options passed through to kafka-python clients (security included)."""
        opts: KafkaOptions = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile:
            opts["ssl_cafile"] = str(self.ssl_cafile)
        if self.ssl_certfile:
            opts["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile:
            opts["ssl_keyfile"] = str(self.ssl_keyfile)
        if self.ssl_password:
            opts["ssl_password"] = self.ssl_password.get_secret_value()
        if self.security_protocol in ("SSL", "SASL_SSL"):
            opts["ssl_check_hostname"] = self.ssl_check_hostname
        return opts


def load_settings(config_file: Path | None = None, **overrides: object) -> Settings:
    """Build settings from overrides, the environment and an optional YAML/TOML file.

    :raises ConfigError: naming the first invalid setting and its environment variable.
    """
    file_values: dict[str, Any] = {}
    path = config_file or (Path(os.environ["SCREENER_CONFIG"]) if os.environ.get("SCREENER_CONFIG") else None)
    if path is not None:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read config file {path}: {exc}", setting="config") from exc
        if path.suffix == ".toml":
            import tomllib

            file_values = tomllib.loads(text)
        else:
            file_values = yaml.safe_load(text) or {}
    env_keys = {k[len("SCREENER_") :].lower() for k in os.environ if k.startswith("SCREENER_")}
    merged = {k: v for k, v in file_values.items() if k not in env_keys}
    merged.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return Settings(**merged)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        name = ".".join(str(p) for p in err.get("loc", ())) or "settings"
        raise ConfigError(f"{err.get('msg')} (got {err.get('input')!r})", setting=name) from exc
