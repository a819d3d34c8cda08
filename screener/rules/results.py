"""Result rows: ``study_id, patient_id, outcome, rule_hash, criteria`` built from the staged value frames."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Literal

import numpy as np
import polars as pl

from screener.rules._facts import constant
from screener.rules.criteria import Compiled, CriterionColumns
from screener.rules.model import Study
from screener.vocab import MATCH_OUTCOMES, TS

__all__ = ["CRITERIA_DTYPE", "EVIDENCE_MODES", "MATCH_OUTCOMES", "ROW_MODES", "Evidence", "Rows", "criteria_json"]

#: one row's criteria: name, include/exclude, three-valued result, evidence text, when a true windowed
#: criterion's window closes (``expires_at``, null otherwise) and the words people read (``label``)
CRITERIA_DTYPE = pl.List(
    pl.Struct(
        {
            "name": pl.String,
            "group": pl.String,
            "result": pl.Boolean,
            "evidence": pl.String,
            "expires_at": TS,
            "label": pl.String,
        }
    )
)

Evidence = Literal["all", "matches", "none", "outcomes"]
EVIDENCE_MODES: tuple[str, ...] = ("all", "matches", "none", "outcomes")
Rows = Literal["all", "matches"]
ROW_MODES: tuple[str, ...] = ("all", "matches")


def _result(study: Study, comp: Compiled, with_evidence: bool, criteria_list: bool = True) -> pl.Expr:
    """One study's result as a struct expression (``study_id, outcome, rule_hash, criteria``): the small-call
    counterpart of :func:`_assemble` (one query for every study; per-row structs of literals). Cached."""
    key = (with_evidence, criteria_list)
    hit = comp.results.get(key)
    if hit is None:
        hit = comp.results[key] = _result_expr(study, comp, with_evidence, criteria_list)
    return hit


def _result_expr(study: Study, comp: Compiled, with_evidence: bool, criteria_list: bool) -> pl.Expr:
    if not criteria_list:
        criteria = pl.lit(None, dtype=CRITERIA_DTYPE)
    elif comp.criteria:
        none = pl.lit(None, dtype=pl.String)
        criteria = pl.concat_arr(
            [
                pl.struct(
                    pl.lit(c.name).alias("name"),
                    pl.lit(c.group).alias("group"),
                    pl.col(c.value).alias("result"),
                    (pl.col(c.evidence) if with_evidence else none).alias("evidence"),
                    (pl.col(c.expires) if with_evidence and c.expires else pl.lit(None, dtype=TS)).alias("expires_at"),
                    pl.lit(c.label, dtype=pl.String).alias("label"),
                )
                for c in comp.criteria
            ]
        ).arr.to_list()
    else:
        criteria = pl.lit([], dtype=CRITERIA_DTYPE)
    return pl.struct(
        pl.lit(study.id).alias("study_id"),
        pl.col(comp.outcome_col).cast(pl.String).alias("outcome"),
        pl.lit(study.rule_hash or study.content_hash).alias("rule_hash"),
        criteria.cast(CRITERIA_DTYPE).alias("criteria"),
    )


def _long(frame: pl.LazyFrame, results: Sequence[pl.Expr]) -> pl.LazyFrame:
    """Study-major result rows from one struct column per study (patients in frame order within a study)."""
    return (
        frame.select(pl.col("patient_id"), *(r.alias(f"_r{i}") for i, r in enumerate(results)))
        .unpivot(index="patient_id", value_name="_r")
        .select(pl.col("patient_id"), pl.col("_r").struct.unnest())
        .select(["study_id", "patient_id", "outcome", "rule_hash", "criteria"])
    )


def _masked_rows(frame: pl.DataFrame, picked: Sequence[tuple[Study, Compiled, pl.Series]]) -> pl.DataFrame:
    """Result rows with evidence of every study in ``picked`` (``study, compiled, mask``: a Boolean over
    ``frame``'s rows), only the rows its mask selects: the rows of :func:`_long` of the studies' ``_result(...,
    True)`` the masks select, built without planning a query per criterion. Every criterion cell is gathered at
    once from the studies' columns stacked end to end (``name``, ``group`` and ``label`` from per-criterion
    lists), each row padded to the most criteria with a null cell, cut into rows and each list cut to its study's
    criteria: the struct-of-literals query cost a micro-batch about 0.6 ms a matched study whatever the rows."""
    n = frame.height
    crit: list[CriterionColumns] = []
    plans: list[tuple[Study, Compiled, np.ndarray, int]] = []  # study, compiled, its rows, its first criterion
    for study, comp, mask in picked:
        # (numpy: ``arg_true`` plans a query)
        plans.append((study, comp, np.flatnonzero(mask.to_numpy().astype(bool)), len(crit)))
        crit.extend(comp.criteria)
    width = max((len(c.criteria) for _s, c, _r, _f in plans), default=0)
    rows = np.concatenate([r for _s, _c, r, _f in plans]) if plans else np.zeros(0, dtype=np.int64)
    sizes = np.array([r.size for _s, _c, r, _f in plans], dtype=np.int64)
    per_row = np.repeat(np.array([len(c.criteria) for _s, c, _r, _f in plans], dtype=np.int64), sizes)
    study_at = pl.Series(np.repeat(np.arange(len(plans), dtype=np.uint32), sizes))
    if width:
        # per output row, its criteria's blocks in the stacked columns, padded with the null block (len(crit))
        blocks = np.full((rows.size, width), len(crit), dtype=np.int64)
        start = 0
        for _s, comp, r, first in plans:
            k = len(comp.criteria)
            blocks[start : start + r.size, :k] = first + np.arange(k, dtype=np.int64)
            start += r.size
        cells = blocks * n + np.where(blocks < len(crit), rows[:, None], 0)
        which = pl.Series(blocks.ravel(), dtype=pl.UInt32)
        at = pl.Series(cells.ravel(), dtype=pl.UInt64)

        def stacked(cols: list[pl.Series], dtype: pl.DataType) -> pl.Series:
            every = [c if c.dtype == dtype else c.cast(dtype) for c in cols]
            return pl.concat([*every, constant("", None, dtype, max(n, 1))]).gather(at)

        def named(values: list[str]) -> pl.Series:
            return pl.Series([*values, None], dtype=pl.String).gather(which)

        none_t = constant("", None, TS, n)
        flat = pl.DataFrame(
            [
                named([c.name for c in crit]).alias("name"),
                named([c.group for c in crit]).alias("group"),
                stacked([frame.get_column(c.value) for c in crit], pl.Boolean()).alias("result"),
                stacked([frame.get_column(c.evidence) for c in crit], pl.String()).alias("evidence"),
                stacked([frame.get_column(c.expires) if c.expires else none_t for c in crit], TS).alias("expires_at"),
                named([c.label for c in crit]).alias("label"),
            ]
        ).to_struct("criteria")
        padded = flat.reshape((rows.size, width)).arr.to_list()
        criteria = (
            pl.DataFrame([padded, pl.Series("k", per_row)])
            .select(pl.col("criteria").list.head(pl.col("k")).cast(CRITERIA_DTYPE))
            .to_series()
        )
    else:
        criteria = pl.Series("criteria", [[]] * rows.size, dtype=CRITERIA_DTYPE)
    outcomes = [frame.get_column(c.outcome_col).gather(pl.Series(r, dtype=pl.UInt32)) for _s, c, r, _f in plans]
    return pl.DataFrame(
        [
            pl.Series("study_id", [s.id for s, _c, _r, _f in plans], dtype=pl.String).gather(study_at),
            frame.get_column("patient_id").gather(pl.Series(rows, dtype=pl.UInt32)).alias("patient_id"),
            (pl.concat(outcomes) if outcomes else pl.Series([], dtype=pl.String)).cast(pl.String).alias("outcome"),
            pl.Series("rule_hash", [s.rule_hash or s.content_hash for s, _c, _r, _f in plans], dtype=pl.String).gather(
                study_at
            ),
            criteria,
        ]
    )


def _assemble(
    frame: pl.DataFrame,
    study: Study,
    comp: Compiled,
    with_evidence: bool,
    keep: pl.Expr | None = None,
    criteria_list: bool = True,
) -> pl.DataFrame:
    """One study's result rows (``study_id, patient_id, outcome, rule_hash, criteria``) from a frame holding its
    value (and, if ``with_evidence``, evidence) columns; only the rows where ``keep`` is true when given.

    The criteria lists are built flat and reshaped (criterion-major within a row): every criterion's result
    (and evidence) interleaved into one column of ``rows x criteria`` values, names and groups gathered from
    the study's short lists, then one struct column cut into rows of ``k``. Building the structs per row from
    broadcast literals costs several times more.
    """
    names = [c.name for c in comp.criteria]
    vcols = [c.value for c in comp.criteria]
    ecols = [c.evidence for c in comp.criteria] if with_evidence else []
    tcols = [c.expires for c in comp.criteria if c.expires] if with_evidence else []
    if not criteria_list:
        vcols = []
        tcols = []
    # Columns picked by name (a select on the wide frame would plan over every column of it).
    names_in = ["patient_id", comp.outcome_col, *dict.fromkeys([*vcols, *ecols, *tcols])]
    part = pl.DataFrame([frame.get_column(c) for c in names_in])
    if keep is not None:
        part = part.filter(keep)
    n, k = part.height, len(names)
    if not criteria_list:
        criteria = constant("criteria", None, CRITERIA_DTYPE, n)
    elif k == 0 or n == 0:
        criteria = pl.Series("criteria", [[]] * n, dtype=CRITERIA_DTYPE)
    else:
        times = [pl.col(c.expires) if c.expires and tcols else pl.lit(None, dtype=TS) for c in comp.criteria]
        flat = part.select(
            pl.concat_arr(vcols).reshape((-1,)).alias("result"),
            (pl.concat_arr(ecols).reshape((-1,)) if ecols else pl.lit(None, dtype=pl.String)).alias("evidence"),
            (pl.concat_arr(times).reshape((-1,)) if tcols else pl.lit(None, dtype=TS)).alias("expires_at"),
        )
        index = pl.Series(np.tile(np.arange(k, dtype=np.uint32), n))
        flat = flat.select(
            pl.Series("name", names, dtype=pl.String).gather(index),
            pl.Series("group", [c.group for c in comp.criteria], dtype=pl.String).gather(index),
            pl.col("result").cast(pl.Boolean),
            pl.col("evidence").cast(pl.String),
            pl.col("expires_at").cast(TS),
            pl.Series("label", [c.label for c in comp.criteria], dtype=pl.String).gather(index),
        )
        criteria = flat.to_struct("criteria").reshape((n, k)).arr.to_list().cast(CRITERIA_DTYPE)
    return pl.DataFrame(
        {
            "study_id": constant("study_id", study.id, pl.String(), n),
            "patient_id": part.get_column("patient_id"),
            "outcome": part.get_column(comp.outcome_col).cast(pl.String),
            "rule_hash": constant("rule_hash", study.rule_hash or study.content_hash, pl.String(), n),
            "criteria": criteria,
        }
    )


def _plain(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with every column a plain Series: the in-memory engine mis-sizes expressions over broadcast
    ("scalar") columns, e.g. a literal carried through a join (length 1 against the frame's height)."""
    return pl.DataFrame(frame.get_columns())


