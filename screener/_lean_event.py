"""The fast path's lean schema and its vectorised checks (used by :func:`screener.ingest.decode_batch`).

:data:`LEAN` validates a whole list of payloads in one pydantic-core call against the canonical event's fields,
types, enums, lengths, patterns and unknown-field rule, with no Python callback; :func:`columns` reads the
accepted dicts into a frame and :func:`check` applies the rest of the contract vectorised. Both only ever send a
row *to* ``parse_event`` (``suspect``): they never reject on their own.
"""

from __future__ import annotations

import functools
from datetime import UTC, date, datetime
from typing import Annotated, Any, NotRequired, TypeVar

import polars as pl
from pydantic import ConfigDict, Field, Json, TypeAdapter, with_config
from typing_extensions import TypedDict  # pydantic needs this one below Python 3.12

from screener.events import CODELESS_KINDS, MAX_BIRTH_AGE_YEARS, V2_FIELDS
from screener.vocab import (
    SCHEMA_V1,
    TS,
    CodeSystem,
    EthnicGroup,
    Kind,
    Route,
    SchemaName,
    Setting,
    Sex,
    Status,
)

_Frame = TypeVar("_Frame", pl.DataFrame, pl.LazyFrame)

__all__ = ["LEAN", "PERSON_FIELDS", "check", "check_lazy", "columns", "select_columns"]

# The vocabularies (Kind, CodeSystem, Status, Setting, Route, Sex, EthnicGroup) are the full model's own, imported
# from screener.vocab, so the fast path can never drift from it.

_FORBID = ConfigDict(extra="forbid")


def _s(lo: int | None = None, hi: int | None = None, pattern: str | None = None) -> Any:
    return Annotated[str, Field(min_length=lo, max_length=hi, pattern=pattern)]


@with_config(_FORBID)
class _LeanCode(TypedDict):
    system: CodeSystem
    value: _s(1, 64)  # type: ignore[valid-type]  # _s(): a call that builds a type


_Finite = Annotated[float, Field(allow_inf_nan=False)]


@with_config(_FORBID)
class _LeanDose(TypedDict):
    value: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    unit: NotRequired[_s(1, 32) | None]  # type: ignore[valid-type]  # _s(): a call that builds a type


@with_config(_FORBID)
class _LeanPerson(TypedDict, total=False):
    birth_date: str | None
    sex: Sex | None
    ethnic_group: EthnicGroup | None
    ethnic_category: _s(pattern=r"^[A-Z]$") | None  # type: ignore[valid-type]  # _s(): a call that builds a type
    lsoa: _s(hi=16) | None  # type: ignore[valid-type]  # _s(): a call that builds a type
    imd_decile: Annotated[int, Field(ge=1, le=10)] | None
    postcode_district: _s(hi=8) | None  # type: ignore[valid-type]  # _s(): a call that builds a type
    nhs_number: _s(pattern=r"^\d{10}$") | None  # type: ignore[valid-type]  # _s(): a call that builds a type
    merged_from: _s(1, 64) | None  # type: ignore[valid-type]  # _s(): a call that builds a type


_LeanEvent = with_config(_FORBID)(
    TypedDict(  # type: ignore[operator]  # the functional TypedDict form, wrapped by with_config: mypy wants a class
        "_LeanEvent",
        {
            "schema": NotRequired[SchemaName],
            "event_id": _s(1, 128),
            "source": _s(1, 64),
            "kind": Kind,
            "patient_id": _s(1, 64),
            "occurred_at": str,
            "recorded_at": NotRequired[str | None],
            "code": NotRequired[_LeanCode | None],
            "value": NotRequired[float | str | None],
            "unit": NotRequired[_s(hi=32) | None],
            "status": NotRequired[Status],
            "setting": NotRequired[Setting | None],
            "site": NotRequired[_s(hi=64) | None],
            "person": NotRequired[_LeanPerson | None],
            "corrects": NotRequired[_s(1, 128) | None],
            "qualifiers": NotRequired[Annotated[list[_LeanCode], Field(max_length=16)] | None],
            "ended_at": NotRequired[str | None],
            "dose": NotRequired[_LeanDose | None],
            "route": NotRequired[Route | None],
            "ref_low": NotRequired[_Finite | None],
            "ref_high": NotRequired[_Finite | None],
            "value_code": NotRequired[_LeanCode | None],
            "encounter_id": NotRequired[_s(1, 64) | None],
            "location": NotRequired[_s(1, 64) | None],
        },
    )
)

