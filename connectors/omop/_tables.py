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

from screener.vocab import SEXES

from ._mapping import SPECS, Mapped, Spec, _as_datetime, _col, mapped
from .source import SOURCE

__all__ = ["SPECS", "Mapped", "Spec", "mapped", "person_struct", "table_events", "table_struct"]


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


def _json_number(expr: pl.Expr) -> pl.Expr:
    """A float column as JSON number text; null for null, NaN and infinities."""
    return pl.when(expr.is_finite()).then(expr.cast(pl.String))


def _json_text(expr: pl.Expr) -> pl.Expr:
    """A string column as a JSON string literal (escaped by Polars' own JSON encoder); null stays null."""
    encoded = pl.struct(expr.alias("t")).struct.json_encode()  # {"t":"..."}
    return pl.when(expr.is_not_null()).then(encoded.str.strip_prefix('{"t":').str.strip_suffix("}"))


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
    """Two columns: ``key`` (patient id, Binary) and ``value`` (canonical event JSON, Binary).

    Rows without a person id or a usable date are dropped (counted by the caller as rows in - rows out).
    """
    if table == "person":
        out = person_struct(df, now).filter(pl.col("key").is_not_null())
        return out.select(pl.col("key").cast(pl.Binary), pl.col("value").struct.json_encode().cast(pl.Binary))
    out = table_struct(df, table, concepts, now)
    out = out.filter(pl.col("value").struct.field("occurred_at").is_not_null() & pl.col("key").is_not_null())
    # the canonical value is a float or a string: a number when there is one (finite), else the text
    value_json = pl.coalesce(_json_number(pl.col("_vnum")), _json_text(pl.col("_vtext")))
    encoded = pl.col("value").struct.json_encode()
    out = out.with_columns(
        pl.when(value_json.is_null())
        .then(encoded)
        .otherwise(encoded.str.strip_suffix("}") + ',"value":' + value_json + "}")
        .alias("value")
    )
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


def table_struct(df: pl.DataFrame, table: str, concepts: pl.DataFrame | None, now: datetime) -> pl.DataFrame:
    """A clinical table's events before encoding (for :func:`table_events`): ``key`` (String), ``value`` (the
    event as a struct, without its ``value`` field), ``_vnum`` (Float64, the raw number) and ``_vtext`` (String,
    the text when there is one). The event's ``value`` is ``_vnum`` when finite, else ``_vtext``. Rows without a
    person id or a start date are kept (null ``key`` / ``occurred_at``): the caller drops and counts them."""
    m = mapped(df, table, concepts, now)
    head = [
        pl.lit("screener.event/v2").alias("schema"),
        m.event_id.alias("event_id"),
        pl.lit(SOURCE).alias("source"),
        pl.lit(m.kind).alias("kind"),
        m.patient_id.alias("patient_id"),
        _event_time(m.start).alias("occurred_at"),
        pl.lit(now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")).alias("recorded_at"),
    ]
    if m.end is not None:
        head.append(_event_time(m.end).alias("ended_at"))
    fields = [_json_field(name, cols).alias(name) for name, cols in m.fields]
    return m.frame.select(
        m.patient_id.alias("key"),
        pl.struct(*head, *fields).alias("value"),
        m.number.alias("_vnum"),
        m.text.alias("_vtext"),
    )
