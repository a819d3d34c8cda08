"""The Rust fast path of :func:`screener.ingest.decode_batch`: JSON payloads decoded by Polars with the GIL let go.

:func:`decode_json` reads a whole batch of payloads with one ``str.json_decode`` against an explicit schema
(:data:`_DTYPE`) and vouches for a row only when the payload is, byte for byte, what Polars' own JSON writer
makes of the decoded values (``struct.json_encode``, absent fields left out). That round trip is the guard against
everything the reader does silently: an unknown key (dropped), a duplicate key (one kept), a number where a text
is expected (read as its digits), a float or a bool where an integer is expected (cast), an integer too big for
one (null), an explicit ``null``, any whitespace between tokens, an escape written another way, a document that
is not an object. None of these survive the comparison: the payload differs from the writer's text. A payload
that passes is the canonical JSON of values Polars holds, so ``parse_event`` reading it sees those same values
(the argument needs no trust in the reader: the writer's text means the values it was written from, and the
null fields removed are only ever whole fields, as a double quote inside a written string is always escaped);
what is left to check is the lean schema's own rules (required fields, enums, lengths, patterns, ranges), here
vectorised (:func:`_lean_ok`), and then the rest of the contract (:func:`screener._lean_event.check`).

Every other payload (and any row this module cannot judge, e.g. one that makes the whole decode fail: the batch is
then halved until the bad rows are alone) is returned as *left over*: the lean pydantic path, then
``parse_event``, judge it. Nothing is ever rejected here.

The canonical field order is the event's own (:func:`screener.events.dump_event` writes it); a payload with its
keys in another order is left over (still correct, at the lean path's cost).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import polars as pl
from polars.exceptions import PolarsError

from screener._lean_event import PERSON_FIELDS, select_columns
from screener.vocab import CODE_SYSTEMS, ETHNIC_GROUPS, KINDS, ROUTES, SCHEMAS, SETTINGS, SEXES, STATUSES

__all__ = ["decode_json", "decode_json_lazy", "without_null_fields"]

_F = TypeVar("_F", pl.DataFrame, pl.LazyFrame)
_CODE = pl.Struct({"system": pl.String(), "value": pl.String()})
_PERSON = pl.Struct({n: pl.Int64() if n == "imd_decile" else pl.String() for n in PERSON_FIELDS})


def _dtype(value: pl.DataType) -> pl.Struct:
    """The event as Polars reads it, fields in the event's order (the order the round trip compares)."""
    s = pl.String()
    return pl.Struct(
        {
            "schema": s,
            "event_id": s,
            "source": s,
            "kind": s,
            "patient_id": s,
            "occurred_at": s,
            "recorded_at": s,
            "code": _CODE,
            "value": value,
            "unit": s,
            "status": s,
            "setting": s,
            "site": s,
            "person": _PERSON,
            "corrects": s,
            "qualifiers": pl.List(_CODE),
            "ended_at": s,
            "dose": pl.Struct({"value": pl.Float64(), "unit": s}),
            "route": s,
            "ref_low": pl.Float64(),
            "ref_high": pl.Float64(),
            "value_code": _CODE,
            "encounter_id": s,
            "location": s,
        }
    )


#: A number as ``value`` (the common case), then a text (tried only on the rows the first read could not vouch for).
_DTYPE = _dtype(pl.Float64())
_DTYPE_TEXT = _dtype(pl.String())

# Polars' writer spells every null field out; the payload leaves an absent field out. Inside a written string every
# double quote is escaped (\"), so `,"name":null` and `{"name":null` can only be a field, never text.
_NULL_FIELD = r',"[a-z_]+":null'
_NULL_FIRST = r'\{"[a-z_]+":null,?'


def decode_json(raw: pl.Series) -> tuple[pl.DataFrame, pl.Series]:
    """``raw`` (Binary payloads, position = payload index) as the lean columns of the rows vouched for
    (:func:`screener._lean_event.select_columns`, in payload order) and the positions left over (ascending)."""
    payloads = pl.DataFrame({"raw": raw}).with_row_index("index").cast({"index": pl.Int64})
    # invalid UTF-8 fails the cast of the whole column: such a payload is left with a null text
    text = _halving(payloads, lambda rows: rows.with_columns(pl.col("raw").cast(pl.String)), pl.String())
    todo = text.filter(_shaped()).with_columns(_texty().alias("_texty"))
    nums, _ = _vouched(todo.filter(~pl.col("_texty")), _DTYPE)
    texts, _ = _vouched(todo.filter(pl.col("_texty")), _DTYPE_TEXT)
    parts = [_unpack(nums, text=False)]
    if texts.height:
        parts.append(_unpack(texts, text=True))
    cols = parts[0] if len(parts) == 1 else pl.concat(parts, how="vertical").sort("index")
    cols = cols.filter(_lean_ok())
    left = text.join(cols.select("index"), on="index", how="anti", maintain_order="left")["index"]
    return select_columns(cols), left


