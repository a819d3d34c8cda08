"""decode_batch (the batch fast path) against parse_event + events_to_frames (the per-event path).

The property: for any list of payloads, valid or broken in any of the ways below, both paths accept and reject
the same payloads with the same errors, build the same frames, and apply_frames on the fast frames gives the
same state and touched patients as apply_events on the parsed events.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal, assert_series_equal

from screener.errors import EventError
from screener.events import Event, dump_event, parse_event
from screener.ingest import KEY_SCHEMA, DecodedBatch, decode_batch
from screener.state import PatientState, apply_events, apply_frames, events_to_frames
from screener.vocab import CODE_SYSTEMS, ETHNIC_GROUPS, KINDS, ROUTES, SCHEMAS, SETTINGS, STATUSES
from tests.hypothesis_profiles import examples

# --- valid events ------------------------------------------------------------------------------------------
_TEXT = st.text(alphabet=st.sampled_from(list("abcXYZ019-_.é中 ")), min_size=1, max_size=10)
_IDS = st.sampled_from(["P1", "P2", "P3", "P4"])
_EVENT_IDS = st.sampled_from([f"e{i}" for i in range(8)])


@st.composite
def timestamps(draw: st.DrawFn) -> Any:
    """A timezone-aware instant in one of the written forms parse_event accepts (and a few it does not)."""
    moment = draw(st.datetimes(min_value=datetime(1990, 1, 1), max_value=datetime(2030, 12, 31)))
    if draw(st.booleans()):
        moment = moment.replace(microsecond=0)
    offset = timedelta(minutes=draw(st.integers(-23 * 60 - 59, 23 * 60 + 59)))
    aware = moment.replace(tzinfo=timezone(offset))
    form = draw(st.sampled_from(["iso"] * 5 + ["z"] * 4 + ["space", "epoch", "naive", "date", "odd"]))
    if form == "odd":  # written forms where parsers tend to differ
        return draw(
            st.sampled_from(
                [
                    "2026-01-01T09:30:00.1234567Z",
                    "2026-01-01t09:30:00z",
                    "2026-06-30T23:59:60Z",
                    "2026-01-01T09:30:00+0100",
                    "2026-01-01T09:30:00+24:00",
                    "1000-01-01T00:30:00+01:00",
                    "2999-12-31T23:30:00-01:00",
                    "2026-01-01T09:30Z",
                    "2026-01-01T9:30:00Z",
                    "2026-01-01T24:00:00Z",
                    "2026-01-01T09:30:00.Z",
                    "2026-01-01T09:30:00,5Z",
                    "+2026-01-01T09:30:00Z",
                    "2026-01-01T09:30:00 Z",
                    "2026-01-01T09:30:00+01",
                ]
            )
        )
    if form == "z":
        return aware.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if form == "space":
        return aware.isoformat(sep=" ")
    if form == "epoch":
        return int(aware.timestamp())
    if form == "naive":
        return moment.isoformat()
    if form == "date":
        return moment.date().isoformat()
    return aware.isoformat()


@st.composite
def persons(draw: st.DrawFn) -> dict[str, Any]:
    person: dict[str, Any] = {}
    if draw(st.booleans()):
        born = draw(st.dates(date(1920, 1, 1), date(2025, 12, 31)))
        person["birth_date"] = draw(
            st.sampled_from(
                [
                    born.isoformat(),
                    born.isoformat(),
                    f"{born.year}-{born.month}-{born.day}",
                    f"{born.isoformat()}T00:00:00",
                    born.strftime("%Y%m%d"),
                    f"{born.year}-02-29",
                    f"{born.year}-04-31",
                    f"{born.isoformat()}Z",
                ]
            )
        )
    if draw(st.booleans()):
        person["sex"] = draw(st.sampled_from(["F", "M", "O", "U"]))
    if draw(st.booleans()):
        person["ethnic_group"] = draw(st.sampled_from(ETHNIC_GROUPS))
    if draw(st.booleans()):
        person["ethnic_category"] = draw(st.sampled_from(["A", "B", "Z"]))
    if draw(st.booleans()):
        person["lsoa"] = draw(_TEXT)
    if draw(st.booleans()):
        person["imd_decile"] = draw(st.integers(1, 10))
    if draw(st.booleans()):
        person["postcode_district"] = draw(st.sampled_from(["HX3", "LS1", "WF17"]))
    if draw(st.booleans()):
        person["nhs_number"] = draw(st.from_regex(r"\A[0-9]{10}\Z"))
    if draw(st.integers(0, 4)) == 0:
        person["merged_from"] = draw(_IDS)
    return person


@st.composite
def events(draw: st.DrawFn) -> dict[str, Any]:
    """A JSON-ready event dict that Event.model_validate accepts."""
    kind = draw(st.sampled_from(KINDS))
    ev: dict[str, Any] = {
        "event_id": draw(_EVENT_IDS),
        "source": draw(st.sampled_from(["synthetic", "hl7", "fhir"])),
        "kind": kind,
        "patient_id": draw(_IDS),
        "occurred_at": draw(timestamps()),
    }
    if draw(st.booleans()):
        ev["schema"] = draw(st.sampled_from(SCHEMAS))
    if kind == "person":
        ev["person"] = draw(persons())
    elif kind not in ("death", "visit") or draw(st.booleans()):
        if kind == "consent" and draw(st.booleans()):
            ev["code"] = {"system": "local", "value": "do-not-contact"}
        else:
            ev["code"] = {
                "system": draw(st.sampled_from(CODE_SYSTEMS)),
                "value": draw(st.sampled_from(["E11.9", "4548-4", "I63", "x"])),
            }
    if draw(st.booleans()):
        ev["value"] = draw(
            st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-(10**6), 10**6), _TEXT)
        )
    if draw(st.booleans()):
        ev["unit"] = draw(st.sampled_from(["mmol/L", "%", "mL/min/1.73m2"]))
    if draw(st.booleans()):
        ev["status"] = draw(st.sampled_from(STATUSES))
    if draw(st.booleans()):
        ev["setting"] = draw(st.sampled_from(SETTINGS))
    if draw(st.booleans()):
        ev["site"] = draw(_TEXT)
    if draw(st.booleans()):
        ev["recorded_at"] = draw(timestamps())
    if draw(st.integers(0, 5)) == 0:
        ev["corrects"] = draw(_EVENT_IDS)
    if ev.get("schema") != "screener.event/v1" and draw(st.booleans()):
        ev.update(draw(v2_fields()))
    return ev


_CODES = st.fixed_dictionaries(
    {"system": st.sampled_from(CODE_SYSTEMS), "value": st.sampled_from(["24623002", "260385009", "x", "E11"])}
)
_NUMBERS = st.one_of(st.floats(allow_nan=False, allow_infinity=False, width=32), st.integers(-1000, 1000))


@st.composite
def v2_fields(draw: st.DrawFn) -> dict[str, Any]:
    """Some of the v2 fields, each valid alone (an end before the start or a reversed range is still possible)."""
    ev: dict[str, Any] = {}
    if draw(st.booleans()):
        ev["qualifiers"] = draw(st.lists(_CODES, max_size=3))
    if draw(st.booleans()):
        ev["ended_at"] = draw(timestamps())
    if draw(st.booleans()):
        dose: dict[str, Any] = {"value": draw(st.one_of(st.floats(0, 1e6, width=32), st.integers(0, 1000)))}
        if draw(st.booleans()):
            dose["unit"] = draw(st.sampled_from(["mg", "mL", "puff"]))
        ev["dose"] = dose
    if draw(st.booleans()):
        ev["route"] = draw(st.sampled_from(ROUTES))
    if draw(st.booleans()):
        ev["ref_low"] = draw(_NUMBERS)
    if draw(st.booleans()):
        ev["ref_high"] = draw(_NUMBERS)
    if draw(st.booleans()):
        ev["value_code"] = draw(_CODES)
    if draw(st.booleans()):
        ev["encounter_id"] = draw(st.sampled_from(["V1", "V2", "enc-9"]))
    if draw(st.booleans()):
        ev["location"] = draw(st.sampled_from(["Ward 7", "Bed 3", "ED"]))
    return ev


# --- broken events -----------------------------------------------------------------------------------------
_ODD = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.floats(allow_nan=False, width=32),
    st.just([]),
    st.just({}),
    st.just(["x"]),
    st.just({"a": 1}),
    st.text(max_size=3),
    st.just(" padded "),
    st.just(""),
    st.just("x" * 200),
)
_FIELDS = [
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
]


@st.composite
def mutated(draw: st.DrawFn, ev: dict[str, Any]) -> dict[str, Any]:
    ev = json.loads(json.dumps(ev))
    how = draw(
        st.sampled_from(["type", "missing", "unknown", "nested", "enum", "naive", "pad", "kind", "v2", "nonfinite"])
    )
    name = draw(st.sampled_from(_FIELDS))
    if how == "type":
        ev[name] = draw(_ODD)
    elif how == "missing":
        ev.pop(name, None)
    elif how == "unknown":
        ev[draw(st.sampled_from(["surprise", "schema_", "Event_id", "codes"]))] = draw(_ODD)
    elif how == "nested":
        target = ev.setdefault(draw(st.sampled_from(["code", "person", "dose", "value_code"])), {})
        if isinstance(target, dict):
            target[
                draw(
                    st.sampled_from(
                        [
                            "system",
                            "value",
                            "sex",
                            "imd_decile",
                            "birth_date",
                            "extra",
                            "nhs_number",
                            "ethnic_category",
                            "merged_from",
                            "unit",
                        ]
                    )
                )
            ] = draw(_ODD)
    elif how == "enum":
        ev[draw(st.sampled_from(["kind", "status", "setting", "schema", "route"]))] = draw(
            st.sampled_from(["vitals", "Active", "screener.event/v3", "HOSPITAL", "person ", "oral "])
        )
    elif how == "naive":
        ev[draw(st.sampled_from(["occurred_at", "recorded_at", "ended_at"]))] = "2026-01-01T09:30:00"
    elif how == "v2":  # a v2 field on a v1 event, or a v2 event with them
        ev["schema"] = draw(st.sampled_from(SCHEMAS))
        ev.update(draw(v2_fields()))
    elif how == "nonfinite":  # in a dict the lean schema sees a float; in JSON, NaN/Infinity literals
        ev[draw(st.sampled_from(["value", "ref_low", "ref_high"]))] = draw(
            st.sampled_from([1e400, -1e400, float("nan")])
        )
    elif how == "pad":
        pad = draw(st.sampled_from([" ", "\t", "\u00a0", "\u2003", "\n"]))
        if isinstance(ev.get(name), str):
            ev[name] = pad + ev[name]
        elif name in ("qualifiers", "value_code", "dose") and ev.get(name):
            target = ev[name][0] if name == "qualifiers" else ev[name]
            key = "unit" if name == "dose" else "value"
            if isinstance(target, dict) and isinstance(target.get(key), str):
                target[key] += pad
    else:
        ev["kind"] = draw(st.sampled_from(KINDS))
    return ev


@st.composite
def payloads(draw: st.DrawFn) -> bytes:
    ev = draw(events())
    roll = draw(st.integers(0, 9))
    if roll >= 7:
        ev = draw(mutated(ev))
    text = json.dumps(
        ev, separators=draw(st.sampled_from([(",", ":"), (", ", ": ")])), ensure_ascii=draw(st.booleans())
    )
    if roll == 9:
        return draw(
            st.sampled_from(
                [
                    text[: len(text) // 2].encode(),
                    b"",
                    b"not json",
                    b"\xff\xfe",
                    b"[]",
                    b"null",
                    b"42",
                    b'"text"',
                    text.encode() + b" ",
                    b" " + text.encode(),
                    text.encode() + b"\n" + text.encode(),
                    text.replace('"kind"', '"kind": "death", "kind"', 1).encode(),
                    text.encode()[:-1] + b",}",
                    text.replace("{", '{"value": NaN, ', 1).encode(),
                    text.replace("{", '{"value": 1e400, ', 1).encode(),
                    text.replace("{", '{"ref_low": -Infinity, ', 1).encode(),
                    text.replace("{", '{"dose": {"value": NaN}, ', 1).encode(),
                ]
            )
        )
    return text.encode()


# --- the reference ---------------------------------------------------------------------------------------
def per_event(raw: list[bytes]) -> tuple[list[tuple[int, Event]], list[tuple[int, EventError]]]:
    ok: list[tuple[int, Event]] = []
    bad: list[tuple[int, EventError]] = []
    for i, payload in enumerate(raw):
        try:
            ok.append((i, parse_event(payload)))
        except EventError as exc:
            bad.append((i, exc))
    return ok, bad


def _err(exc: EventError) -> tuple[Any, ...]:
    return (type(exc), str(exc), exc.message, exc.field, exc.expected, repr(exc.received))


def assert_same(raw: list[bytes], base: list[Event], changed_only: bool) -> DecodedBatch:
    """decode_batch(raw) gives parse_event's events and errors, and applies as they do; returns that decode."""
    ok, bad = per_event(raw)
    got = decode_batch(raw)
    assert [(i, _err(e)) for i, e in got.rejects] == [(i, _err(e)) for i, e in bad]
    evs = [e for _, e in ok]
    for fast, ref in zip(got.frames, events_to_frames(evs), strict=True):
        assert_frame_equal(fast, ref)
    keys = pl.DataFrame(
        [
            (
                i,
                e.patient_id,
                e.source,
                e.kind,
                e.code.system if e.code else None,
                e.code.value if e.code else None,
                e.unit,
                e.status,
                e.setting,
            )
            for i, e in ok
        ],
        schema=KEY_SCHEMA,
        orient="row",
    )
    assert_frame_equal(got.keys, keys)
    state, _ = apply_events(PatientState(), base)
    if evs:
        s1, t1 = apply_events(state, evs, changed_only=changed_only)
        s2, t2 = apply_frames(state, *got.frames, changed_only=changed_only)
        # Row order within the state frames is not part of apply_events' contract (joins, group-bys).
        for a, b in ((s1.persons, s2.persons), (s1.facts, s2.facts), (s1.retracted, s2.retracted)):
            assert_frame_equal(a, b, check_row_order=False)
        assert_series_equal(t1, t2)
    return got


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(payloads(), max_size=25), base=st.lists(events(), max_size=6), changed_only=st.booleans())
def test_fast_path_agrees_with_parse_event(raw: list[bytes], base: list[dict[str, Any]], changed_only: bool) -> None:
    base_events = []
    for ev in base:
        with contextlib.suppress(EventError):
            base_events.append(parse_event(ev))
    assert_same(raw, base_events, changed_only)


