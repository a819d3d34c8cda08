"""Structure-aware fuzzing of every parser at screener's edges: HL7 v2, FHIR, the canonical event and rule files.

The contract under test: whatever arrives, a parser either returns its result or raises one of the documented
error types (``EventError`` and its subclasses ``HL7Reject``/``FHIRReject``, ``ConnectorError``, ``RuleError``);
never ``KeyError``, ``IndexError``, ``RecursionError``, ``OverflowError``, ... The generators build inputs the
way the formats are built (segments, fields, components, escapes; resources, Bundles, wrong-typed values;
event fields with hostile values; rule files with generated JEXL), so they reach deep into the parsers rather
than stopping at the first byte. Bounded: ``max_examples`` per test; derandomized in CI (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import json
import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from connectors.fhir import FHIRReject, parse_payload
from connectors.hl7v2 import HL7Reject, parse_message, process_block
from connectors.hl7v2.parse import load_code_map
from screener.errors import ConnectorError, EventError, RuleError
from screener.events import Event, dump_event, parse_event
from screener.rules.loader import loads_study
from screener.sources.base import MemorySink

ROOT = Path(__file__).parents[2]
RULES = ROOT / "rules"
CODE_MAP = load_code_map()
DOCUMENTED = (EventError, ConnectorError, RuleError)
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), database=None)

# --- HL7 v2 -------------------------------------------------------------------------------------------------
_HL7_TEXT = st.text(
    alphabet=st.sampled_from(list("ABCXYZabz0123456789 .-+:/^&~\\|é€\x00\t")) | st.characters(codec="utf-8"),
    max_size=20,
)
_HL7_DATES = st.sampled_from(
    ["20260501", "202605011030", "20260501103000+0100", "19610302", "10131113", "99999999", "2026", "", "0", "-1"]
) | st.from_regex(r"[0-9]{0,16}([+-][0-9]{4})?", fullmatch=True)
_HL7_NUMBERS = st.sampled_from(
    ["41", "-0", "1e309", "NaN", "inf", "9" * 400, ">60", "<5", "4,1", ""]
) | st.floats().map(str)
_FIELD = st.one_of(
    _HL7_TEXT,
    _HL7_DATES,
    _HL7_NUMBERS,
    st.lists(st.one_of(_HL7_TEXT, _HL7_DATES), min_size=1, max_size=6).map("^".join),  # components
    st.lists(_HL7_TEXT, min_size=1, max_size=3).map("~".join),  # repetitions
    st.lists(_HL7_TEXT, min_size=1, max_size=3).map("&".join),  # subcomponents
    st.sampled_from(["\\F\\", "\\S\\", "\\X0D\\", "\\E\\", "\\H\\", "\\.br\\", "\\Zxx\\"]),
)
_SEGMENTS = ["PID", "PV1", "PV2", "EVN", "OBR", "OBX", "DG1", "NTE", "MRG", "AL1", "PR1", "RXA", "ZXX", "BHS", "FHS"]
_TYPES = ["ADT^A01", "ADT^A03", "ADT^A04", "ADT^A08", "ADT^A28", "ADT^A31", "ADT^A40", "ORU^R01", "SIU^S12", "", "^"]


@st.composite
def hl7_messages(draw: Any) -> str:
    msg_type = draw(st.sampled_from(_TYPES) | _HL7_TEXT)
    control = draw(_HL7_TEXT)
    version = draw(st.sampled_from(["2.3", "2.5", "2.5.1", "", "9"]))
    msh = f"MSH|^~\\&|LAB|RR8|SCR|RR8|{draw(_HL7_DATES)}||{msg_type}|{control}|P|{version}"
    segments = [msh]
    for _ in range(draw(st.integers(0, 8))):
        name = draw(st.sampled_from(_SEGMENTS))
        fields = draw(st.lists(_FIELD, max_size=30))
        segments.append("|".join([name, *fields]))
    sep = draw(st.sampled_from(["\r", "\n", "\r\n"]))
    return sep.join(segments) + sep


@FUZZ
@given(hl7_messages())
def test_hl7_parser_returns_or_rejects(text: str) -> None:
    try:
        parsed = parse_message(text, code_map=CODE_MAP)
    except HL7Reject as exc:
        assert exc.ack_code in ("AE", "AR") and exc.reason
        return
    assert all(isinstance(e, Event) for e in parsed.events)
    for ev in parsed.events:  # what the connector would publish must survive the canonical boundary
        assert parse_event(dump_event(ev)) == ev


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(st.lists(hl7_messages(), min_size=1, max_size=4), st.sampled_from(["", "BHS", "FHS", "FHS+BHS"]))
def test_hl7_blocks_and_batches_always_get_one_ack_per_message(messages: list[str], envelope: str) -> None:
    head = {"": "", "BHS": "BHS|^~\\&|LAB\r", "FHS": "FHS|^~\\&|LAB\r", "FHS+BHS": "FHS|^~\\&\rBHS|^~\\&\r"}[envelope]
    tail = {"": "", "BHS": "BTS|1\r", "FHS": "FTS|1\r", "FHS+BHS": "BTS|1\rFTS|1\r"}[envelope]
    sink = MemorySink()
    response, codes = process_block((head + "".join(messages) + tail).encode(), sink, code_map=CODE_MAP, position="f")
    assert codes and set(codes) <= {"AA", "AE", "AR"}
    assert response.count("MSA|") == len(codes)
    assert len(sink.rejections) == sum(c != "AA" for c in codes)


# --- FHIR ---------------------------------------------------------------------------------------------------
_JSON_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=15),
    st.sampled_from(["2026-05-01", "2026-05-01T10:30:00Z", "2026-05-01T10:30:00", "1013", "2026-13-45", "--"]),
)
_JSON = st.recursive(
    _JSON_SCALAR,
    lambda kids: st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=10), kids, max_size=3),
    max_leaves=10,
)
_FHIR_TYPES = [
    "Patient",
    "Observation",
    "Condition",
    "MedicationRequest",
    "MedicationStatement",
    "Procedure",
    "Encounter",
    "AllergyIntolerance",
    "Immunization",
    "Medication",
    "Bundle",
    "Consent",
    "Basic",
]
_FHIR_FIELDS = {
    "id": st.text(max_size=70) | _JSON_SCALAR,
    "subject": st.fixed_dictionaries({"reference": st.sampled_from(["Patient/p1", "urn:uuid:x", "", "Patient/"])})
    | _JSON,
    "patient": st.fixed_dictionaries({"reference": st.sampled_from(["Patient/p1", "#", "Patient/p2"])}) | _JSON,
    "code": st.fixed_dictionaries(
        {
            "coding": st.lists(
                st.fixed_dictionaries(
                    {
                        "system": st.sampled_from(
                            [
                                "http://loinc.org",
                                "http://snomed.info/sct",
                                "http://hl7.org/fhir/sid/icd-10",
                                "urn:oid:1",
                                "",
                            ]
                        )
                        | _JSON_SCALAR,
                        "code": _JSON_SCALAR,
                    }
                ),
                max_size=3,
            )
        }
    )
    | _JSON,
    "valueQuantity": st.fixed_dictionaries({"value": _JSON_SCALAR, "unit": _JSON_SCALAR}) | _JSON,
    "effectiveDateTime": _JSON_SCALAR,
    "onsetDateTime": _JSON_SCALAR,
    "authoredOn": _JSON_SCALAR,
    "birthDate": _JSON_SCALAR,
    "gender": st.sampled_from(["female", "male", "other", "unknown", "x"]) | _JSON_SCALAR,
    "status": st.sampled_from(["final", "active", "completed", "entered-in-error", "?"]) | _JSON_SCALAR,
    "medicationReference": st.fixed_dictionaries({"reference": st.sampled_from(["Medication/m1", "#m", ""])}) | _JSON,
    "medicationCodeableConcept": _JSON,
    "period": st.fixed_dictionaries({"start": _JSON_SCALAR, "end": _JSON_SCALAR}) | _JSON,
    "extension": _JSON,
    "identifier": _JSON,
}


@st.composite
def fhir_resources(draw: Any) -> dict[str, Any]:
    res: dict[str, Any] = {"resourceType": draw(st.sampled_from(_FHIR_TYPES) | _JSON_SCALAR)}
    for name in draw(st.lists(st.sampled_from(sorted(_FHIR_FIELDS)), max_size=8, unique=True)):
        res[name] = draw(_FHIR_FIELDS[name])
    return res


@st.composite
def fhir_payloads(draw: Any) -> Any:
    if draw(st.booleans()):
        return draw(fhir_resources())
    entries = draw(
        st.lists(
            st.fixed_dictionaries(
                {"resource": fhir_resources() | _JSON},
                optional={"fullUrl": st.sampled_from(["urn:uuid:x", "Medication/m1", ""]) | _JSON_SCALAR},
            )
            | _JSON,
            max_size=6,
        )
    )
    return {
        "resourceType": "Bundle",
        "type": draw(st.sampled_from(["batch", "transaction", "collection", "searchset", "x"]) | _JSON_SCALAR),
        "entry": entries if draw(st.integers(0, 9)) else draw(_JSON),
    }


@FUZZ
@given(fhir_payloads())
def test_fhir_parser_returns_or_rejects(payload: Any) -> None:
    try:
        parsed = parse_payload(payload)
    except FHIRReject as exc:
        assert exc.status in (400, 422) and exc.reason
        return
    for ev in parsed.events:
        assert parse_event(dump_event(ev)) == ev


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(
    st.one_of(
        fhir_payloads().map(lambda p: json.dumps(p).encode()),
        st.binary(max_size=300),
        st.integers(1, 3000).map(lambda d: b'{"resourceType": "Patient", "x": ' + b"[" * d + b"]" * d + b"}"),
    ),
    st.sampled_from(["application/fhir+json", "application/json", "application/fhir+xml", "text/plain", ""]),
)
def test_fhir_endpoint_never_answers_5xx(body: bytes, content_type: str) -> None:
    from starlette.testclient import TestClient

    from connectors.fhir import build_app

    sink = MemorySink()
    with TestClient(build_app(sink)) as client:
        headers = {"content-type": content_type} if content_type else {}
        resp = client.post("/", content=body, headers=headers)
    assert resp.status_code in (200, 400, 413, 415, 422), resp.text[:300]
    assert resp.json()["resourceType"] in ("OperationOutcome", "Bundle")
    assert (resp.status_code >= 400) == bool(sink.rejections)  # every 4xx is dead-lettered, nothing else


# --- the canonical event ------------------------------------------------------------------------------------
_HOSTILE = st.one_of(
    _JSON_SCALAR,
    st.sampled_from([math.nan, math.inf, -math.inf, 10**400, -(10**400), "", " ", "\x00", "x" * 10_000]),
    st.sampled_from(["2026-05-01", "2026-05-01T10:00:00", "2026-05-01T10:00:00+25:00", "0000-01-01T00:00:00Z"]),
    _JSON,
)
_EVENT_FIELDS = [
    "schema",
    "event_id",
    "source",
    "kind",
    "patient_id",
    "occurred_at",
    "recorded_at",
    "code",
    "value",
    "unit",
    "status",
    "setting",
    "site",
    "person",
    "corrects",
    "qualifiers",
    "ended_at",
    "dose",
    "route",
    "ref_low",
    "ref_high",
    "value_code",
    "encounter_id",
    "location",
    "merged_from",
]


@st.composite
def event_docs(draw: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "event_id": "e1",
        "source": "fuzz",
        "kind": draw(st.sampled_from(["person", "condition", "measurement", "drug", "visit", "death", "nope"])),
        "patient_id": "P1",
        "occurred_at": "2026-05-01T10:00:00Z",
        "code": {"system": "LOINC", "value": "62238-1"},
    }
    for name in draw(st.lists(st.sampled_from(_EVENT_FIELDS), max_size=5, unique=True)):
        doc[name] = draw(_HOSTILE)
    if doc["kind"] == "measurement" and draw(st.booleans()):  # the field most read by rules, most often
        doc["value"] = draw(_HOSTILE)
    if doc["kind"] == "person" and draw(st.booleans()):
        doc["person"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "birth_date": _HOSTILE,
                    "sex": st.sampled_from(["F", "M", "X"]) | _HOSTILE,
                    "ethnic_group": _HOSTILE,
                    "imd_decile": st.integers(-5, 15) | _HOSTILE,
                },
            )
        )
    return doc


_MEASUREMENT = {
    "event_id": "e1",
    "source": "fuzz",
    "kind": "measurement",
    "patient_id": "P1",
    "occurred_at": "2026-05-01T10:00:00Z",
    "code": {"system": "LOINC", "value": "62238-1"},
}


@FUZZ
@given(event_docs())
@example({**_MEASUREMENT, "value": math.nan})
@example({**_MEASUREMENT, "value": math.inf})
def test_event_parser_returns_or_raises_event_error(doc: dict[str, Any]) -> None:
    for raw in (doc, json.dumps(doc, allow_nan=True).encode()):
        try:
            ev = parse_event(raw)
        except EventError:
            continue
        assert parse_event(dump_event(ev)) == ev  # whatever is accepted round-trips


@FUZZ
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
def test_event_parser_on_random_bytes(raw: bytes) -> None:
    with contextlib.suppress(EventError):
        parse_event(raw)


# --- rule files ---------------------------------------------------------------------------------------------
_BASE_RULE = """\
study:
  id: FUZZ-1
  title: "Fuzz study"
  sponsor: commercial
  target: 10
  opens: 2026-01-01
  closes: 2027-01-01
  settings: [community]
  team: fuzz
