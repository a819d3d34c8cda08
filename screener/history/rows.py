"""Event *rows*: canonical events as columns (no JSON), validated column-wise, decoded into the state's frames.

A bulk source (the OMOP connector's :func:`connectors.omop.table_rows`) can hand the history backfill a frame of
events already in columns, :data:`ROW_SCHEMA` (the event's fields, one column each, timestamps as the event's
text: ``YYYY-MM-DD`` for a calendar date or RFC 3339 with an offset), instead of one JSON document per event.
:func:`decode_rows` gives what :func:`screener.ingest.decode_batch` gives for the same events encoded as JSON:

1. every row is checked column-wise: the lean schema's lengths, enums and ranges (:func:`_schema_ok`), then the
   decoder's own vectorised checks (:func:`screener._lean_event.check`: timestamps, date-only values, ``ended_at``
   not before ``occurred_at``, birth dates in range, finite numbers, ordered reference ranges, kind rules, edge
   whitespace);
2. rows that pass are turned into the person-update / fact / control frames by the decoder's own vectorised
   builder, so the values are the event path's exactly;
3. the few rows that do not pass are encoded as canonical JSON (:func:`to_json`) and judged by ``decode_batch``
   (``parse_event`` one by one): accepted there (e.g. whitespace to strip) they join the frames in order;
   rejected, they are counted with ``parse_event``'s own error (field named). Nothing is dropped silently.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from screener._lean_event import PERSON_FIELDS, check
from screener.ingest import DecodedBatch, _frames, decode_batch
from screener.vocab import CODE_SYSTEMS, ETHNIC_GROUPS, KINDS, ROUTES, SCHEMAS, SETTINGS, SEXES, STATUSES, TS

__all__ = ["ROW_SCHEMA", "TYPED_ROW_SCHEMA", "decode_rows", "rows_from_structs", "to_json"]

_CODE = pl.Struct({"system": pl.String(), "value": pl.String()})
#: The columns of an event-rows frame, in order (``index`` is added by :func:`decode_rows`).
ROW_SCHEMA: dict[str, pl.DataType] = {
    **{c: pl.String() for c in ("schema", "event_id", "source", "kind", "patient_id", "occurred_at", "recorded_at")},
    "has_code": pl.Boolean(),
    "system": pl.String(),
    "code": pl.String(),
    "value": pl.Float64(),
    "text": pl.String(),
    "unit": pl.String(),
    "status": pl.String(),
    "setting": pl.String(),
    "site": pl.String(),
    "corrects": pl.String(),
    "has_person": pl.Boolean(),
    **{n: pl.Int64() if n == "imd_decile" else pl.String() for n in PERSON_FIELDS},
    "qualifiers": pl.List(_CODE),
    "ended_at": pl.String(),
    "has_dose": pl.Boolean(),
    "dose_value": pl.Float64(),
    "dose_unit": pl.String(),
    "route": pl.String(),
    "ref_low": pl.Float64(),
    "ref_high": pl.Float64(),
    "has_value_code": pl.Boolean(),
    "value_system": pl.String(),
    "value_code": pl.String(),
    "encounter_id": pl.String(),
    "location": pl.String(),
}
#: The typed form of :data:`ROW_SCHEMA` (what a source that already holds dates and instants hands over, with no
#: text to format and parse again): the three event times are UTC instants, a calendar date is its midnight UTC
#: with ``date_only`` (``occurred_at``) or ``ended_date_only`` (``ended_at``) set; everything else as in
#: ``ROW_SCHEMA``. :func:`decode_rows` tells the forms apart by ``occurred_at``'s type and gives the same result
#: for the same events.
TYPED_ROW_SCHEMA: dict[str, pl.DataType] = {
    **{c: TS if c in ("occurred_at", "recorded_at", "ended_at") else t for c, t in ROW_SCHEMA.items()},
    "date_only": pl.Boolean(),
    "ended_date_only": pl.Boolean(),
}
_TIMES = (("occurred_at", "date_only"), ("ended_at", "ended_date_only"), ("recorded_at", None))
_STRUCTS = {
    "code": ("system", "code"),
    "value_code": ("value_system", "value_code"),
    "dose": ("dose_value", "dose_unit"),
}


def rows_from_structs(events: pl.DataFrame, number: str | None = None, text: str | None = None) -> pl.DataFrame:
    """A :data:`ROW_SCHEMA` frame from ``events["value"]``, a struct column with the canonical event's field
    names (``code``/``value_code`` as ``{system, value}``, ``dose`` as ``{value, unit}``, ``person`` as the
    person struct; absent fields are null). The event's ``value`` is column ``number`` when finite, else
    column ``text`` (either may be omitted)."""
    fields = {f.name: f.dtype for f in events.schema["value"].fields}  # type: ignore[attr-defined]  # value is a Struct column
    ev = pl.col("value").struct

    def field(name: str, dtype: pl.DataType) -> pl.Expr:
        return ev.field(name).cast(dtype) if name in fields else pl.lit(None, dtype)

    num = pl.col(number).cast(pl.Float64) if number else pl.lit(None, pl.Float64)
    finite = pl.when(num.is_finite()).then(num)
    txt = pl.col(text).cast(pl.String) if text else pl.lit(None, pl.String)
    out: dict[str, pl.Expr] = {}
    for name, dtype in ROW_SCHEMA.items():
        out[name] = field(name, dtype)
    for struct, (a, b) in _STRUCTS.items():
        present = ev.field(struct).is_not_null() if struct in fields else pl.lit(False)
        inner = ("value", "unit") if struct == "dose" else ("system", "value")
        s = ev.field(struct).struct if struct in fields else None
        out[f"has_{struct}"] = present
        out[a] = s.field(inner[0]).cast(ROW_SCHEMA[a]) if s is not None else pl.lit(None, ROW_SCHEMA[a])
        out[b] = s.field(inner[1]).cast(ROW_SCHEMA[b]) if s is not None else pl.lit(None, ROW_SCHEMA[b])
    person = ev.field("person").struct if "person" in fields else None
    out["has_person"] = ev.field("person").is_not_null() if person is not None else pl.lit(False)
    psub = {f.name for f in fields["person"].fields} if person is not None else set()
    for n in PERSON_FIELDS:
        dtype = ROW_SCHEMA[n]
        out[n] = person.field(n).cast(dtype) if person is not None and n in psub else pl.lit(None, dtype)
    out["value"] = finite
    out["text"] = pl.when(finite.is_null()).then(txt)
    out["status"] = field("status", pl.String()).fill_null("active")
    return events.select([e.alias(n) for n, e in out.items()])


def as_text(rows: pl.DataFrame) -> pl.DataFrame:
    """Typed rows (:data:`TYPED_ROW_SCHEMA`) in the text form (:data:`ROW_SCHEMA`): a date-only time at midnight
    as ``YYYY-MM-DD``, any other instant as RFC 3339 in UTC (``...Z``, fractional seconds only when there are)."""
    if not isinstance(rows.schema["occurred_at"], pl.Datetime):
        return rows
    texts = []
    for col, flag in _TIMES:
        c = pl.col(col)
        instant = c.dt.convert_time_zone("UTC").dt.strftime("%Y-%m-%dT%H:%M:%S%.fZ")
        date = (pl.col(flag).fill_null(False) & (c.dt.time() == pl.time(0, 0, 0))) if flag else pl.lit(False)
        texts.append(pl.when(date).then(c.dt.strftime("%Y-%m-%d")).otherwise(instant).alias(col))
    return rows.with_columns(texts).drop("date_only", "ended_date_only")


def to_json(rows: pl.DataFrame) -> pl.Series:
    """The rows (either form) as canonical event JSON (Binary), the form :func:`screener.ingest.decode_batch`
    judges."""
    rows = as_text(rows)

    def code(a: str, b: str, has: str) -> pl.Expr:
        return pl.when(pl.col(has)).then(pl.struct(pl.col(a).alias("system"), pl.col(b).alias("value")))

    person = pl.when(pl.col("has_person")).then(pl.struct(*PERSON_FIELDS))
    dose = pl.when(pl.col("has_dose")).then(
        pl.struct(pl.col("dose_value").alias("value"), pl.col("dose_unit").alias("unit"))
    )
    plain = [c for c in ROW_SCHEMA if c not in {"value", "text", "has_code", "has_person", "has_dose"}]
    plain = [c for c in plain if c not in PERSON_FIELDS and c not in {"system", "code", "dose_value", "dose_unit"}]
    plain = [c for c in plain if c not in {"has_value_code", "value_system", "value_code"}]
    encoded = pl.struct(
        *plain,
        code("system", "code", "has_code").alias("code"),
        person.alias("person"),
        dose.alias("dose"),
        code("value_system", "value_code", "has_value_code").alias("value_code"),
    ).struct.json_encode()
    value = pl.coalesce(
        pl.col("value").cast(pl.String),
        pl.struct(pl.col("text").alias("t")).struct.json_encode().str.strip_prefix('{"t":').str.strip_suffix("}"),
    )
    with_value = encoded.str.strip_suffix("}") + ',"value":' + value + "}"
    full = pl.when(pl.col("value").is_null() & pl.col("text").is_null()).then(encoded).otherwise(with_value)
    return rows.select(full.cast(pl.Binary).alias("value"))["value"]


def _length(col: str, lo: int, hi: int | None) -> pl.Expr:
    """Null, or ``lo`` to ``hi`` characters; judged on bytes (a character is at least one byte), so a text of more
    than ``hi`` bytes but not characters is only sent to ``parse_event``, which decides."""
    n = pl.col(col).str.len_bytes()
    ok = [n >= lo] if lo else []
    if hi is not None:
        ok.append(n <= hi)
    return pl.col(col).is_null() | pl.all_horizontal(ok) if ok else pl.lit(True)


def _schema_ok() -> pl.Expr:
    """The lean schema's constraints that a column-built event can break (lengths, enums, ranges)."""

    def member(col: str, values: tuple[str, ...]) -> pl.Expr:
        return pl.col(col).is_null() | pl.col(col).is_in(list(values))

    checks: list[Any] = [
        pl.col("schema").is_in(list(SCHEMAS)),
        pl.col("event_id").is_not_null() & _length("event_id", 1, 128),
        pl.col("source").is_not_null() & _length("source", 1, 64),
        pl.col("patient_id").is_not_null() & _length("patient_id", 1, 64),
        pl.col("kind").is_in(list(KINDS)),
        pl.col("status").is_in(list(STATUSES)),
        ~pl.col("has_code") | (pl.col("system").is_in(list(CODE_SYSTEMS)) & _length("code", 1, 64)),
        ~pl.col("has_value_code") | (pl.col("value_system").is_in(list(CODE_SYSTEMS)) & _length("value_code", 1, 64)),
        ~pl.col("has_dose") | (pl.col("dose_value").is_finite() & (pl.col("dose_value") >= 0)),
        _length("dose_unit", 1, 32),
        _length("unit", 0, 32),
        _length("site", 0, 64),
        _length("corrects", 1, 128),
        _length("encounter_id", 1, 64),
        _length("location", 1, 64),
        _length("lsoa", 0, 16),
        _length("postcode_district", 0, 8),
        _length("merged_from", 1, 64),
        pl.col("nhs_number").is_null() | pl.col("nhs_number").str.contains(r"^\d{10}$"),
        pl.col("ethnic_category").is_null() | pl.col("ethnic_category").str.contains(r"^[A-Z]$"),
        pl.col("imd_decile").is_null() | pl.col("imd_decile").is_between(1, 10),
        member("setting", SETTINGS),
        member("route", ROUTES),
        member("sex", SEXES),
        member("ethnic_group", ETHNIC_GROUPS),
        pl.col("ref_low").is_null() | pl.col("ref_low").is_finite(),
        pl.col("ref_high").is_null() | pl.col("ref_high").is_finite(),
        pl.col("qualifiers").is_null() | (pl.col("qualifiers").list.len() <= 16),
        pl.col("occurred_at").is_not_null(),
    ]
    return pl.all_horizontal(checks).fill_null(False)