def decode_json_lazy(raw: pl.Series) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """:func:`decode_json` as queries (the columns vouched for, the ``index`` of the rest), to collect in one call
    with what follows (each Polars call lets the GIL go and must take it back). A payload that fails the whole
    read (invalid UTF-8, a type the reader cannot take) fails the collect: then call :func:`decode_json`."""
    text = (
        pl.LazyFrame({"raw": raw})
        .with_row_index("index")
        .with_columns(pl.col("index").cast(pl.Int64), pl.col("raw").cast(pl.String))
    )
    todo = text.filter(_shaped()).with_columns(_texty().alias("_texty"))
    parts = []
    for texty, dtype in ((False, _DTYPE), (True, _DTYPE_TEXT)):
        rows = todo.filter(pl.col("_texty") == texty).with_columns(pl.col("raw").str.json_decode(dtype).alias("d"))
        parts.append(_unpack(rows.filter(_same()), text=texty))
    # cached: both results read it (the optimizer would otherwise read the batch twice for the left-over rows)
    cols = pl.concat(parts, how="vertical").sort("index").filter(_lean_ok()).cache()
    left = text.select("index").join(cols.select("index"), on="index", how="anti", maintain_order="left")
    return select_columns(cols), left


@functools.cache
def _shaped() -> pl.Expr:
    """Cheap reasons not to try a payload at all: not an object written without outer whitespace (e.g. empty, or
    a list), or a NaN/Infinity literal (the reader fails the whole call on one; a text holding one is left too)."""
    payload = pl.col("raw")
    return (
        payload.str.starts_with('{"')
        & payload.str.ends_with("}")
        & ~payload.str.contains("NaN", literal=True)
        & ~payload.str.contains("Infinity", literal=True)
    ).fill_null(False)


@functools.cache
def _texty() -> pl.Expr:
    """A text ``value`` would fail the numeric read of the whole call: each code (code, value_code, a qualifier)
    writes one `"system":"` and one `"value":"`, so one `"value":"` more is the event's own value as a text."""
    payload = pl.col("raw")
    return payload.str.count_matches('"value":"', literal=True) > payload.str.count_matches('"system":"', literal=True)


def without_null_fields(written: pl.Expr) -> pl.Expr:
    """Polars' JSON text of a struct (``struct.json_encode``) with its null fields, at any depth, left out: the
    canonical payload's spelling (the connector SDK writes events with it, :mod:`screener.connector.encode`)."""
    return written.str.replace_all(_NULL_FIELD, "").str.replace_all(_NULL_FIRST, "{")


@functools.cache
def _same() -> pl.Expr:
    """The payload is, byte for byte, Polars' JSON of the decoded ``d`` with its null fields left out."""
    written = without_null_fields(pl.col("d").struct.json_encode())
    return (written == pl.col("raw")).fill_null(False)


def _unpack(good: _F, *, text: bool) -> _F:
    """The decoded struct as columns; ``value`` (a number) and ``text`` (a text value) apart."""
    ev = pl.col("d")
    value = ev.struct.field("value")
    return good.select(
        "index",
        *[ev.struct.field(n) for n in _DTYPE.to_schema() if n != "value"],
        (pl.lit(None, pl.Float64) if text else value).alias("value"),
        (value if text else pl.lit(None, pl.String)).alias("text"),
    )


