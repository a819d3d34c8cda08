"""OMOP CDM rows -> canonical event JSON, column-wise with Polars (no Python loop over rows).

``table_events(df, table, concepts, now)`` gives two Binary columns, ``key`` (patient id) and ``value`` (the
event JSON, ``screener.event/v2``). The mapping per table is in :mod:`connectors.omop.backfill` and
``docs/connectors.md``.

Times: OMOP DATE columns (and DATETIME values at exactly midnight, which is how the CDM writes "no time
known") stay calendar dates (``YYYY-MM-DD``), never shifted by a time zone; a DATETIME with a time of day is
Europe/London wall time converted to UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl

from screener.connector.encode import event_json
from screener.vocab import SEXES

from ._mapping import SPECS, Mapped, Spec, _as_datetime, _col, mapped
from .source import SOURCE

__all__ = ["SPECS", "Mapped", "Spec", "mapped", "person_struct", "table_events"]


_SEX = {8532: "F", 8507: "M", 8521: "O", 8551: "U", 8570: "U"}


_RACE = {8527: "white", 8516: "black", 8515: "asian", 8557: "other", 8657: "other"}


_ETHNIC_LETTER = {
    **dict.fromkeys("ABC", "white"),
    **dict.fromkeys("DEFG", "mixed"),
    **dict.fromkeys("HJKLR", "asian"),
    **dict.fromkeys("MNP", "black"),
    "S": "other",
}


def _event_time(expr: pl.Expr) -> pl.Expr:
    """Naive datetime -> the event's time text: a calendar date at midnight, else London wall time as UTC."""
    midnight = expr.dt.time() == pl.time(0, 0, 0)
    instant = (
        expr.dt.replace_time_zone("Europe/London", ambiguous="earliest", non_existent="null")
        .dt.convert_time_zone("UTC")
        .dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    )
    return pl.when(midnight).then(expr.dt.strftime("%Y-%m-%d")).otherwise(instant)


def _person(df: pl.DataFrame, pid: pl.Expr, now_iso: str) -> pl.DataFrame:
    year, month, day = (_col(df, c, pl.Int32) for c in ("year_of_birth", "month_of_birth", "day_of_birth"))
    birth = pl.date(year, month.fill_null(1), day.fill_null(1)).dt.strftime("%Y-%m-%d")
    if "birth_datetime" in df.columns:
        birth = pl.coalesce(_as_datetime(df, "birth_datetime").dt.strftime("%Y-%m-%d"), birth)
    gender = _col(df, "gender_concept_id", pl.Int64)
    sex_src = _col(df, "gender_source_value").str.to_uppercase().str.slice(0, 1)
    sex = pl.coalesce(
        gender.replace_strict(_SEX, default=None, return_dtype=pl.String),
        pl.when(sex_src.is_in(SEXES)).then(sex_src),
    )
    race_src = _col(df, "race_source_value").str.strip_chars().str.to_uppercase()
    letter = pl.when(race_src.str.len_chars() == 1).then(race_src)
    ethnic = pl.coalesce(
        letter.replace_strict(_ETHNIC_LETTER, default=None, return_dtype=pl.String),
        _col(df, "race_concept_id", pl.Int64).replace_strict(_RACE, default=None, return_dtype=pl.String),
    )
    category = pl.when(letter.is_in(list(_ETHNIC_LETTER))).then(letter)
    person = pl.struct(
        birth.alias("birth_date"), sex.alias("sex"), ethnic.alias("ethnic_group"), category.alias("ethnic_category")
    )
    return df.select(
        pid.alias("key"),
        pl.struct(
            pl.lit("screener.event/v2").alias("schema"),
            (pl.lit("omop-person-") + pid).alias("event_id"),
            pl.lit(SOURCE).alias("source"),
            pl.lit("person").alias("kind"),
            pid.alias("patient_id"),
            pl.lit(now_iso).alias("occurred_at"),
            person.alias("person"),
        ).alias("value"),
    )


def table_events(df: pl.DataFrame, table: str, concepts: pl.DataFrame | None, now: datetime) -> pl.DataFrame:
    """Two columns: ``key`` (patient id, Binary) and ``value`` (canonical event JSON, Binary: the event's fields in
    its own order, absent ones left out, which the engine's decoder reads at its fastest).

    Rows without a person id or a usable date are dropped (counted by the caller as rows in - rows out).
    """
    if table == "person":
        out = person_struct(df, now).filter(pl.col("key").is_not_null())
        fields = {f.name: pl.col("value").struct.field(f.name) for f in out.schema["value"].fields}  # type: ignore[attr-defined]  # value is a Struct column
        return out.select(pl.col("key").cast(pl.Binary), event_json(fields).cast(pl.Binary).alias("value"))
    m = mapped(df, table, concepts, now)
    fields = _event_fields(m, now)
    # the event's value is a number when there is a finite one, else the text: one JSON spelling each
    number = pl.when(m.number.is_finite()).then(m.number)
    encoded = event_json({**fields, "value": number})
    if not m.text.meta.is_literal():
        text = pl.when(number.is_null()).then(m.text)
        encoded = pl.when(text.is_not_null()).then(event_json({**fields, "value": text})).otherwise(encoded)
    out = m.frame.select(m.patient_id.alias("key"), encoded.alias("value"), fields["occurred_at"].alias("_at"))
    out = out.filter(pl.col("_at").is_not_null() & pl.col("key").is_not_null())
    return out.select(pl.col("key").cast(pl.Binary), pl.col("value").cast(pl.Binary))


def person_struct(df: pl.DataFrame, now: datetime) -> pl.DataFrame:
    """The person table's events before encoding: ``key`` (String) and ``value`` (the event as a struct); rows
    without a person id are kept (null ``key``)."""
    now_iso = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    pid = _col(df, "person_id", pl.Int64).cast(pl.String)
    return _person(df, pid, now_iso)


def _json_field(name: str, cols: dict[str, pl.Expr]) -> pl.Expr:
    """One event field as the event JSON's value, from its event-row columns."""
    if name == "code":
        return pl.struct(cols["system"].alias("system"), cols["code"].alias("value"))
    if name == "dose":
        return pl.when(cols["has_dose"]).then(
            pl.struct(cols["dose_value"].alias("value"), cols["dose_unit"].alias("unit"))
        )
    if name == "value_code":
        return pl.when(cols["has_value_code"]).then(
            pl.struct(cols["value_system"].alias("system"), cols["value_code"].alias("value"))
        )
    (expr,) = cols.values()
    return expr


def _event_fields(m: Mapped, now: datetime) -> dict[str, pl.Expr]:
    """A clinical table's event fields but ``value`` (:func:`table_events`), by event field name."""
    fields = {
        "schema": pl.lit("screener.event/v2"),
        "event_id": m.event_id,
        "source": pl.lit(SOURCE),
        "kind": pl.lit(m.kind),
        "patient_id": m.patient_id,
        "occurred_at": _event_time(m.start),
        "recorded_at": pl.lit(now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")),
    }
    if m.end is not None:
        fields["ended_at"] = _event_time(m.end)
    return fields | {name: _json_field(name, cols) for name, cols in m.fields}
