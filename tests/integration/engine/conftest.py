"""Fixtures for the engine's integration tests: a rules folder with a small study of our own, engine
processes (``screener run``) on the session broker with unique topics and group, and helpers to publish events
and read matches from the SQLite worklist and the ``screening.matches`` topic."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from screener.bus import ensure_topics, make_producer
from screener.settings import Settings

ADULT_DM = """\
study:
  id: TEST-ADULT-DM
  title: "Adults with type 2 diabetes"
  summary: "A study used by the engine's integration tests."
  sponsor: non-commercial
  portfolio: false
  target: 100
  opens: 2020-01-01
  closes: 2035-12-31
  settings: [community, hospital]
  team: test-team
concepts:
  t2dm: {icd10: [E11]}
include:
  adult: age >= 18
  diabetic: t2dm|ever
"""

HYPERTENSION = """\
study:
  id: TEST-HTN
  title: "Adults with hypertension"
  summary: "A second study, added while the engine runs."
  sponsor: commercial
  portfolio: true
  target: 50
  opens: 2020-01-01
  closes: 2035-12-31
  settings: [community, hospital]
  team: test-team
concepts:
  htn: {icd10: [I10]}
include:
  adult: age >= MIN_AGE
  hypertensive: htn|ever
"""

PARTITIONS = 4


def patient_events(
    pid: str, *, birth: str = "1970-01-01", icd10: str = "E11.9", occurred: str = "2026-01-01T09:00:00Z"
) -> list[dict[str, Any]]:
    """A person event and one coded condition, both in a community setting."""
    return [
        {
            "event_id": f"{pid}-p",
            "source": "itest",
            "kind": "person",
            "patient_id": pid,
            "occurred_at": occurred,
            "setting": "community",
            "person": {"birth_date": birth, "sex": "F"},
        },
        {
            "event_id": f"{pid}-c-{icd10}",
            "source": "itest",
            "kind": "condition",
            "patient_id": pid,
            "occurred_at": occurred,
            "setting": "community",
            "code": {"system": "ICD10", "value": icd10},
        },
    ]


@dataclass
class Bed:
    """One isolated test bed: topics, group, rules folder, state folder and worklist database."""

    bootstrap: str
    root: Path
    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _producer: Any = None

    @property
    def rules_dir(self) -> Path:
        return self.root / "rules"

    @property
    def db_url(self) -> str:
        return f"sqlite:///{self.root / 'worklist.db'}"

    def settings(self, **extra: Any) -> Settings:
        values: dict[str, Any] = {
            "bootstrap_servers": self.bootstrap,
            "events_topic": f"{self.name}.events",
            "dlq_topic": f"{self.name}.dlq",
            "matches_topic": f"{self.name}.matches",
            "topic_partitions": PARTITIONS,
            "group_id": f"{self.name}-engine",
            "rules_dir": self.rules_dir,
            "state_dir": self.root / "state",
            "database_url": self.db_url,
            "batch_max_ms": 50,
            "batch_max_records": 500,
            "rules_poll_s": 0.3,
            "snapshot_interval_s": 2.0,
            "metrics_port": 0,
        }
        values.update(extra)
        return Settings(**values)

    def env(self, config: str | None = None, **extra: Any) -> dict[str, str]:
        """Environment for ``screener run``; with ``config`` the keys that file sets are left to the file."""
        s = self.settings(**extra)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCREENER_")}
        in_file: set[str] = set()
        if config is not None:
            import yaml

            env["SCREENER_CONFIG"] = config
            in_file = set(yaml.safe_load(Path(config).read_text()) or {})
        for key, value in s.model_dump().items():
            if value is None or key in ("sasl_password", "secret_key", "smtp_password") or key in in_file:
                continue
            env[f"SCREENER_{key.upper()}"] = str(value)
        return env

    def start_engine(
        self, tag: str, config: str | None = None, env: dict[str, str] | None = None, **extra: Any
    ) -> subprocess.Popen[bytes]:
        """``screener run`` as a child process (its own session); ``env`` adds environment variables."""
        log = open(self.root / f"engine-{tag}.log", "ab")  # noqa: SIM115 - the child owns it
        proc = subprocess.Popen(
            [sys.executable, "-c", "from screener.cli import main; main()", "run"],
            env={**self.env(config, **extra), **(env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        self.procs.append(proc)
        return proc

    def log_lines(self, tag: str) -> list[dict[str, Any]]:
        out = []
        path = self.root / f"engine-{tag}.log"
        if not path.exists():
            return out
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(line))
        return out

    def publish(self, events: list[dict[str, Any]], *, raw: list[bytes] | None = None) -> None:
        if self._producer is None:
            self._producer = make_producer(self.settings())
        topic = self.settings().events_topic
        for ev in events:
            self._producer.send(topic, key=ev["patient_id"].encode(), value=json.dumps(ev).encode())
        for value in raw or []:
            self._producer.send(topic, key=b"bad", value=value)
        self._producer.flush(timeout=30)

    def matches(self) -> list[tuple[str, str]]:
        """Every (study_id, patient_id) row in the worklist, duplicates included (there must be none)."""
        path = self.root / "worklist.db"
        if not path.exists():
            return []
        engine = sa.create_engine(self.db_url)
        try:
            with engine.connect() as conn:
                if not sa.inspect(conn).has_table("matches"):
                    return []
                return [(r[0], r[1]) for r in conn.execute(sa.text("SELECT study_id, patient_id FROM matches"))]
        finally:
            engine.dispose()

    def topic_messages(self, topic: str, timeout_s: float = 5.0) -> list[tuple[bytes | None, dict[str, Any]]]:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap, enable_auto_commit=False, consumer_timeout_ms=int(timeout_s * 1000)
        )
        try:
            tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            ends = consumer.end_offsets(tps)
            out = []
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline and any(consumer.position(tp) < ends[tp] for tp in tps):
                for recs in consumer.poll(timeout_ms=200).values():
                    out.extend((r.key, json.loads(r.value)) for r in recs)
            return out
        finally:
            consumer.close()

    def stop_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        if self._producer is not None:
            self._producer.close(timeout=5)


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@pytest.fixture
def bed(broker: Any, tmp_path: Path) -> Iterator[Bed]:
    name = f"eng-{uuid.uuid4().hex[:8]}"
    b = Bed(bootstrap=broker.bootstrap, root=tmp_path, name=name)
    b.rules_dir.mkdir()
    (b.rules_dir / "adult-dm.yaml").write_text(ADULT_DM)
    s = b.settings()
    ensure_topics(broker.bootstrap, {s.events_topic: PARTITIONS, s.dlq_topic: PARTITIONS, s.matches_topic: PARTITIONS})
    try:
        yield b
    finally:
        b.stop_all()


@pytest.fixture(scope="session")
def s3() -> Iterator[dict[str, str]]:
    """A real S3-compatible server (moto) on loopback for the session, with bucket ``screener``: its storage
    options (``aws_*`` keys; upper-cased they are the environment variables a child process reads)."""
    from screener.testing import s3_server

    with s3_server(bucket="screener") as options:
        yield options


@pytest.fixture
def kit() -> Any:
    """The helpers above, for test modules (conftest modules are not importable under importlib mode)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        ADULT_DM=ADULT_DM,
        HYPERTENSION=HYPERTENSION,
        patient_events=patient_events,
        wait_for=wait_for,
        PARTITIONS=PARTITIONS,
    )
