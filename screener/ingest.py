"""Batch ingest fast path: Kafka payloads to the state update frames without one pydantic model per event.

:func:`decode_batch` turns a list of raw payloads into the same ``(person updates, fact rows, control rows)``
frames that :func:`screener.state.events_to_frames` builds from parsed :class:`~screener.events.Event` objects,
plus the list of rejected payloads with the exact :class:`~screener.errors.EventError` that
:func:`screener.events.parse_event` raises for them.

How (one Rust call, then Polars):

1. every payload is parsed and type-checked by one pydantic-core call over the whole list, against a *lean*
   schema (:data:`_LEAN`): the canonical event's fields, types, enums, lengths, patterns and unknown-field rule,
   but with no Python callback, no whitespace stripping and the timestamps left as strings. The JSON parser and
   the type coercions are pydantic's own, so a value accepted here has the value ``parse_event`` would give;
2. the accepted rows become columns, and the rest of the contract is checked vectorised: no leading or trailing
   whitespace in any string (``parse_event`` strips it), timestamps in a strict ISO-8601 form with an offset
   (parsed and converted to UTC by Polars) or a calendar date (``date_only``), ISO birth dates in the plausible
   range, finite numbers, ``ended_at`` not before ``occurred_at``, an ordered reference range, no v2 field on a v1
   event, and the kind rules (a person event carries ``person``, a clinical event a ``code``, nothing else
   ``person``);
3. every payload the lean schema rejects or a vectorised check flags, or that the fast path cannot judge with
   certainty, goes through :func:`screener.events.parse_event` one by one: a rejection there is the same error as
   on the per-event path, and an event it accepts (e.g. one with whitespace to strip) joins the frames in order.

The fast path therefore only ever *accepts* what ``parse_event`` accepts, with the same values; every decision
to reject is ``parse_event``'s own. ``tests/unit/test_ingest.py`` checks both paths agree (hypothesis).
"""

from __future__ import annotations

import bisect
import gc
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Annotated, Any, NotRequired

import polars as pl
from pydantic import ConfigDict, Field, Json, TypeAdapter, with_config
from typing_extensions import TypedDict  # pydantic needs this one below Python 3.12