def _vouched(rows: pl.DataFrame, dtype: pl.Struct) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(``index``, ``d``: the decoded struct) of the rows whose payload is the writer's text of their decoded
    values, and the rest of ``rows`` (``index``, ``raw``)."""
    if rows.height == 0:
        return pl.DataFrame(schema={"index": pl.Int64(), "d": dtype}), rows
    decoded = _decode(rows, dtype)
    same = _same()
    flagged = decoded.with_columns(same.alias("_same"))
    good = flagged.filter(pl.col("_same")).select("index", "d")
    rest = flagged.filter(~pl.col("_same")).select("index", "raw")
    return good, rest


def _decode(rows: pl.DataFrame, dtype: pl.Struct) -> pl.DataFrame:
    """``rows`` with ``d``, ``raw`` decoded (a row on which the reader fails: null)."""
    return _halving(rows, lambda part: part.with_columns(pl.col("raw").str.json_decode(dtype).alias("d")), dtype, "d")


def _halving(
    rows: pl.DataFrame, step: Callable[[pl.DataFrame], pl.DataFrame], dtype: pl.DataType, out: str = "raw"
) -> pl.DataFrame:
    """``step(rows)``; where one row fails the whole call, the rows are halved until the failing ones are alone
    (a few extra calls per bad row), and each of those gets a null ``out`` column instead."""
    try:
        return step(rows)
    except PolarsError:
        if rows.height <= 1:
            return rows.with_columns(pl.lit(None, dtype).alias(out))
        half = rows.height // 2
        return pl.concat([_halving(rows[:half], step, dtype, out), _halving(rows[half:], step, dtype, out)])


@functools.cache
def _lean_ok() -> pl.Expr:
    """The lean schema's rules (:data:`screener._lean_event.LEAN`) on the decoded columns: required fields, enums,
    lengths, patterns and ranges. A row breaking one is left over (the lean path gives it its error)."""

    def length(c: pl.Expr, lo: int, hi: int) -> pl.Expr:
        return c.is_null() | c.str.len_chars().is_between(lo, hi)

    def one_of(c: pl.Expr, values: tuple[str, ...]) -> pl.Expr:
        return c.is_null() | c.is_in(list(values))

    def finite(c: pl.Expr) -> pl.Expr:
        return c.is_null() | c.is_finite()

    def code_ok(c: pl.Expr) -> pl.Expr:
        system, value = c.struct.field("system"), c.struct.field("value")
        return c.is_null() | (system.is_in(list(CODE_SYSTEMS)) & value.str.len_chars().is_between(1, 64))

    col = pl.col
    person = col("person").struct
    dose = col("dose").struct
    q = pl.element()
    q_system, q_value = q.struct.field("system"), q.struct.field("value")
    q_bad = (
        q.is_null()
        | ~q_system.is_in(list(CODE_SYSTEMS)).fill_null(False)
        | ~q_value.str.len_chars().is_between(1, 64).fill_null(False)
    )
    rules = [
        *[col(c).is_not_null() for c in ("event_id", "source", "kind", "patient_id", "occurred_at")],
        one_of(col("schema"), SCHEMAS),
        length(col("event_id"), 1, 128),
        length(col("source"), 1, 64),
        length(col("patient_id"), 1, 64),
        one_of(col("kind"), KINDS),
        code_ok(col("code")),
        finite(col("value")),
        length(col("unit"), 0, 32),
        one_of(col("status"), STATUSES),
        one_of(col("setting"), SETTINGS),
        length(col("site"), 0, 64),
        one_of(person.field("sex"), SEXES),
        one_of(person.field("ethnic_group"), ETHNIC_GROUPS),
        person.field("ethnic_category").is_null() | person.field("ethnic_category").str.contains(r"^[A-Z]$"),
        length(person.field("lsoa"), 0, 16),
        person.field("imd_decile").is_null() | person.field("imd_decile").is_between(1, 10),
        length(person.field("postcode_district"), 0, 8),
        person.field("nhs_number").is_null() | person.field("nhs_number").str.contains(r"^[0-9]{10}$"),
        length(person.field("merged_from"), 1, 64),
        length(col("corrects"), 1, 128),
        col("qualifiers").is_null()
        | ((col("qualifiers").list.len() <= 16) & ~col("qualifiers").list.eval(q_bad).list.any()),
        col("dose").is_null()
        | (dose.field("value").is_not_null() & (dose.field("value") >= 0) & dose.field("value").is_finite()),
        length(dose.field("unit"), 1, 32),
        one_of(col("route"), ROUTES),
        finite(col("ref_low")),
        finite(col("ref_high")),
        code_ok(col("value_code")),
        length(col("encounter_id"), 1, 64),
        length(col("location"), 1, 64),
    ]
    return pl.all_horizontal(rules).fill_null(False)