#: One pydantic-core call for the whole batch: a payload that fails the lean schema comes back as its bytes.
LEAN: TypeAdapter[list[Any]] = TypeAdapter(
    # _LeanEvent is a variable (the TypedDict that with_config returns), which mypy does not accept as a type
    list[Annotated[Json[_LeanEvent] | bytes, Field(union_mode="left_to_right")]]  # type: ignore[valid-type]  # _LeanEvent: a functional TypedDict
)

# A strict subset of what pydantic's datetime parser accepts: RFC 3339 with an explicit offset, years 1000-2999
# (no overflow when converting to UTC), at most microseconds.
_TS_RE = (
    r"^[12]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_DATE_RE = r"^[12]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
# Anything parse_event's whitespace stripping could touch (Unicode White_Space, plus control characters).
_EDGE = r"[\s\x00-\x20\x7f-\xa0]"
_EDGE_WS = f"^{_EDGE}|{_EDGE}$"
#: Columns whose values are long (an event id, a free text): one search for ``_EDGE_WS`` scans the whole text
#: (for an event id twice the CPU of two anchored searches, each of which looks at one end); short values (an
#: id, a code, a unit) are cheaper with the one search.
_LONG_STR_COLS = ("event_id", "text")

_STR_COLS = (
    "event_id",
    "source",
    "patient_id",
    "unit",
    "site",
    "corrects",
    "system",
    "code",
    "text",
    "lsoa",
    "postcode_district",
    "merged_from",
    "dose_unit",
    "value_code",
    "encounter_id",
    "location",
)
PERSON_FIELDS = (
    "birth_date",
    "sex",
    "ethnic_group",
    "ethnic_category",
    "lsoa",
    "imd_decile",
    "postcode_district",
    "nhs_number",
    "merged_from",
)


_CODE_TYPE = pl.Struct({"system": pl.String(), "value": pl.String()})
_PERSON_TYPE = pl.Struct({n: pl.Int64() if n == "imd_decile" else pl.String() for n in PERSON_FIELDS})
#: How :func:`columns` reads the lean dicts (``value`` is read apart: a number or a text).
_ROW_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String() for c in ("event_id", "source", "kind", "patient_id", "occurred_at", "recorded_at")},
    "schema": pl.String(),
    "code": _CODE_TYPE,
    "unit": pl.String(),
    "status": pl.String(),
    "setting": pl.String(),
    "site": pl.String(),
    "person": _PERSON_TYPE,
    "corrects": pl.String(),
    "qualifiers": pl.List(_CODE_TYPE),
    "ended_at": pl.String(),
    "dose": pl.Struct({"value": pl.Float64(), "unit": pl.String()}),
    "route": pl.String(),
    "ref_low": pl.Float64(),
    "ref_high": pl.Float64(),
    "value_code": _CODE_TYPE,
    "encounter_id": pl.String(),
    "location": pl.String(),
}


def columns(rows: list[dict[str, Any]], index: list[int]) -> pl.DataFrame:
    """Column-wise frame of the lean-validated dicts (strings still raw; timestamps still text). Polars reads the
    dicts in Rust (``from_dicts``); their types are already pydantic's, so nothing is coerced here."""
    values = [r.get("value") for r in rows]
    df = pl.from_dicts(rows, schema=_ROW_SCHEMA) if rows else pl.DataFrame(schema=_ROW_SCHEMA)
    return select_columns(
        df.with_columns(
            pl.Series("index", index, dtype=pl.Int64),
            pl.Series("value", [v if v.__class__ is float else None for v in values], dtype=pl.Float64),
            pl.Series("text", [v if v.__class__ is str else None for v in values], dtype=pl.String),
        )
    )