def test_canonical_events_take_the_fast_path_and_broken_ones_keep_their_errors() -> None:
    good = Event.model_validate(
        {
            "event_id": "e1",
            "source": "t",
            "kind": "measurement",
            "patient_id": "P1",
            "occurred_at": "2026-01-01T09:30:00.25+01:00",
            "code": {"system": "LOINC", "value": "62238-1"},
            "value": 42,
            "unit": "mL",
            "setting": "hospital",
        }
    )
    person = Event.model_validate(
        {
            "event_id": "p1",
            "source": "t",
            "kind": "person",
            "patient_id": "P1",
            "occurred_at": "2026-01-01T09:00:00Z",
            "person": {"birth_date": "1950-02-03", "sex": "F", "imd_decile": 3, "merged_from": "OLD"},
        }
    )
    raw = [
        dump_event(good),
        b"{oops",
        dump_event(person),
        b'{"event_id": "x"}',
        dump_event(good).replace(b'"t"', b'" t "'),
    ]
    got = decode_batch(raw)
    assert got.slow == 3  # the two broken ones and the one with whitespace to strip
    assert [i for i, _ in got.rejects] == [1, 3]
    assert got.rejects[0][1].message == "not valid JSON"
    assert got.rejects[1][1].field == "source"
    assert got.keys["index"].to_list() == [0, 2, 4]
    assert got.keys["source"].to_list() == ["t", "t", "t"]
    assert got.facts["occurred_at"].to_list() == [datetime(2026, 1, 1, 8, 30, 0, 250000, tzinfo=UTC)] * 2
    assert got.facts["value"].to_list() == [42.0, 42.0]
    assert got.control.rows() == [(1, "P1", "merge", "OLD")]
    assert got.persons.filter(pl.col("seq") == 1)["birth_date"].to_list() == [date(1950, 2, 3)]
    assert_same(raw, [], changed_only=True)


