"""The one mapping of OMOP CDM clinical tables to canonical events, column-wise with Polars: concept joins,
codes, dates, ends, status, dose, route, units and values per table (:class:`Spec`), as :class:`Mapped`
expressions shared by the JSON events (:func:`connectors.omop._tables.table_events`) and the typed event rows
(:func:`connectors.omop._rows.table_rows`). The table of what each OMOP table gives is in
:mod:`connectors.omop.backfill` and ``docs/connectors.md``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import polars as pl

from connectors._common import SNOMED_ROUTES, TEXT_ROUTES

__all__ = ["SPECS", "Mapped", "Spec", "mapped"]


_VISIT_SETTING = {
    9201: "hospital",
    9203: "hospital",
    9202: "hospital",
    262: "hospital",
    581476: "home",
    581477: "primary-care",
    38004207: "primary-care",
}


@dataclass(frozen=True)
class Spec:
    """How one OMOP table becomes events: kind, id column, concept/source columns, start and end date columns."""

    kind: str
    id_col: str
    concept_col: str | None
    source_col: str | None
    date_cols: tuple[str, ...]
    end_cols: tuple[str, ...] = ()


SPECS: dict[str, Spec] = {
    "observation_period": Spec(
        "registration",
        "observation_period_id",
        None,
        None,
        ("observation_period_start_date",),
        ("observation_period_end_date",),
    ),
    "visit_occurrence": Spec(
        "visit",
        "visit_occurrence_id",
        "visit_concept_id",
        "visit_source_value",
        ("visit_start_datetime", "visit_start_date"),
        ("visit_end_datetime", "visit_end_date"),
    ),
    "condition_occurrence": Spec(
        "condition",
        "condition_occurrence_id",
        "condition_concept_id",
        "condition_source_value",
        ("condition_start_datetime", "condition_start_date"),
        ("condition_end_datetime", "condition_end_date"),
    ),
    "drug_exposure": Spec(
        "drug",
        "drug_exposure_id",
        "drug_concept_id",
        "drug_source_value",
        ("drug_exposure_start_datetime", "drug_exposure_start_date"),
        ("drug_exposure_end_datetime", "drug_exposure_end_date"),
    ),
    "procedure_occurrence": Spec(
        "procedure",
        "procedure_occurrence_id",
        "procedure_concept_id",
        "procedure_source_value",
        ("procedure_datetime", "procedure_date"),
        ("procedure_end_datetime", "procedure_end_date"),
    ),
    "measurement": Spec(
        "measurement",
        "measurement_id",
        "measurement_concept_id",
        "measurement_source_value",
        ("measurement_datetime", "measurement_date"),
    ),
    "observation": Spec(
        "observation",
        "observation_id",
        "observation_concept_id",
        "observation_source_value",
        ("observation_datetime", "observation_date"),
    ),
    "death": Spec("death", "person_id", None, None, ("death_datetime", "death_date")),
}


def _col(df: pl.DataFrame, name: str, dtype: Any = pl.String) -> pl.Expr:
    return pl.col(name).cast(dtype, strict=False) if name in df.columns else pl.lit(None, dtype=dtype)


def _as_datetime(df: pl.DataFrame, name: str) -> pl.Expr:
    """Column ``name`` as Datetime(us): dates and datetimes cast; text parsed (ISO date or date-time)."""
    dtype = df.schema[name]
    col = pl.col(name)
    if dtype == pl.String:
        return pl.coalesce(
            col.str.to_datetime("%Y-%m-%d %H:%M:%S", strict=False, time_unit="us"),
            col.str.to_datetime("%Y-%m-%dT%H:%M:%S", strict=False, time_unit="us"),
            col.str.to_date("%Y-%m-%d", strict=False).cast(pl.Datetime("us")),
        )
    if dtype == pl.Null:
        return pl.lit(None, pl.Datetime("us"))
    return col.cast(pl.Datetime("us"), strict=False)


def _first(df: pl.DataFrame, cols: tuple[str, ...]) -> pl.Expr:
    present = [_as_datetime(df, c) for c in cols if c in df.columns]
    return pl.coalesce(present) if present else pl.lit(None, pl.Datetime("us"))


def _concept(df: pl.DataFrame, id_expr: pl.Expr, concepts: pl.DataFrame | None, prefix: str) -> pl.DataFrame:
    """Join ``concepts`` on ``id_expr`` as columns ``{prefix}_system`` / ``{prefix}_value`` (null when unknown)."""
    df = df.with_columns(id_expr.alias(f"{prefix}_id"))
    if concepts is None:
        return df.with_columns(
            pl.lit(None, pl.String).alias(f"{prefix}_system"), pl.lit(None, pl.String).alias(f"{prefix}_value")
        )
    renamed = concepts.rename(
        {"concept_id": f"{prefix}_id", "c_system": f"{prefix}_system", "c_value": f"{prefix}_value"}
    )
    return df.join(renamed, on=f"{prefix}_id", how="left")


def _code(df: pl.DataFrame, spec: Spec, concepts: pl.DataFrame | None) -> tuple[pl.DataFrame, tuple[pl.Expr, pl.Expr]]:
    """Join the concept table; return the frame and the code's (system, value) expressions."""
    df = _concept(df, _col(df, spec.concept_col or "", pl.Int64), concepts, "_c")
    source_value = _col(df, spec.source_col or "", pl.String).str.strip_chars()
    has_concept = pl.col("_c_value").is_not_null() & (pl.col("_c_id") != 0)
    system = pl.when(has_concept).then(pl.col("_c_system")).otherwise(pl.lit("local"))
    value = (
        pl.when(has_concept)
        .then(pl.col("_c_value"))
        .when(source_value.is_not_null() & (source_value != ""))
        .then(source_value.str.slice(0, 64))
        .otherwise(pl.lit("omop:") + pl.col("_c_id").cast(pl.String).fill_null("none"))
    )
    return df, (system, value)