def select_columns(df: _Frame) -> _Frame:
    """The columns :func:`check` reads, from a frame of the :data:`_ROW_SCHEMA` columns plus ``index``, ``value``
    (a number) and ``text`` (a text value)."""
    code, person, dose, coded = pl.col("code"), pl.col("person"), pl.col("dose"), pl.col("value_code")
    return df.select(
        "index",
        "schema",
        "event_id",
        "source",
        "kind",
        "patient_id",
        "occurred_at",
        "recorded_at",
        code.is_not_null().alias("has_code"),
        code.struct.field("system").alias("system"),
        code.struct.field("value").alias("code"),
        "value",
        "text",
        "unit",
        pl.col("status").fill_null("active"),  # the lean schema rejects an explicit null: only absent is null
        "setting",
        "site",
        "corrects",
        person.is_not_null().alias("has_person"),
        *[person.struct.field(n).alias(n) for n in PERSON_FIELDS],
        "qualifiers",
        "ended_at",
        dose.is_not_null().alias("has_dose"),
        dose.struct.field("value").alias("dose_value"),
        dose.struct.field("unit").alias("dose_unit"),
        "route",
        "ref_low",
        "ref_high",
        coded.is_not_null().alias("has_value_code"),
        coded.struct.field("system").alias("value_system"),
        coded.struct.field("value").alias("value_code"),
        "encounter_id",
        "location",
    )


def _parsed_times() -> tuple[list[pl.Expr], list[str], list[pl.Expr]]:
    """Event times as text (the event's own form): parsed into ``_occurred``, ``_date_only``, ``_ended``,
    ``_ended_date``, ``_recorded`` (the expressions; the columns to drop after); and the conditions under which
    the parse is certainly parse_event's."""
    ts_fmt = "%Y-%m-%dT%H:%M:%S%.f%:z"

    def ts(text: pl.Expr) -> pl.Expr:
        return (
            text.str.replace(r"Z$", "+00:00")
            .str.to_datetime(ts_fmt, strict=False, time_unit="us")
            .dt.convert_time_zone("UTC")
            .cast(TS)
        )

    def event_time(col: str) -> tuple[pl.Expr, pl.Expr]:
        """(the instant, is it a calendar date): a date is midnight UTC of it, as in parse_event. A date is
        written out as that midnight first, so one regex and one parse serve both forms."""
        raw = pl.col(col)
        is_date = raw.str.len_bytes() == 10
        text = pl.when(is_date).then(raw + "T00:00:00Z").otherwise(raw)
        # a calendar date parses as a date (a third of the cost of the instant parser on the padded text)
        midnight = raw.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        return pl.when(text.str.contains(_TS_RE)).then(
            pl.when(is_date).then(midnight.cast(TS)).otherwise(ts(raw))
        ), is_date

    occurred, occurred_is_date = event_time("occurred_at")
    ended, ended_is_date = event_time("ended_at")
    times = [
        occurred.alias("_occurred"),
        occurred_is_date.fill_null(False).alias("_date_only"),
        ended.alias("_ended"),
        ended_is_date.alias("_ended_date"),
        ts(pl.col("recorded_at")).alias("_recorded"),
    ]
    recorded_ok = pl.col("recorded_at").is_null() | (
        pl.col("recorded_at").str.contains(_TS_RE) & pl.col("_recorded").is_not_null()
    )
    return times, [], [recorded_ok]


def _typed_times() -> tuple[list[pl.Expr], list[str], list[pl.Expr]]:
    """Event times already typed (:data:`screener.history.rows.TYPED_ROW_SCHEMA`: UTC instants, a calendar date
    as its midnight UTC with ``date_only`` / ``ended_date_only`` set): the same columns as :func:`_parsed_times`,
    an instant kept only where its text (``YYYY-MM-DD`` for a date, else RFC 3339 in UTC) would pass the
    event's pattern (years 1000-2999, a date exactly at midnight); anything else goes to parse_event."""

    def kept(col: str, flag: str | None) -> pl.Expr:
        c = pl.col(col)
        ok = c.dt.year().is_between(1000, 2999)
        if flag is not None:
            ok = ok & (~pl.col(flag).fill_null(False) | (c.dt.time() == pl.time(0, 0, 0)))
        return pl.when(ok).then(c.cast(TS))

    times = [
        kept("occurred_at", "date_only").alias("_occurred"),
        pl.col("date_only").fill_null(False).alias("_date_only"),
        kept("ended_at", "ended_date_only").alias("_ended"),
        pl.col("ended_date_only").alias("_ended_date"),
        kept("recorded_at", None).alias("_recorded"),
    ]
    return (
        times,
        ["date_only", "ended_date_only"],
        [pl.col("recorded_at").is_null() | pl.col("_recorded").is_not_null()],
    )


def _edge_ws(text: pl.Expr, long: bool) -> pl.Expr:
    """Whether ``text`` starts or ends with anything parse_event's whitespace stripping could touch."""
    if long:
        return text.str.contains(f"^{_EDGE}") | text.str.contains(f"{_EDGE}$")
    return text.str.contains(_EDGE_WS)


