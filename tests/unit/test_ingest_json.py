"""The Rust read of decode_batch (screener._json_event) against parse_event, on payloads in the canonical form
(the event's field order, compact separators: what dump_event writes, so what the Rust read may vouch for) and on
byte-level mutations of them that a JSON reader tends to read silently (wrong types, missing, extra or duplicate
keys, numeric strings, bools and floats for integers, huge integers, NaN, whitespace, escapes, nested extras,
documents that are not objects, invalid UTF-8).

The property is test_ingest's: decode_batch accepts and rejects what parse_event does, with its errors, and builds
its frames; and so does decode_batch_lean (the path without the Rust read), so the two agree.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import polars as pl
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from screener._json_event import decode_json
from screener._lean_event import PERSON_FIELDS
from screener.errors import EventError
from screener.events import Event, dump_event, parse_event
from screener.ingest import decode_batch_lean
from tests.hypothesis_profiles import examples
from tests.unit.test_ingest import _FIELDS, _err, assert_same, events, mutated

_NESTED_ORDER = {
    "code": ("system", "value"),
    "value_code": ("system", "value"),
    "dose": ("value", "unit"),
    "person": PERSON_FIELDS,
}


def _ordered(d: dict[str, Any], order: tuple[str, ...] | list[str]) -> dict[str, Any]:
    rank = {k: i for i, k in enumerate(order)}
    return dict(sorted(d.items(), key=lambda kv: rank.get(kv[0], len(rank))))


def canonical(ev: dict[str, Any]) -> dict[str, Any]:
    """``ev`` with its keys (and its nested objects' keys) in the event's own order; unknown keys last."""
    out = _ordered(ev, _FIELDS)
    for name, order in _NESTED_ORDER.items():
        if isinstance(out.get(name), dict):
            out[name] = _ordered(out[name], order)
    if isinstance(out.get("qualifiers"), list):
        out["qualifiers"] = [_ordered(q, ("system", "value")) if isinstance(q, dict) else q for q in out["qualifiers"]]
    return out


def _text(ev: dict[str, Any]) -> str:
    return json.dumps(ev, separators=(",", ":"), ensure_ascii=False)


#: Byte-level edits of a canonical payload: (what to find, what to put instead); the first occurrence only.
_EDITS: list[tuple[str, str]] = [
    ('"imd_decile":', '"imd_decile":"4","x":'),  # a numeric string, then an unknown key
    ('"imd_decile":', '"imd_decile":true,"q":'),
    ('"imd_decile":', '"imd_decile":99999999999999999999,"q":'),
    ('"imd_decile":', '"imd_decile":4.0,"q":'),
    ('"imd_decile":', '"imd_decile":4.5,"q":'),
    ('"value":', '"value":"42",'),
    ('"value":', '"value":true,"q":'),
    ('"value":', '"value":NaN,"q":'),
    ('"value":', '"value":1e400,"q":'),
    ('"ref_low":', '"ref_low":-Infinity,"q":'),
    ('"occurred_at":', '"occurred_at":12345,"q":'),
    ('"source":', '"source":42,"q":'),
    ('"source":', '"source":{"a":1},"q":'),
    ('"source":', '"source":["a"],"q":'),
    ('"source":', '"source":null,"q":'),
    ('"status":', '"status":null,"q":'),
    ('"kind":', '"kind":"death","kind":'),  # a duplicate key (the second one wins in pydantic)
    ('"event_id":', '"event_id":"dup","event_id":'),
    ('{"', '{"schema":null,"'),
    ('{"', '{"extra":1,"'),
    ('{"', '{"Event_id":"x","'),
    ('{"', '{ "'),
    ('":', '": '),
    (',"', ', "'),
    (',"', ',\n"'),
    ('"system":', '"system":"LOINC","extra":1,"q":'),
    ('"system":"', '"system":"\\u004c'),  # an escape for a letter
    ('"patient_id":"', '"patient_id":"\\u0050'),
    ('"patient_id":"', '"patient_id":"\\ud83d\\ude00'),  # a surrogate pair
    ('"patient_id":"', '"patient_id":"\\ud800'),  # a lone surrogate
    ('"source":"', '"source":"\\/'),
    ('"source":"', '"source":"\\t'),
    ('"source":"', '"source":"a\\u0000'),
    ('"person":{', '"person":{"nested":{"a":1},'),
    ('"code":{', '"code":{"system":"LOINC","value":"x"},"q":{'),
    ('"dose":{', '"dose":{"value":-1,"q":{'),
    ('"qualifiers":[', '"qualifiers":[null,'),
    ('"qualifiers":[', '"qualifiers":[{},'),
    ('"nhs_number":"', '"nhs_number":"\\u0661\\u0662\\u0663\\u0664\\u0665\\u0666\\u0667\\u0668\\u0669\\u0660","q":"'),
    ('"source":"', '"source":"\xff'),  # invalid UTF-8 (bytes, below)
]


@st.composite
def canonical_payloads(draw: st.DrawFn) -> bytes:
    """A canonical payload (often exactly dump_event's bytes), or one edited so a lenient reader might misread it."""
    ev = draw(events())
    roll = draw(st.integers(0, 9))
    if roll == 0:
        ev = draw(mutated(ev))
    text = _text(canonical(ev))
    if roll in (1, 2):
        with contextlib.suppress(EventError):  # a payload parse_event rejects stays as it is
            text = dump_event(parse_event(text)).decode()
    if roll >= 6:
        find, put = draw(st.sampled_from(_EDITS))
        if find in text:
            text = text.replace(find, put, 1)
    if roll == 9:
        text = draw(st.sampled_from([text + " ", " " + text, text + "x", "[" + text + "]", text[:-1], "null", "{}"]))
    raw = text.encode("utf-8", "surrogatepass")
    return raw.replace("\xff".encode(), b"\xff")


@settings(max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.lists(canonical_payloads(), max_size=25), changed_only=st.booleans())
def test_the_rust_read_agrees_with_parse_event(raw: list[bytes], changed_only: bool) -> None:
    got = assert_same(raw, [], changed_only)  # decode_batch(raw), checked against parse_event
    lean = decode_batch_lean(raw)
    assert [(i, _err(e)) for i, e in got.rejects] == [(i, _err(e)) for i, e in lean.rejects]
    for a, b in zip((*got.frames, got.keys), (*lean.frames, lean.keys), strict=True):
        assert_frame_equal(a, b)


def _event(**extra: Any) -> Event:
    doc: dict[str, Any] = {
        "event_id": "e1",
        "source": "t",
        "kind": "measurement",
        "patient_id": "P1",
        "occurred_at": "2026-01-01T09:30:00.25+01:00",
        "code": {"system": "LOINC", "value": "62238-1"},
        "value": 42.5,
        "unit": "mL",
        "setting": "hospital",
    }
    return Event.model_validate({**doc, **extra})


def test_dump_event_payloads_are_vouched_for_and_edits_are_left_over() -> None:
    """dump_event's bytes are read in Rust; any byte edit that a reader could take silently is left to the lean
    path (and still decoded or rejected as parse_event does)."""
    now = datetime(2026, 1, 1, tzinfo=UTC).isoformat()
    good = [
        dump_event(_event()),
        dump_event(_event(value="a text")),
        dump_event(_event(kind="person", code=None, value=None, person={"birth_date": "1950-02-03", "imd_decile": 3})),
        dump_event(_event(qualifiers=[{"system": "SNOMED", "value": "1"}], dose={"value": 2.0}, recorded_at=now)),
    ]
    edited = [
        good[0].replace(b'"value":42.5', b'"value":42'),  # an integer (the reader's float is written 42.0)
        good[0].replace(b'"kind":"measurement"', b'"kind":"measurement","kind":"observation"'),
        good[2].replace(b'"imd_decile":3', b'"imd_decile":3.0'),
        good[2].replace(b'"imd_decile":3', b'"imd_decile":true'),
        good[0].replace(b'"unit":"mL"', b'"unit":"mL","extra":1'),
        good[0].replace(b'"source":"t"', b'"source":"\\u0074"'),
        good[0].replace(b"{", b"{ ", 1),
        good[0] + b"\n",
    ]
    raw = good + edited
    vouched, left = decode_json(pl.Series(raw, dtype=pl.Binary))
    assert vouched["index"].to_list() == [0, 1, 2, 3]
    assert left.to_list() == list(range(4, len(raw)))
    assert vouched["text"].to_list() == [None, "a text", None, None]
    # a number written as a text is a text (pydantic's union takes the exact type), in Rust as in parse_event
    numeric_text = good[0].replace(b'"value":42.5', b'"value":"42.5"')
    assert decode_json(pl.Series([numeric_text], dtype=pl.Binary))[0]["text"].to_list() == ["42.5"]
    assert_same([numeric_text], [], changed_only=True)
    assert_same(raw, [], changed_only=True)


def test_a_row_the_reader_fails_on_is_found_alone() -> None:
    """A type the reader cannot take (an object for a text) fails the whole read: the batch is halved until that
    row is alone, and every other row is still read in Rust."""
    good = dump_event(_event())
    bad = good.replace(b'"source":"t"', b'"source":{"a":1}')
    raw = [good] * 5 + [bad] + [good] * 4 + [b"\xff\xfe"]
    vouched, left = decode_json(pl.Series(raw, dtype=pl.Binary))
    assert left.to_list() == [5, 10]
    assert vouched.height == 9
    assert_same(raw, [], changed_only=False)


def test_a_batch_mostly_in_another_form_skips_the_rust_read() -> None:
    """A producer that writes its fields in another order (or explicit nulls) is never vouched for: when a sample
    of the batch shows that, the whole batch goes to the lean path (one read, not two), with the same result."""
    from screener.ingest import RUST_SAMPLE, _worth_reading

    canonical_raw = [dump_event(_event(event_id=f"e{i}")) for i in range(2 * RUST_SAMPLE)]
    reordered = [json.dumps(dict(reversed(json.loads(p).items()))).encode() for p in canonical_raw]
    assert _worth_reading(pl.Series(canonical_raw, dtype=pl.Binary))
    assert not _worth_reading(pl.Series(reordered, dtype=pl.Binary))
    assert _worth_reading(pl.Series(reordered[:RUST_SAMPLE], dtype=pl.Binary))  # a small batch: always tried
    for raw in (reordered, canonical_raw[:RUST_SAMPLE] + reordered[RUST_SAMPLE:], canonical_raw):
        assert_same(raw, [], changed_only=True)
