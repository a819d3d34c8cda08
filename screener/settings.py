"""One typed, frozen settings object. Every option has a ``SCREENER_*`` environment variable.

Precedence: explicit keyword arguments > environment variables > the optional TOML/YAML config file named by
``SCREENER_CONFIG`` > defaults. Secrets are ``SecretStr`` and never printed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from screener.errors import ConfigError

__all__ = ["Settings", "load_settings"]


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
    #: Connectors' producers use enable_idempotence (acks=all always). The embedded tansu broker rejects
    #: idempotent produce requests, so the demo and tests turn this off.
    producer_idempotence: bool = True
    #: HL7 v2 local-code mapping file for OBX codes (YAML or CSV); empty = the shipped default.
    hl7_code_map: Path | None = None

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
    secret_key: SecretStr = SecretStr("change-me-in-production")
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

    def kafka_options(self) -> dict[str, Any]:
        """Options passed through to kafka-python clients (security included)."""
        opts: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap_servers.split(","),
            "security_protocol": self.security_protocol,
        }
        if self.sasl_mechanism:
            opts["sasl_mechanism"] = self.sasl_mechanism
            opts["sasl_plain_username"] = self.sasl_username
            opts["sasl_plain_password"] = self.sasl_password.get_secret_value() if self.sasl_password else None
        if self.ssl_cafile:
            opts["ssl_cafile"] = str(self.ssl_cafile)
        return opts


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
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
