"""Property tests: random bytes and mutated messages never crash a parser; every rejection has a reason."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.fhir import FHIRReject, parse_payload
from connectors.hl7v2 import HL7Reject, parse_message, process_block
from connectors.hl7v2.parse import load_code_map
from connectors.omop import table_events
from screener.events import Event, parse_event
from screener.sources.base import MemorySink
from tests.hypothesis_profiles import examples

DATA = Path(__file__).parents[2] / "data"
CODE_MAP = load_code_map()
SEED_HL7 = [
    "MSH|^~\\&|LAB|RR8|SCR|RR8|20260501100000||ORU^R01|L1|P|2.5\rPID|1||H1^^^RR8^MR~9434765919^^^NHS^NH||"
    "Ünal^Zoë||19610302|F|||^^^^LS6 2AB||||||||||||J\rOBR|1|P|F|U&E|||20260501083000\r"
    "OBX|1|NM|EGFR^eGFR^L||41|mL/min/1.73m2|>60|L|||F|||20260501090000\r",
    "MSH|^~\\&|PAS|RR8|SCR|RR8|20260501093000||ADT^A01|C1|P|2.5\rEVN|A01|20260501093000\r"
    "PID|1||H1^^^RR8^MR||Smith^Jane||19610302|F\rPV1|1|I|WARD4^^^RR8\rDG1|1||E11.9^T2DM^I10||20260501\r",
    "MSH|^~\\&|PAS|RR8|SCR|RR8|20260501093000||ADT^A40|C2|P|2.5\rEVN|A40|20260501093000\r"
    "PID|1||H1^^^RR8^MR||Smith^Jane||19610302|F\rMRG|H9^^^RR8^MR\r",
]
SEED_FHIR = [
    json.loads((DATA / "fhir" / "synthea_format_transaction_bundle.json").read_text()),
    *[json.loads(line) for line in (DATA / "fhir" / "bulk_export.ndjson").read_text().splitlines()],
]
FAST = settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _check_hl7(text: str) -> None:
    try:
        parsed = parse_message(text, code_map=CODE_MAP)
    except HL7Reject as exc:
        assert exc.reason and exc.ack_code in ("AE", "AR")
        return
    assert all(isinstance(e, Event) for e in parsed.events)


@FAST
@given(st.binary(max_size=600))
def test_hl7_random_bytes_never_crash_the_block_handler(data: bytes) -> None:
    sink = MemorySink()
    response, codes = process_block(data, sink, code_map=CODE_MAP, position="fuzz")
    assert response.startswith(("MSH|", "BHS|", "FHS|")) and codes
    assert len(sink.rejections) == sum(c != "AA" for c in codes)
    assert all(r.reason for r in sink.rejections)


@st.composite
def mutated_hl7(draw: Any) -> str:
    text = draw(st.sampled_from(SEED_HL7))
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["delete", "insert", "replace", "drop_segment", "dup_segment"]))
        if op in ("drop_segment", "dup_segment"):
            segs = text.split("\r")
            i = draw(st.integers(0, len(segs) - 1))
            segs = segs[:i] + segs[i + 1 :] if op == "drop_segment" else segs[: i + 1] + segs[i:]
            text = "\r".join(segs)
            continue
        pos = draw(st.integers(0, max(len(text) - 1, 0)))
        chunk = draw(st.text(alphabet=st.sampled_from(list("|^~\\&\r0123456789AZaz-+.é\x00 ")), max_size=5))
        if op == "delete":
            text = text[:pos] + text[pos + len(chunk) + 1 :]
        elif op == "insert":
            text = text[:pos] + chunk + text[pos:]
        else:
            text = text[:pos] + chunk + text[pos + len(chunk) :]
    return text


@FAST
@given(mutated_hl7())
def test_hl7_mutated_messages_are_parsed_or_rejected_with_a_reason(text: str) -> None:
    _check_hl7(text)


def _mutate_json(draw: Any, value: Any, depth: int = 0) -> Any:
    if isinstance(value, dict) and value:
        key = draw(st.sampled_from(sorted(value)))
        op = draw(st.sampled_from(["drop", "recurse", "garbage"]))
        out = dict(value)
        if op == "drop":
            out.pop(key)
        elif op == "recurse" and depth < 6:
            out[key] = _mutate_json(draw, value[key], depth + 1)
        else:
            out[key] = draw(
                st.one_of(
                    st.none(),
                    st.integers(),
                    st.text(max_size=12),
                    st.booleans(),
                    st.lists(st.integers(), max_size=2),
                    st.floats(),
                )
            )
        return out
    if isinstance(value, list) and value:
        i = draw(st.integers(0, len(value) - 1))
        out_list = list(value)
        out_list[i] = _mutate_json(draw, value[i], depth + 1)
        return out_list
    return draw(st.one_of(st.none(), st.text(max_size=12), st.integers(), st.floats(), st.booleans()))


@st.composite
def mutated_fhir(draw: Any) -> Any:
    doc = draw(st.sampled_from(SEED_FHIR))
    for _ in range(draw(st.integers(1, 4))):
        doc = _mutate_json(draw, doc)
    return doc


@FAST
@given(mutated_fhir())
def test_fhir_mutated_resources_are_parsed_or_rejected_with_a_reason(doc: Any) -> None:
    try:
        parsed = parse_payload(doc)
    except FHIRReject as exc:
        assert exc.reason and exc.status in (400, 422) and exc.path
        return
    assert all(isinstance(e, Event) for e in parsed.events)


@FAST
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
        lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=8), kids, max_size=3),
        max_leaves=12,
    )
)
def test_fhir_random_json_is_rejected_with_a_reason(doc: Any) -> None:
    try:
        parse_payload(doc)
    except FHIRReject as exc:
        assert exc.reason


@FAST
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.integers(-5, 10**12)),
            st.one_of(st.none(), st.text(max_size=12)),
            st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
            st.one_of(st.none(), st.text(max_size=20)),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_omop_rows_with_garbage_give_only_valid_events(rows: list[tuple[Any, ...]]) -> None:
    df = pl.DataFrame(
        {
            "measurement_id": [r[0] for r in rows],
            "person_id": [r[0] for r in rows],
            "measurement_concept_id": [r[0] for r in rows],
            "measurement_date": [r[1] for r in rows],
            "value_as_number": [r[2] for r in rows],
            "unit_source_value": [r[3] for r in rows],
            "measurement_source_value": [r[3] for r in rows],
        },
        schema={
            "measurement_id": pl.Int64,
            "person_id": pl.Int64,
            "measurement_concept_id": pl.Int64,
            "measurement_date": pl.String,
            "value_as_number": pl.Float64,
            "unit_source_value": pl.String,
            "measurement_source_value": pl.String,
        },
    )
    from datetime import UTC, datetime

    out = table_events(df, "measurement", None, datetime(2026, 5, 1, tzinfo=UTC))
    for key, value in zip(out["key"].to_list(), out["value"].to_list(), strict=True):
        ev = parse_event(value)
        assert ev.patient_id.encode() == key
