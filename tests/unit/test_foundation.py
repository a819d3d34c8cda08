"""Errors, settings and log redaction: the foundation every stage uses."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import structlog

from screener.errors import ConfigError, EventError, RuleError, did_you_mean
from screener.logging import REDACTED, configure_logging, redact_identifiers
from screener.metrics import Metrics
from screener.settings import load_settings


def test_rule_error_formats_file_line_column_and_suggestion() -> None:
    err = RuleError("unknown name 'egrf'", file="rules/ckd.yaml", line=12, column=18, suggestion="egfr")
    assert str(err) == "rules/ckd.yaml:12:18: error: unknown name 'egrf' (did you mean 'egfr'?)"
    assert (err.file, err.line, err.column) == ("rules/ckd.yaml", 12, 18)


def test_did_you_mean_finds_close_names_only() -> None:
    assert did_you_mean("egrf", ["egfr", "age", "t2dm"]) == "egfr"
    assert did_you_mean("zzzz", ["egfr", "age"]) is None


def test_event_error_names_the_position_on_the_topic() -> None:
    err = EventError(
        "invalid value",
        field="code.system",
        expected="ICD10",
        received="ICD9",
        topic="ehr.events",
        partition=2,
        offset=41,
    )
    assert str(err) == "ehr.events[2]@41: field 'code.system': invalid value; expected ICD10, got 'ICD9'"


def test_settings_read_environment_and_config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "screener.yaml"
    cfg.write_text("batch_max_records: 123\ngroup_id: from-file\n")
    monkeypatch.setenv("SCREENER_GROUP_ID", "from-env")
    settings = load_settings(cfg)
    assert settings.batch_max_records == 123
    assert settings.group_id == "from-env"  # the environment beats the file


def test_bad_setting_names_its_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SCREENER_BATCH_MAX_RECORDS", "lots")
    with pytest.raises(ConfigError, match="SCREENER_BATCH_MAX_RECORDS"):
        load_settings()


def test_secrets_are_not_printed() -> None:
    settings = load_settings(secret_key="hunter2-very-secret")
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


def test_redaction_processor_removes_identifiers_everywhere() -> None:
    event = {
        "event": "screened",
        "patient_id": "RXX123",
        "nested": {"nhs_number": "9434765919", "count": 3},
        "note": "called about 943 476 5919 today",
        "study": "CKD-SGLT2-COMM",
    }
    out = redact_identifiers(None, "info", dict(event))
    assert out["patient_id"] == REDACTED
    assert out["nested"] == {"nhs_number": REDACTED, "count": 3}
    assert "5919" not in out["note"]
    assert out["study"] == "CKD-SGLT2-COMM"


def test_configured_logger_writes_json_without_identifiers(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", "json")
    structlog.get_logger("t").info("matched", patient_id="RXX999", study="S1")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    record = json.loads(line)
    assert record["patient_id"] == REDACTED and record["study"] == "S1"
    assert "RXX999" not in line


def test_logger_created_before_configuration_still_redacts(capsys: pytest.CaptureFixture[str]) -> None:
    from screener.logging import get_logger

    structlog.reset_defaults()
    early = get_logger("made-at-import-time")
    configure_logging("INFO", "json")
    early.info("matched", patient_id="RXX777")
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "RXX777" not in line and json.loads(line)["component"] == "made-at-import-time"


def test_metrics_use_an_injected_registry() -> None:
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.matches.labels("S1", "eligible", "community").inc()
    assert (
        registry.get_sample_value(
            "screener_matches_total", {"study": "S1", "outcome": "eligible", "setting": "community"}
        )
        == 1.0
    )
    assert registry.get_sample_value("screener_population_ethnic_group_ratio", {"ethnic_group": "white"}) == 0.766