def check(df: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """Parse timestamps and dates (or take them typed, :func:`_typed_times`); split off the rows the fast path
    cannot accept with certainty."""
    good, suspect = pl.collect_all(check_lazy(df.lazy()))
    return good, suspect["index"].to_list()


def check_lazy(df: pl.LazyFrame) -> tuple[pl.LazyFrame, pl.LazyFrame]:
    """:func:`check` as a query: (the rows accepted, the ``index`` of the rest), to collect with others in one
    call (each Polars call lets the GIL go and takes it back: fewer calls, fewer waits for it)."""
    typed = isinstance(df.collect_schema()["occurred_at"], pl.Datetime)
    times, dropped, ok, good, helpers = _check_plan(typed, datetime.now(UTC).date())
    flagged = df.with_columns(times).drop(dropped).with_columns(_BIRTH).with_columns(ok)
    suspect = flagged.filter(~pl.col("_ok")).select("index")
    return flagged.filter(pl.col("_ok")).with_columns(good).drop(helpers), suspect


_BIRTH = pl.col("birth_date").str.to_date("%Y-%m-%d", strict=False).alias("_birth")


@functools.lru_cache(maxsize=4)
def _check_plan(typed: bool, day: date) -> tuple[list[pl.Expr], list[str], pl.Expr, list[pl.Expr], list[str]]:
    """The expressions of :func:`check_lazy`, built once per form of the times and UTC day (building them is
    Python work with the GIL held, as much as a whole batch's reading otherwise): (the times, the columns they
    replace, ``_ok``, the accepted rows' conversions, the helper columns to drop)."""
    times, dropped, time_ok = (_typed_times if typed else _parsed_times)()
    # parse_event judges a birth date against today's UTC date; within a day of either bound, let it decide.
    today = pl.lit(day)
    born = pl.col("_birth")
    # dose and value_code are structs: their presence columns stand for them.
    present = {"dose": ~pl.col("has_dose"), "value_code": ~pl.col("has_value_code")}
    v1_clean = pl.all_horizontal([present.get(f, pl.col(f).is_null()) for f in V2_FIELDS])
    ends_after = (
        pl.when(pl.col("_ended_date"))
        .then(pl.col("_ended").dt.date() >= pl.col("_occurred").dt.date())
        .otherwise(pl.col("_ended") >= pl.col("_occurred"))
    )
    ok = [
        pl.col("_occurred").is_not_null(),
        *time_ok,
        pl.col("ended_at").is_null() | (pl.col("_ended").is_not_null() & ends_after),
        pl.col("birth_date").is_null()
        | (
            pl.col("birth_date").str.contains(_DATE_RE)
            & (born > today.dt.offset_by(f"-{MAX_BIRTH_AGE_YEARS}y").dt.offset_by("1d"))
            & (born < today)
        ),
        pl.col("value").is_null() | pl.col("value").is_finite(),
        pl.col("ref_low").is_null() | pl.col("ref_high").is_null() | (pl.col("ref_low") <= pl.col("ref_high")),
        (pl.col("schema") != SCHEMA_V1) | pl.col("schema").is_null() | v1_clean,
        (pl.col("kind") != "person") | pl.col("has_person"),
        pl.col("kind").is_in(list(CODELESS_KINDS)) | pl.col("has_code"),
        (pl.col("kind") == "person") | ~pl.col("has_person"),
        *[pl.col(c).is_null() | ~_edge_ws(pl.col(c), c in _LONG_STR_COLS) for c in _STR_COLS],
        pl.col("qualifiers").is_null()
        | ~pl.col("qualifiers").list.eval(pl.element().struct.field("value").str.contains(_EDGE_WS)).list.any(),
    ]
    element = pl.element().struct
    good = [
        pl.col("_occurred").alias("occurred_at"),
        pl.col("_recorded").alias("recorded_at"),
        pl.col("_ended").alias("ended_at"),
        pl.col("_date_only").alias("date_only"),
        pl.col("_birth").alias("birth_date"),
        pl.col("imd_decile").cast(pl.Int8),
        pl.col("qualifiers").list.eval(pl.concat_str([element.field("system"), pl.lit("|"), element.field("value")])),
    ]
    helpers = ["_occurred", "_recorded", "_ended", "_ended_date", "_date_only", "_birth", "_ok"]
    return times, dropped, pl.all_horizontal(ok).fill_null(False).alias("_ok"), good, helpers