def decode_rows(rows: pl.DataFrame) -> DecodedBatch:
    """:func:`screener.ingest.decode_batch` for a :data:`ROW_SCHEMA` (or :data:`TYPED_ROW_SCHEMA`) frame: the
    same frames (``seq`` is the position among accepted rows, in row order) and the same rejects (row position,
    ``parse_event``'s error); ``keys`` holds only ``index`` (the accepted rows' positions)."""
    typed = isinstance(rows.schema["occurred_at"], pl.Datetime)
    rows = rows.select(
        pl.int_range(pl.len(), dtype=pl.Int64).alias("index"), *(TYPED_ROW_SCHEMA if typed else ROW_SCHEMA)
    )
    lean_ok = rows.select(_schema_ok().alias("_ok"))["_ok"]
    good, suspect = check(rows.filter(lean_ok))
    slow_idx = sorted(rows.filter(~lean_ok)["index"].to_list() + suspect)
    if not slow_idx:
        good = good.with_columns(pl.col("index").alias("seq"))
        persons, facts, control = _frames(good)
        return DecodedBatch(persons, facts, control, good.select("index"), [], slow=0)
    slow = decode_batch(to_json(rows[slow_idx]).to_list())
    slow_series = pl.Series(slow_idx, dtype=pl.Int64)
    rejects = [(slow_idx[i], exc) for i, exc in slow.rejects]
    # seq: rank of each accepted row among all accepted rows (fast ones and the slow path's), in row order
    slow_accepted = slow.keys.select(pl.lit(slow_series).gather(pl.col("index")).alias("index"))["index"]
    accepted = pl.concat([good["index"], slow_accepted]).sort()
    rank = pl.DataFrame({"index": accepted, "seq": pl.int_range(accepted.len(), dtype=pl.Int64, eager=True)})
    good = good.join(rank, on="index", how="left", maintain_order="left")
    persons, facts, control = _frames(good)
    # the slow frames' seq is the position among the slow path's accepted rows: map it to the overall rank
    slow_rank = rank.filter(pl.col("index").is_in(slow_accepted.implode()))["seq"]
    remap = pl.lit(slow_rank).gather(pl.col("seq")).alias("seq")
    persons = pl.concat([persons, slow.persons.with_columns(remap)]).sort("seq", maintain_order=True)
    facts = pl.concat([facts, slow.facts.with_columns(remap)]).sort("seq", maintain_order=True)
    control = pl.concat([control, slow.control.with_columns(remap)]).sort("seq", maintain_order=True)
    return DecodedBatch(persons, facts, control, rank.select("index"), rejects, slow=len(slow_idx))
