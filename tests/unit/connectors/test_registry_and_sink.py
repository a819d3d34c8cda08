"""The connector registry, the CLI verbs, shared helpers and the dead-letter record format."""

from __future__ import annotations

import base64
import json

import pytest
from click.testing import CliRunner

from screener.cli import main
from screener.errors import ConnectorError
from screener.sources.base import Connector, EventSink, MemorySink
from screener.sources.common import ethnic_group_for_category, is_valid_nhs_number, postcode_district
from screener.sources.kafka import dead_letter_record
from screener.sources.registry import available, load_connector


def test_all_four_connectors_are_registered_and_load() -> None:
    assert set(available()) >= {"hl7v2", "fhir", "omop", "synthetic"}
    for name in ("hl7v2", "fhir", "omop", "synthetic"):
        conn = load_connector(name)
        assert isinstance(conn, Connector) and conn.name == name and conn.summary
        assert conn.command().name == name


def test_unknown_connector_suggests_the_closest_name() -> None:
    with pytest.raises(ConnectorError, match="did you mean 'hl7v2'"):
        load_connector("hl7")


def test_memory_sink_is_an_event_sink() -> None:
    assert isinstance(MemorySink(), EventSink)


def test_cli_connect_list() -> None:
    result = CliRunner().invoke(main, ["connect", "--list"])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()] == ["fhir", "hl7v2", "omop", "synthetic"]


@pytest.mark.parametrize("fmt", ["hl7v2", "fhir"])
def test_cli_synthetic_writes_hl7v2_messages_or_fhir_bundles_to_stdout_without_a_target(fmt: str) -> None:
    args = ["connect", "synthetic", "--patients", "2", "--format", fmt, "--now", "2026-06-01T09:00:00Z"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line]
    if fmt == "hl7v2":  # one message a line, segments separated by a visible \r
        assert len(lines) > 2 and all(line.startswith("MSH|^~\\&|") and "\\rPID|" in line for line in lines)
    else:  # one transaction Bundle a patient
        assert [json.loads(line)["resourceType"] for line in lines] == ["Bundle", "Bundle"]
    assert f"synthetic: 2 patients, {len(lines)} {fmt} records sent, 0 rejected" in result.stderr


def test_cli_unknown_connector_is_a_usage_error() -> None:
    result = CliRunner().invoke(main, ["connect", "hl7"])
    assert result.exit_code == 2 and "did you mean 'hl7v2'" in result.output


def test_cli_fhir_from_file_dry_run(tmp_path: object) -> None:
    from pathlib import Path

    data = Path(__file__).parents[2] / "data" / "fhir" / "bulk_export.ndjson"
    result = CliRunner().invoke(main, ["connect", "fhir", "--from-file", str(data), "--dry-run"])
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert [d["kind"] for d in lines] == ["person", "measurement", "drug"]


def test_cli_backfill_omop_dry_run() -> None:
    from pathlib import Path

    data = Path(__file__).parents[2] / "data" / "omop"
    result = CliRunner().invoke(main, ["backfill", "omop", str(data), "--dry-run", "--tables", "person,measurement"])
    assert result.exit_code == 0, result.output
    kinds = [json.loads(line)["kind"] for line in result.stdout.splitlines() if line.startswith("{")]
    assert kinds == ["person"] * 3 + ["measurement"] * 2


def test_connect_without_broker_says_how_to_configure(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SCREENER_BOOTSTRAP_SERVERS", raising=False)
    from pathlib import Path

    data = Path(__file__).parents[2] / "data" / "fhir" / "bulk_export.ndjson"
    result = CliRunner().invoke(main, ["connect", "fhir", "--from-file", str(data)])
    assert result.exit_code == 1 and "SCREENER_BOOTSTRAP_SERVERS" in result.output


def test_dead_letter_record_text_and_binary() -> None:
    text = json.loads(dead_letter_record("MSH|x", "hl7v2", "1.2.3.4:5 control_id=C1", "AE: PID-7: bad"))
    assert text["payload"] == "MSH|x" and text["payload_encoding"] == "utf-8"
    assert (text["source"], text["position"], text["reason"]) == ("hl7v2", "1.2.3.4:5 control_id=C1", "AE: PID-7: bad")
    raw = b"\xff\xfe\x00bad"
    binary = json.loads(dead_letter_record(raw, "hl7v2", "p", "r"))
    assert binary["payload_encoding"] == "base64" and base64.b64decode(binary["payload"]) == raw


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("9434765919", True),
        ("943 476 5919", True),
        ("9434765918", False),
        ("123456789", False),
        ("abcdefghij", False),
        ("", False),
    ],
)
def test_nhs_number_modulus_11(number: str, ok: bool) -> None:
    assert is_valid_nhs_number(number) is ok


def test_ethnic_categories_and_postcodes() -> None:
    assert ethnic_group_for_category("J") == ("asian", "J")
    assert ethnic_group_for_category("R") == ("asian", "R")  # Chinese is Asian in the 2021 census
    assert ethnic_group_for_category("N") == ("black", "N")
    assert ethnic_group_for_category("Z") == (None, None)
    assert postcode_district("bd7 1dp") == "BD7" and postcode_district("LS61AB") == "LS6"
    assert postcode_district("02108") is None