def _value_code(df: pl.DataFrame, concepts: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.Expr]:
    """Join the concept table on value_as_concept_id; return the frame and whether a coded value is known."""
    df = _concept(df, _col(df, "value_as_concept_id", pl.Int64), concepts, "_v")
    known = (pl.col("_v_value").is_not_null() & (pl.col("_v_id") != 0)).fill_null(False)
    return df, known


def _route(df: pl.DataFrame, concepts: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.Expr]:
    """route_concept_id (a SNOMED route concept) -> canonical route, else route_source_value in words."""
    df = _concept(df, _col(df, "route_concept_id", pl.Int64), concepts, "_r")
    by_concept = (
        pl.when(pl.col("_r_system") == "SNOMED")
        .then(pl.col("_r_value").replace_strict(SNOMED_ROUTES, default="other", return_dtype=pl.String))
        .when(pl.col("_r_id").fill_null(0) != 0)
        .then(pl.lit("other"))
    )
    words = _col(df, "route_source_value").str.strip_chars().str.to_lowercase()
    by_text = words.replace_strict(TEXT_ROUTES, default=None, return_dtype=pl.String)
    return df, pl.coalesce(by_concept, by_text)


def _finite(expr: pl.Expr) -> pl.Expr:
    return pl.when(expr.is_finite()).then(expr)


def _day_text(df: pl.DataFrame, instant: pl.Expr) -> pl.Expr:
    """``instant.dt.strftime("%Y%m%d")``, formatted once per day from ``df``'s first to its last (a chunk spans a
    few thousand days) and gathered per row by the day's distance from the first: a third of the cost of a lookup
    per row, a tenth of formatting every row. A span of more days than rows (a stray far date) formats the
    distinct days instead."""
    day = instant.dt.date()
    first, last = df.select(day.min().alias("f"), day.max().alias("l")).row(0)
    if first is None:
        return pl.lit(None, pl.String)
    if (last - first).days + 1 > max(df.height, 1024):
        days = df.select(day.unique().drop_nulls().alias("d"))["d"]
        return day.replace_strict(days, days.dt.strftime("%Y%m%d"), default=None, return_dtype=pl.String)
    texts = pl.date_range(first, last, eager=True).dt.strftime("%Y%m%d")
    return pl.lit(texts).gather((day - pl.lit(first)).dt.total_days())


@dataclass(frozen=True)
class Mapped:
    """A clinical table's chunk mapped column-wise, before its event times are written as text: ``frame`` (the
    chunk with its concept joins), ``patient_id`` and ``event_id`` (String), ``start`` and ``end`` (naive
    datetimes: a calendar date at midnight, else Europe/London wall time; ``end`` None when the table has no end),
    ``fields``: every other event field in the event's order, each as its event-row columns
    (:data:`screener.history.rows.ROW_SCHEMA` names; ``code``, ``dose`` and ``value_code`` as their parts), and
    ``number`` / ``text``: the raw value (the event's ``value`` is the number when finite, else the text)."""

    frame: pl.DataFrame
    kind: str
    patient_id: pl.Expr
    event_id: pl.Expr
    start: pl.Expr
    end: pl.Expr | None
    fields: list[tuple[str, dict[str, pl.Expr]]]
    number: pl.Expr
    text: pl.Expr