def _counts_frame(
    studies: Sequence[Study], eligible: Sequence[int], possible: Sequence[int], patients: int
) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "study_id": [s.id for s in studies],
            "eligible": list(eligible),
            "possible": list(possible),
            "ineligible": [patients - e - p for e, p in zip(eligible, possible, strict=True)],
        },
        schema={"study_id": pl.String, "eligible": pl.UInt32, "possible": pl.UInt32, "ineligible": pl.UInt32},
    )


def _outcome_sums(full: pl.DataFrame, comps: Sequence[Compiled]) -> tuple[list[int], list[int]]:
    """Per study: the number of ``eligible`` and of ``possible`` rows of the values frame (one pass)."""
    k = len(comps)
    sums = full.select(
        *((pl.col(c.outcome_col) == "eligible").sum().alias(f"e{i}") for i, c in enumerate(comps)),
        *((pl.col(c.outcome_col) == "possible").sum().alias(f"p{i}") for i, c in enumerate(comps)),
    ).row(0)
    return [int(x) for x in sums[:k]], [int(x) for x in sums[k:]]


def _outcome_rows(full: pl.DataFrame, pairs: Sequence[tuple[Study, Compiled]]) -> pl.DataFrame:
    """Every (study, patient) row with ``criteria`` null, study by study, built in a few whole-frame steps."""
    n, k = full.height, len(pairs)
    study_index = pl.Series(np.repeat(np.arange(k, dtype=np.uint32), n))
    return pl.DataFrame(
        {
            "study_id": pl.Series([s.id for s, _c in pairs], dtype=pl.String).gather(study_index),
            "patient_id": pl.concat([full.get_column("patient_id")] * k, rechunk=False),
            "outcome": pl.concat([full.get_column(c.outcome_col) for _s, c in pairs], rechunk=False).cast(pl.String),
            "rule_hash": pl.Series([s.rule_hash or s.content_hash for s, _c in pairs], dtype=pl.String).gather(
                study_index
            ),
            "criteria": constant("criteria", None, CRITERIA_DTYPE, n * k),
        }
    )


def criteria_json(criteria: Sequence[dict[str, Any]] | pl.Series | None) -> str:
    """Serialise one row's ``criteria`` list to JSON for storage: ``name, group, result`` (null stays null),
    ``evidence``, ``label`` and ``expires_at`` (ISO 8601 UTC, or null). Items without the last two (an older
    row) get ``label`` null and ``expires_at`` null."""
    if criteria is None:
        return "[]"
    items = criteria.to_list() if isinstance(criteria, pl.Series) else list(criteria)
    out = []
    for c in items:
        expires = c.get("expires_at")
        out.append(
            {
                "name": c["name"],
                "group": c["group"],
                "result": c["result"],
                "evidence": c["evidence"],
                "label": c.get("label"),
                "expires_at": expires.isoformat() if isinstance(expires, datetime) else expires,
            }
        )
    return json.dumps(out, separators=(",", ":"))