def test_empty_batch_and_none_payloads() -> None:
    got = decode_batch([])
    assert got.accepted == 0 and got.rejects == []
    assert [f.height for f in got.frames] == [0, 0, 0]
    got = decode_batch([None])
    assert got.rejects[0][1].message == "not valid JSON"


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(lists=st.lists(st.lists(payloads(), max_size=8), min_size=1, max_size=4))
def test_one_decode_split_back_equals_a_decode_per_list(lists: list[list[bytes]]) -> None:
    starts, raw = [], []
    for payload_list in lists:
        starts.append(len(raw))
        raw.extend(payload_list)
    parts = decode_batch(raw).split(starts)
    assert len(parts) == len(lists)
    for part, payload_list in zip(parts, lists, strict=True):
        alone = decode_batch(payload_list)
        assert [(i, _err(e)) for i, e in part.rejects] == [(i, _err(e)) for i, e in alone.rejects]
        assert_frame_equal(part.keys, alone.keys)
        # seq keeps the whole batch's numbering; the order and everything else are the part's own.
        for got, want in zip(part.frames, alone.frames, strict=True):
            assert_frame_equal(got.drop("seq"), want.drop("seq"))
            assert got["seq"].is_sorted()


@settings(max_examples=examples(100), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(payloads(), max_size=25), chunk=st.integers(1, 7))
def test_a_decode_in_pieces_equals_one_decode(raw: list[bytes], chunk: int) -> None:
    """The lean validation in pieces of ``DECODE_CHUNK`` payloads (so the GIL is let go between them) decodes
    exactly what one call over the whole batch does."""
    import screener.ingest as ingest

    whole = decode_batch(raw)
    saved = ingest.DECODE_CHUNK
    ingest.DECODE_CHUNK = chunk
    try:
        pieces = decode_batch(raw)
    finally:
        ingest.DECODE_CHUNK = saved
    assert [(i, _err(e)) for i, e in pieces.rejects] == [(i, _err(e)) for i, e in whole.rejects]
    for got, want in zip((*pieces.frames, pieces.keys), (*whole.frames, whole.keys), strict=True):
        assert_frame_equal(got, want)