concepts:
  t2dm: {icd10: [E11]}
  egfr: {loinc: [62238-1], unit: mL/min/1.73m2}
  insulin: {atc: [A10A]}
include:
  crit: %s
"""
_NAMES = st.sampled_from(["age", "sex", "t2dm", "egfr", "insulin", "imd_decile", "setting", "nope", "ethnic_group"])
_TRANSFORMS = st.sampled_from(
    [
        "ever",
        "within('90d')",
        "latest('180d')",
        "count('1y')",
        "min('30d')",
        "max",
        "within('-1d')",
        "latest(1)",
        "within('99999999999d')",
        "change('1y')",
        "nope",
    ]
)
_LITERALS = st.one_of(
    st.integers(-(10**20), 10**20).map(str),
    st.floats(allow_nan=False, allow_infinity=False).map(repr),
    st.sampled_from(["true", "false", "null", "'F'", '"x"', "1e309", "0x10", "'", "[1, 2]", "{}"]),
)


def _expressions() -> st.SearchStrategy[str]:
    atom = st.one_of(
        _NAMES,
        st.tuples(_NAMES, _TRANSFORMS).map(lambda t: f"{t[0]}|{t[1]}"),
        _LITERALS,
    )
    ops = st.sampled_from(["&&", "||", ">=", "<", "==", "!=", "+", "-", "*", "/", "%", "^", " in ", "?"])
    return st.recursive(
        atom,
        lambda kids: st.one_of(
            st.tuples(kids, ops, kids).map(lambda t: f"{t[0]} {t[1]} {t[2]}"),
            kids.map(lambda e: f"({e})"),
            kids.map(lambda e: f"!{e}"),
            st.tuples(kids, kids, kids).map(lambda t: f"{t[0]} ? {t[1]} : {t[2]}"),
        ),
        max_leaves=12,
    )


@FUZZ
@given(_expressions())
def test_rule_loader_returns_or_raises_rule_error_on_generated_expressions(expr: str) -> None:
    try:
        loads_study(_BASE_RULE % json.dumps(expr), RULES / "fuzz.yaml")
    except RuleError as exc:
        assert str(exc).startswith(str(RULES / "fuzz.yaml"))


_SEED_RULES = sorted(RULES.glob("*.yaml"))


@st.composite
def mutated_rule_files(draw: Any) -> str:
    text = draw(st.sampled_from(_SEED_RULES)).read_text()
    for _ in range(draw(st.integers(1, 5))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["delete", "insert", "duplicate_line"]))
        if op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)) :]
        elif op == "insert":
            chunk = draw(st.text(alphabet=st.sampled_from(list(":-[]{}|&*!'\"#\n 0123456789(),.^e")), max_size=8))
            text = text[:pos] + chunk + text[pos:]
        else:
            lines = text.splitlines(keepends=True)
            i = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: i + 1] + lines[i:])
    return text


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck), database=None)
@given(mutated_rule_files())
def test_rule_loader_returns_or_raises_rule_error_on_mutated_files(text: str) -> None:
    with contextlib.suppress(RuleError):
        loads_study(text, RULES / "mutated.yaml")


@pytest.mark.parametrize("depth", [60, 200])
def test_rule_loader_on_deeply_nested_expressions(depth: int) -> None:
    """Issue 17: ~60 nested parentheses raised an uncaught RecursionError."""
    with contextlib.suppress(RuleError):
        loads_study(_BASE_RULE % json.dumps("(" * depth + "age >= 18" + ")" * depth), RULES / "deep.yaml")