def mapped(df: pl.DataFrame, table: str, concepts: pl.DataFrame | None, now: datetime) -> Mapped:
    """The one mapping of a clinical table (shared by the JSON events and the typed event rows of
    :func:`connectors.omop._rows.table_rows`), see :class:`Mapped`."""
    now_naive = pl.lit(now.astimezone(UTC).replace(tzinfo=None))
    pid = _col(df, "person_id", pl.Int64).cast(pl.String)
    spec = SPECS[table]
    row_id = _col(df, spec.id_col, pl.Float64).cast(pl.Int64, strict=False).cast(pl.String)
    start = _first(df, spec.date_cols)
    end = _first(df, spec.end_cols)
    if table == "drug_exposure":  # no end date: start + days_supply - 1 (both ends are days taken)
        days = _col(df, "days_supply", pl.Float64)
        end = pl.coalesce(end, pl.when(days >= 1).then(start + pl.duration(days=(days - 1).cast(pl.Int64))))
    end = pl.when(end >= start).then(end)
    # Row ids are not always unique in real extracts (Eunomia repeats drug_exposure and measurement ids for
    # different facts), so the id also carries the concept and the date: stable across re-runs.
    concept_part = (
        _col(df, spec.concept_col, pl.Int64).cast(pl.String).fill_null("-") if spec.concept_col else pl.lit("-")
    )
    # one concat_str (a third cheaper than chaining +); every part is non-null
    event_id = pl.concat_str(
        pl.lit(f"omop-{table}-"),
        row_id.fill_null("-"),
        pl.lit("-"),
        concept_part,
        pl.lit("-"),
        _day_text(df, start).fill_null("-"),
    )
    fields: list[tuple[str, dict[str, pl.Expr]]] = []
    if table == "observation_period":
        fields.append(("code", {"system": pl.lit("local"), "code": pl.lit("omop-observation-period")}))
    elif table != "death":
        df, (system, value) = _code(df, spec, concepts)
        fields.append(("code", {"system": system, "code": value}))
    if table != "death" and "visit_occurrence_id" in df.columns:
        visit = _col(df, "visit_occurrence_id", pl.Float64).cast(pl.Int64, strict=False)
        fields.append(("encounter_id", {"encounter_id": pl.when(visit > 0).then(visit.cast(pl.String))}))
    if table == "visit_occurrence":
        setting = _col(df, "visit_concept_id", pl.Int64).replace_strict(
            _VISIT_SETTING, default=None, return_dtype=pl.String
        )
        fields.append(("setting", {"setting": setting}))
    if table in ("visit_occurrence", "condition_occurrence", "drug_exposure", "procedure_occurrence"):
        ended = end <= now_naive
        done = {"condition_occurrence": "resolved"}.get(table, "completed")
        fields.append(("status", {"status": pl.when(ended).then(pl.lit(done)).otherwise(pl.lit("active"))}))
    if table == "drug_exposure":
        quantity = _finite(_col(df, "quantity", pl.Float64))
        unit = _col(df, "dose_unit_source_value").str.strip_chars().str.slice(0, 32)
        has = (quantity > 0).fill_null(False)
        dose = {
            "has_dose": has,
            "dose_value": pl.when(has).then(quantity),
            "dose_unit": pl.when(has & (unit != "")).then(unit),
        }
        fields.append(("dose", dose))
        df, route = _route(df, concepts)
        fields.append(("route", {"route": route}))
    if table in ("measurement", "observation"):
        df, known = _value_code(df, concepts)
        value_code = {
            "has_value_code": known,
            "value_system": pl.when(known).then(pl.col("_v_system")),
            "value_code": pl.when(known).then(pl.col("_v_value")),
        }
        fields.append(("value_code", value_code))
    if table == "measurement":
        unit = _col(df, "unit_source_value").str.strip_chars().str.slice(0, 32)
        if concepts is not None and "unit_concept_id" in df.columns:
            units = concepts.filter(pl.col("concept_id") != 0)
            df = df.join(
                units.select(pl.col("concept_id").alias("_ucid"), pl.col("c_value").alias("_unit")),
                left_on=pl.col("unit_concept_id").cast(pl.Int64, strict=False),
                right_on="_ucid",
                how="left",
            )
            unit = pl.coalesce(unit, pl.col("_unit").str.slice(0, 32))
        low, high = _finite(_col(df, "range_low", pl.Float64)), _finite(_col(df, "range_high", pl.Float64))
        ordered = low.is_null() | high.is_null() | (low <= high)  # a reversed range is not a range
        fields += [
            ("unit", {"unit": unit}),
            ("ref_low", {"ref_low": pl.when(ordered).then(low)}),
            ("ref_high", {"ref_high": pl.when(ordered).then(high)}),
        ]
    number, text = pl.lit(None, pl.Float64), pl.lit(None, pl.String)
    if table in ("measurement", "observation"):
        number = _col(df, "value_as_number", pl.Float64)
    if table == "observation":
        text = _col(df, "value_as_string").str.slice(0, 1000)
    has_end = bool(spec.end_cols) or table == "drug_exposure"
    return Mapped(df, spec.kind, pid, event_id, start, end if has_end else None, fields, number, text)