def test_an_edge_space_or_control_character_of_a_long_field_takes_the_exact_path() -> None:
    """The event id and the text (a value that is a text) are searched at each end separately
    (``_LONG_STR_COLS``): any character parse_event's stripping could touch, at either end, still sends the event
    to parse_event, and the decoded frames are parse_event's; the same characters inside the value do not."""
    base = {
        "event_id": "omop-measurement-12-3004410-20240102",
        "source": "t",
        "kind": "observation",
        "patient_id": "P1",
        "occurred_at": "2026-01-01T09:00:00Z",
        "code": {"system": "LOINC", "value": "62238-1"},
        "value": "a free text of some length, as an observation gives",  # the fact's text
    }
    edges = [" ", "\t", "\n", "\x00", "\x1f", "\x7f", "\x85", "\xa0", "\u1680", "\u2000", "\u2028", "\u3000"]
    raw, expect_slow = [], 0
    for field in ("event_id", "value"):
        for ch in edges:
            for value in (ch + base[field], base[field] + ch):  # type: ignore[operator]  # both are str
                raw.append(json.dumps({**base, field: value}).encode())
                expect_slow += 1
        raw.append(json.dumps({**base, field: f"x{edges[0]}{edges[-1]}x"}).encode())
    got = decode_batch(raw)
    assert got.slow == expect_slow
    events = []
    for payload in raw:
        with contextlib.suppress(EventError):
            events.append(parse_event(payload))
    want = events_to_frames(events)
    assert_frame_equal(got.facts.drop("seq"), want[1].drop("seq"), check_dtypes=False)
