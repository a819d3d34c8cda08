"""The frames a history store holds, as every part of :mod:`screener.history` reads and writes them: the segment
schemas (person updates, fact rows, control rows), :func:`conform` to a schema, the patient order of a base
(:func:`sort_by_patient`), a key filter Polars pushes into a Parquet scan (:func:`keys_expr`) and the Parquet
options."""

from __future__ import annotations

from typing import Any, Literal, TypeVar

import polars as pl

from screener.state import FACTS_SCHEMA, PERSONS_SCHEMA

__all__ = [
    "CONTROL_SCHEMA",
    "PARQUET_OPTIONS",
    "Parallel",
    "conform",
    "fact_rows_schema",
    "keys_expr",
    "sort_by_patient",
    "upd_schema",
]

#: How Polars reads a Parquet scan in parallel (its ``ParallelStrategy``; "prefiltered" decodes the filter's columns
#: first and the others only for the rows kept).
Parallel = Literal["auto", "columns", "row_groups", "prefiltered", "none"]

_F = TypeVar("_F", pl.DataFrame, pl.LazyFrame)

_FLAGS = ("do_not_contact", "deceased")
CONTROL_SCHEMA: dict[str, pl.DataType] = {
    "seq": pl.Int64(),
    "patient_id": pl.String(),
    "op": pl.String(),
    "arg": pl.String(),
}


def upd_schema() -> dict[str, pl.DataType]:
    return {"seq": pl.Int64(), **{k: v for k, v in PERSONS_SCHEMA.items() if k not in _FLAGS}}


def fact_rows_schema() -> dict[str, pl.DataType]:
    return {"seq": pl.Int64(), **FACTS_SCHEMA}


def keys_expr(keys: list[str], rows: pl.DataFrame) -> pl.Expr:
    """A filter true exactly for the facts whose ``keys`` equal one of ``rows`` (nulls equal to nulls), the
    semi-join's answer as an expression that Polars pushes into the Parquet scan: one ``is_in`` on the last key
    per combination of the others."""
    if rows.height == 0:
        return pl.lit(False)
    *lead, last = keys
    terms: list[pl.Expr] = []
    groups = rows.group_by(lead, maintain_order=True).agg(pl.col(last)) if lead else None
    for row in groups.iter_rows(named=True) if groups is not None else [{last: rows[last].to_list()}]:
        values = row[last]
        present = [v for v in values if v is not None]
        hit = pl.col(last).is_in(pl.Series(present, dtype=rows.schema[last]).implode())
        if len(present) < len(values):
            hit = hit | pl.col(last).is_null()
        for k in lead:
            hit = hit & pl.col(k).eq_missing(pl.lit(row[k], dtype=rows.schema[k]))
        terms.append(hit)
    return pl.any_horizontal(terms) if len(terms) > 1 else terms[0]


def conform(frame: _F, schema: dict[str, pl.DataType]) -> _F:
    """``frame`` (eager or lazy) with exactly ``schema``'s columns in order: missing ones null, others cast, extra
    ones dropped."""
    have = set(frame.collect_schema().names())
    return frame.select([pl.col(c).cast(t) if c in have else pl.lit(None, dtype=t).alias(c) for c, t in schema.items()])


def sort_by_patient(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` sorted by ``patient_id`` (stable, nulls first): the same order as sorting the strings, at a third
    of the cost, by sorting the ids' ranks (an Enum of the sorted distinct ids) instead of the strings."""
    ids = frame["patient_id"].drop_nulls().unique().sort()
    return frame.sort(pl.col("patient_id").cast(pl.Enum(ids)), maintain_order=True)


#: Parquet as the store writes it: zstd level 1 (as small as level 3 on these columns, a third faster to write),
#: and row groups small enough that a filter on ``patient_id`` (files are sorted by patient) or on a fact's kind
#: and code skips most of a large base by the row groups' statistics.
PARQUET_OPTIONS: dict[str, Any] = {"compression": "zstd", "compression_level": 1, "row_group_size": 122_880}
