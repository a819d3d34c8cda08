"""The connector SDK's public surface (screener.connector): feeds found through the registry, the one NHS-number
check, connector_options' sink choice, and the old ``screener.sources`` name still giving the same objects."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from itertools import islice

import click
import pytest
from click.testing import CliRunner

import screener.connector as sdk
from screener.errors import ConnectorError
from screener.events import Event


def test_the_demo_feed_is_found_through_the_registry_and_honours_its_arguments() -> None:
    feed = sdk.load_feed("synthetic")
    now = datetime(2026, 6, 1, tzinfo=UTC)
    first = [list(p) for p in islice(feed(3, seed=5, now=now), 3)]
    assert [p[0].kind for p in first] == ["person"] * 3
    again = [list(p) for p in feed(2, seed=5, now=now, start_index=1)]
    assert [p[0].patient_id for p in again] == [p[0].patient_id for p in first[1:]]
    assert [e.event_id for e in again[0]] == [e.event_id for e in first[1]]


def test_a_connector_without_a_feed_is_named_in_the_error() -> None:
    with pytest.raises(ConnectorError, match="connector 'hl7v2' has no in-process feed"):
        sdk.load_feed("hl7v2")
    with pytest.raises(ConnectorError, match="did you mean 'synthetic'"):
        sdk.load_feed("synthetik")


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("9434765919", True),
        ("943 476 5919", True),
        ("943-476-5919", True),
        ("9434765918", False),  # wrong check digit
        ("1000000010", False),  # body whose check digit would be 10: never valid
        ("943476591", False),
        ("94347659190", False),
        ("٩٤٣٤٧٦٥٩١٩", False),  # Arabic-Indic digits are digits to str.isdigit, not to the NHS
        ("", False),
        (None, False),
    ],
)
def test_one_nhs_number_check(number: str | None, ok: bool) -> None:
    assert sdk.is_valid_nhs_number(number) is ok


def test_the_check_digit_and_the_synthetic_population_use_the_same_check() -> None:
    from connectors.synthetic import population

    assert sdk.nhs_check_digit("943476591") == 9
    assert sdk.nhs_check_digit("100000001") is None
    assert population.is_valid_nhs_number is sdk.is_valid_nhs_number
    assert population.nhs_check_digit is sdk.nhs_check_digit


def test_connector_options_dry_run_prints_events_and_rejections(make_event: Callable[..., Event]) -> None:
    event = make_event(patient_id="P9")

    @click.command()
    @sdk.connector_options
    def cmd(sink_factory: sdk.SinkFactory) -> None:
        assert sink_factory.dry_run is True
        assert sink_factory.settings.events_topic == "ehr.events"
        sink = sink_factory("test", linger_ms=50)
        assert isinstance(sink, sdk.PublishingSink)
        sink.publish([event])
        sink.dead_letter(b"raw", "test", "line 3", "bad: thing")
        sink.close()

    result = CliRunner().invoke(cmd, ["--dry-run"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout.splitlines()[0])["patient_id"] == "P9"
    assert json.loads(result.stderr.splitlines()[-1]) == {
        "source": "test",
        "position": "line 3",
        "reason": "bad: thing",
    }


def test_a_screener_error_in_a_connector_command_is_a_click_error() -> None:
    @click.command()
    @sdk.connector_options
    def cmd(sink_factory: sdk.SinkFactory) -> None:
        raise ConnectorError("no such file: x.ndjson", connector="test")

    result = CliRunner().invoke(cmd, ["--dry-run"])
    assert result.exit_code == 1
    assert "Error: test: no such file: x.ndjson" in result.output  # the connector named


def test_the_old_sources_name_gives_the_same_objects() -> None:
    import screener.commands.connect as connect_command
    import screener.sources as old
    import screener.sources.base
    import screener.sources.common
    import screener.sources.kafka
    import screener.sources.registry
    from screener.connector import base, common, kafka, registry

    assert old.SimpleConnector is sdk.SimpleConnector
    assert screener.sources.base.MemorySink is base.MemorySink
    assert screener.sources.common.is_valid_nhs_number is common.is_valid_nhs_number
    assert screener.sources.kafka.KafkaSink is kafka.KafkaSink
    assert screener.sources.registry.load_connector is registry.load_connector
    assert connect_command.connector_options is sdk.connector_options
    assert set(old.__all__) == set(sdk.__all__)


def test_event_json_writes_the_event_order_and_leaves_nulls_out() -> None:
    import polars as pl

    from screener.connector.encode import event_json

    frame = pl.DataFrame({"pid": ["p1", "p2"], "unit": [None, "mmol/L"], "v": [1.5, None], "sys": ["LOINC", None]})
    fields = {
        "unit": pl.col("unit"),  # given out of order: written after code and value
        "value": pl.col("v"),
        "code": pl.struct(pl.col("sys").alias("system"), pl.lit("2345-7").alias("value")),
        "schema": pl.lit("screener.event/v2"),
        "event_id": pl.lit("e-") + pl.col("pid"),
        "source": pl.lit("test"),
        "kind": pl.lit("lab"),
        "patient_id": pl.col("pid"),
        "occurred_at": pl.lit("2026-01-02"),
        "dose": pl.lit(None, pl.Struct({"value": pl.Float64, "unit": pl.String})),
    }
    written = frame.select(event_json(fields).alias("j"))["j"].to_list()
    head = '{"schema":"screener.event/v2","event_id":"e-p1","source":"test","kind":"lab","patient_id":"p1",'
    assert written[0] == head + '"occurred_at":"2026-01-02","code":{"system":"LOINC","value":"2345-7"},"value":1.5}'
    # a null first field of a nested struct, a null value and a null struct are all left out
    assert written[1].endswith('"occurred_at":"2026-01-02","code":{"value":"2345-7"},"unit":"mmol/L"}')
    with pytest.raises(ValueError, match="not event fields: colour"):
        event_json({"colour": pl.lit("red")})