from screener.errors import EventError
from screener.events import CODELESS_KINDS, MAX_BIRTH_AGE_YEARS, V2_FIELDS, Event, parse_event
from screener.state import DO_NOT_CONTACT_CODE, FACTS_SCHEMA, PERSONS_SCHEMA, events_to_frames
from screener.vocab import (
    FACT_KINDS,
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

__all__ = ["KEY_SCHEMA", "DecodedBatch", "decode_batch"]

# The vocabularies (Kind, CodeSystem, Status, Setting, Route, Sex, EthnicGroup) are the full model's own, imported
# from screener.vocab, so the fast path can never drift from it.

_FORBID = ConfigDict(extra="forbid")


def _s(lo: int | None = None, hi: int | None = None, pattern: str | None = None) -> Any:
    return Annotated[str, Field(min_length=lo, max_length=hi, pattern=pattern)]


@with_config(_FORBID)
class _LeanCode(TypedDict):
    system: CodeSystem
    value: _s(1, 64)  # type: ignore[valid-type]


_Finite = Annotated[float, Field(allow_inf_nan=False)]


@with_config(_FORBID)
class _LeanDose(TypedDict):
    value: Annotated[float, Field(ge=0, allow_inf_nan=False)]
    unit: NotRequired[_s(1, 32) | None]  # type: ignore[valid-type]


@with_config(_FORBID)
class _LeanPerson(TypedDict, total=False):
    birth_date: str | None
    sex: Sex | None
    ethnic_group: EthnicGroup | None
    ethnic_category: _s(pattern=r"^[A-Z]$") | None  # type: ignore[valid-type]
    lsoa: _s(hi=16) | None  # type: ignore[valid-type]
    imd_decile: Annotated[int, Field(ge=1, le=10)] | None
    postcode_district: _s(hi=8) | None  # type: ignore[valid-type]
    nhs_number: _s(pattern=r"^\d{10}$") | None  # type: ignore[valid-type]
    merged_from: _s(1, 64) | None  # type: ignore[valid-type]


_LeanEvent = with_config(_FORBID)(
    TypedDict(  # type: ignore[operator]
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
_LEAN: TypeAdapter[list[Any]] = TypeAdapter(
    list[Annotated[Json[_LeanEvent] | bytes, Field(union_mode="left_to_right")]]  # type: ignore[valid-type]
)

# A strict subset of what pydantic's datetime parser accepts: RFC 3339 with an explicit offset, years 1000-2999
# (no overflow when converting to UTC), at most microseconds.
_TS_RE = (
    r"^[12]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])T([01]\d|2[0-3]):[0-5]\d:[0-5]\d(\.\d{1,6})?"
    r"(Z|[+-]([01]\d|2[0-3]):[0-5]\d)$"
)
_DATE_RE = r"^[12]\d{3}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])$"
# Anything parse_event's whitespace stripping could touch (Unicode White_Space, plus control characters).
_EDGE_WS = r"^[\s\x00-\x20\x7f-\xa0]|[\s\x00-\x20\x7f-\xa0]$"

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
_PERSON_FIELDS = (
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

#: Columns of :attr:`DecodedBatch.keys`: one row per accepted event, in payload order.
KEY_SCHEMA: dict[str, pl.DataType] = {
    "index": pl.Int64(),
    "patient_id": pl.String(),
    "source": pl.String(),
    "kind": pl.String(),
    "system": pl.String(),
    "code": pl.String(),
    "unit": pl.String(),
    "status": pl.String(),
    "setting": pl.String(),
}
_UPD_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    **{k: v for k, v in PERSONS_SCHEMA.items() if k not in ("do_not_contact", "deceased")},
}
_FACT_SCHEMA: dict[str, pl.DataType] = {"seq": pl.Int64(), **FACTS_SCHEMA}
_CONTROL_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "patient_id": pl.String(),
    "op": pl.String(),
    "arg": pl.String(),
}


@dataclass(frozen=True)
class DecodedBatch:
    """The result of :func:`decode_batch`.

    ``persons``, ``facts`` and ``control`` equal ``events_to_frames(accepted events)`` (``seq`` is the position
    among the accepted events); ``keys`` has one row per accepted event (``index`` is its payload position);
    ``rejects`` pairs each rejected payload position with the error ``parse_event`` raises for it.
    """

    persons: pl.DataFrame
    facts: pl.DataFrame
    control: pl.DataFrame
    keys: pl.DataFrame
    rejects: list[tuple[int, EventError]] = field(default_factory=list)
    #: How many payloads went through parse_event one by one (a measure, not a contract).
    slow: int = 0

    @property
    def accepted(self) -> int:
        return self.keys.height

    @property
    def frames(self) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
        return self.persons, self.facts, self.control

    def split(self, starts: Sequence[int]) -> list[DecodedBatch]:
        """This batch cut back into the payload lists it was decoded from (one decode for several lists costs
        less than one each): ``starts[k]`` is the payload index where list ``k`` begins (ascending, the first
        0). In each part ``index`` and the reject positions count from the part's own start; ``seq`` is kept
        (positions in the whole batch: still the events' order, which is all :func:`apply_frames` reads)."""
        n = len(starts)
        rejects: list[list[tuple[int, EventError]]] = [[] for _ in range(n)]
        for i, exc in self.rejects:
            k = bisect.bisect_right(starts, i) - 1
            rejects[k].append((i - starts[k], exc))
        if self.accepted == 0:
            return [DecodedBatch(*self.frames, self.keys, rejects[k]) for k in range(n)]
        bounds = pl.Series("b", list(starts[1:]), dtype=pl.Int64)
        group = self.keys.select(pl.lit(bounds).search_sorted(pl.col("index"), side="right").cast(pl.Int64).alias("_g"))
        by_seq = pl.lit(group["_g"]).gather(pl.col("seq")).alias("_g")

        def cut(frame: pl.DataFrame, key: pl.Expr) -> list[pl.DataFrame]:
            parts = frame.with_columns(key).partition_by("_g", as_dict=True, include_key=False)
            empty = frame.clear().drop("_g", strict=False)
            return [parts.get((k,), empty) for k in range(n)]

        persons, facts, control = (cut(f, by_seq) for f in self.frames)
        offset = pl.lit(pl.Series(list(starts), dtype=pl.Int64)).gather(pl.col("_g"))
        keys = cut(
            self.keys.with_columns(group["_g"]).with_columns((pl.col("index") - offset).alias("index")), pl.col("_g")
        )
        return [DecodedBatch(persons[k], facts[k], control[k], keys[k], rejects[k]) for k in range(n)]


def decode_batch(payloads: Sequence[bytes | None]) -> DecodedBatch:
    """Validate and decode a batch of raw event payloads (``None`` is treated as an empty payload).

    Accepts and rejects exactly what :func:`screener.events.parse_event` does, one payload at a time, and builds
    the frames :func:`screener.state.events_to_frames` builds from the accepted events, in payload order.
    """
    raw = [p if p is not None else b"" for p in payloads]
    # The lean dicts are short-lived and acyclic (freed by reference counting): pausing the cycle collector
    # while they exist saves the collections their allocation would trigger over the engine's large heap.
    paused = gc.isenabled()
    gc.disable()
    try:
        try:
            items: list[Any] = _LEAN.validate_python(raw)
        except Exception:  # e.g. a payload that is not bytes: judge every one on the per-event path
            items = list(raw)
        fast_idx = [i for i, it in enumerate(items) if it.__class__ is dict]
        lean_rejects = [i for i, it in enumerate(items) if it.__class__ is not dict]
        fast = _columns([items[i] for i in fast_idx], fast_idx)
        del items
    finally:
        if paused:
            gc.enable()
    fast, suspect = _check(fast)
    slow_idx = sorted(lean_rejects + suspect)
    slow_events: list[tuple[int, Event]] = []
    rejects: list[tuple[int, EventError]] = []
    for i in slow_idx:
        payload = raw[i]
        try:
            slow_events.append((i, parse_event(payload)))
        except EventError as exc:
            rejects.append((i, exc))
    rejected = {i for i, _ in rejects}
    accepted = [i for i in range(len(raw)) if i not in rejected] if rejects else list(range(len(raw)))
    rank = pl.DataFrame({"index": accepted, "seq": range(len(accepted))}, schema={"index": pl.Int64, "seq": pl.Int64})
    fast = fast.join(rank, on="index", how="left", maintain_order="left")
    persons, facts, control = _frames(fast)
    keys = fast.select(list(KEY_SCHEMA))
    if slow_events:
        s_persons, s_facts, s_control = events_to_frames(ev for _, ev in slow_events)
        seqs = rank.filter(pl.col("index").is_in([i for i, _ in slow_events]))["seq"]
        remap = [pl.lit(seqs).gather(pl.col("seq")).alias("seq")]
        persons = pl.concat([persons, s_persons.with_columns(remap)]).sort("seq", maintain_order=True)
        facts = pl.concat([facts, s_facts.with_columns(remap)]).sort("seq", maintain_order=True)
        control = pl.concat([control, s_control.with_columns(remap)]).sort("seq", maintain_order=True)
        keys = pl.concat([keys, _event_keys(slow_events)]).sort("index")
    return DecodedBatch(persons, facts, control, keys, rejects, slow=len(slow_idx))


_CODE_TYPE = pl.Struct({"system": pl.String(), "value": pl.String()})
_PERSON_TYPE = pl.Struct({n: pl.Int64() if n == "imd_decile" else pl.String() for n in _PERSON_FIELDS})
#: How :func:`_columns` reads the lean dicts (``value`` is read apart: a number or a text).
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


def _columns(rows: list[dict[str, Any]], index: list[int]) -> pl.DataFrame:
    """Column-wise frame of the lean-validated dicts (strings still raw; timestamps still text). Polars reads the
    dicts in Rust (``from_dicts``); their types are already pydantic's, so nothing is coerced here."""
    values = [r.get("value") for r in rows]
    df = pl.from_dicts(rows, schema=_ROW_SCHEMA) if rows else pl.DataFrame(schema=_ROW_SCHEMA)
    code, person, dose, coded = pl.col("code"), pl.col("person"), pl.col("dose"), pl.col("value_code")
    return df.select(
        pl.Series("index", index, dtype=pl.Int64),
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
        pl.Series("value", [v if v.__class__ is float else None for v in values], dtype=pl.Float64),
        pl.Series("text", [v if v.__class__ is str else None for v in values], dtype=pl.String),
        "unit",
        pl.col("status").fill_null("active"),  # the lean schema rejects an explicit null: only absent is null
        "setting",
        "site",
        "corrects",
        person.is_not_null().alias("has_person"),
        *[person.struct.field(n).alias(n) for n in _PERSON_FIELDS],
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


def _check(df: pl.DataFrame) -> tuple[pl.DataFrame, list[int]]:
    """Parse timestamps and dates; split off the rows the fast path cannot accept with certainty."""
    ts_fmt = "%Y-%m-%dT%H:%M:%S%.f%:z"

    def ts(col: str) -> pl.Expr:
        return (
            pl.col(col)
            .str.replace(r"Z$", "+00:00")
            .str.to_datetime(ts_fmt, strict=False, time_unit="us")
            .dt.convert_time_zone("UTC")
            .cast(TS)
        )

    def event_time(col: str) -> tuple[pl.Expr, pl.Expr]:
        """(the instant, is it a calendar date): a date is midnight UTC of it, as in parse_event."""
        is_date = pl.col(col).str.contains(_DATE_RE)
        day = pl.col(col).str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")
        timed = pl.col(col).str.contains(_TS_RE)
        return pl.when(is_date).then(day).when(timed).then(ts(col)).cast(TS), is_date

    occurred, occurred_is_date = event_time("occurred_at")
    ended, ended_is_date = event_time("ended_at")
    df = df.with_columns(
        occurred.alias("_occurred"),
        occurred_is_date.fill_null(False).alias("_date_only"),
        ended.alias("_ended"),
        ended_is_date.alias("_ended_date"),
        ts("recorded_at").alias("_recorded"),
        pl.col("birth_date").str.to_date("%Y-%m-%d", strict=False).alias("_birth"),
    )
    # parse_event judges a birth date against today's UTC date; within a day of either bound, let it decide.
    today = pl.lit(datetime.now(UTC).date())
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
        pl.col("recorded_at").is_null()
        | (pl.col("recorded_at").str.contains(_TS_RE) & pl.col("_recorded").is_not_null()),
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
        *[pl.col(c).is_null() | ~pl.col(c).str.contains(_EDGE_WS) for c in _STR_COLS],
        pl.col("qualifiers").is_null()
        | ~pl.col("qualifiers").list.eval(pl.element().struct.field("value").str.contains(_EDGE_WS)).list.any(),
    ]
    flagged = df.with_columns(pl.all_horizontal(ok).fill_null(False).alias("_ok"))
    suspect = flagged.filter(~pl.col("_ok"))["index"].to_list()
    element = pl.element().struct
    good = (
        flagged.filter(pl.col("_ok"))
        .with_columns(
            pl.col("_occurred").alias("occurred_at"),
            pl.col("_recorded").alias("recorded_at"),
            pl.col("_ended").alias("ended_at"),
            pl.col("_date_only").alias("date_only"),
            pl.col("_birth").alias("birth_date"),
            pl.col("imd_decile").cast(pl.Int8),
            pl.col("qualifiers").list.eval(
                pl.concat_str([element.field("system"), pl.lit("|"), element.field("value")])
            ),
        )
        .drop("_occurred", "_recorded", "_ended", "_ended_date", "_date_only", "_birth", "_ok")
    )
    return good, suspect


def _frames(df: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """events_to_frames, vectorised, over the checked fast rows (``seq`` already assigned)."""
    kind, status = pl.col("kind"), pl.col("status")
    is_fact = kind.is_in(list(FACT_KINDS)) & (status != "entered-in-error")
    person_ev = df.filter(kind == "person").select(
        "seq", "patient_id", *_PERSON_FIELDS[:7], "setting", "site", pl.col("occurred_at").alias("updated_at")
    )
    has_setting = pl.col("setting").is_not_null()
    visit_location = pl.when(kind == "visit").then(pl.col("location"))
    setting_ev = df.filter(is_fact & (has_setting | visit_location.is_not_null())).select(
        "seq", "patient_id", "setting", pl.when(has_setting).then(pl.col("site")).alias("site"), visit_location
    )
    persons = (
        pl.concat([person_ev, setting_ev], how="diagonal_relaxed")
        .select([pl.col(c).cast(t) for c, t in _UPD_SCHEMA.items()])
        .sort("seq", maintain_order=True)
    )
    facts = df.filter(is_fact).select([pl.col(c).cast(t) for c, t in _FACT_SCHEMA.items()])
    dnc = (pl.col("system") == DO_NOT_CONTACT_CODE[0]) & (pl.col("code") == DO_NOT_CONTACT_CODE[1])
    op = (
        pl.when((kind == "person") & pl.col("merged_from").is_not_null())
        .then(pl.lit("merge"))
        .when((kind == "consent") & dnc)
        .then(pl.when(status == "active").then(pl.lit("dnc_on")).otherwise(pl.lit("dnc_off")))
        .when((kind == "death") & (status != "entered-in-error"))
        .then(pl.lit("death"))
        .when(kind.is_in(list(FACT_KINDS)) & (status == "entered-in-error"))
        .then(pl.lit("retract"))
    )
    arg = (
        pl.when(kind == "person")
        .then(pl.col("merged_from"))
        .when(kind.is_in(list(FACT_KINDS)))
        .then(pl.col("event_id"))
    )
    first = df.filter(pl.col("corrects").is_not_null()).select(
        "seq", "patient_id", pl.lit("retract").alias("op"), pl.col("corrects").alias("arg"), pl.lit(0).alias("_k")
    )
    second = df.select("seq", "patient_id", op.alias("op"), arg.alias("arg"), pl.lit(1).alias("_k")).filter(
        pl.col("op").is_not_null()
    )
    control = (
        pl.concat([first, second])
        .sort("seq", "_k")
        .drop("_k")
        .select([pl.col(c).cast(t) for c, t in _CONTROL_SCHEMA.items()])
    )
    return persons, facts, control


def _event_keys(events: list[tuple[int, Event]]) -> pl.DataFrame:
    return pl.DataFrame(
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
            for i, e in events
        ],
        schema=KEY_SCHEMA,
        orient="row",
    )
