"""The small tables :mod:`screener.rules._select` keys the facts by: the concept sets of each distinct (system,
code) pair, the unit spellings and their conversions (``_sc``, ``_ck``, ``_u``), and the memo of what was decided
about codes and spellings (:class:`KeyMemo`, kept per row plan so a micro-batch judges only what it is the first
to bring)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from screener.rules._facts import membership
from screener.rules.units import normalise_unit_expr

if TYPE_CHECKING:
    from screener.rules._select import RowPlan

__all__ = ["MEMO_MAX", "KeyMemo", "Keys", "code_concepts", "conversion", "keys_of"]

ENGINE: Any = "in-memory"


class KeyMemo:
    """What :func:`screener.rules._select.keyed_fact_rows` decided about codes and unit spellings, kept per row plan (a
    study set) so a micro-batch judges only the codes and spellings it is the first to bring: the concept membership of
    a code (a cross join with every system, then a join per prefix length) and the conversions of a spelling are pure
    functions of the plan. Each memo is one tuple replaced whole (threads screening the same plan at once may each judge
    a code; none sees a half-updated memo), and it is dropped once it holds :data:`MEMO_MAX` entries."""

    def __init__(self) -> None:
        empty_cc = pl.DataFrame(schema={"system": pl.String, "code": pl.String, "_ck": pl.UInt32})
        empty_units = pl.DataFrame(schema={"unit": pl.String, "_ck": pl.UInt32, "_a": pl.Float64, "_b": pl.Float64})
        #: the codes judged (null included) and the ``system, code, _ck`` rows of those in some concept
        self.codes: tuple[frozenset[str | None], pl.DataFrame] = (frozenset(), empty_cc)
        #: the unit spellings judged (null included) and their ``unit, _ck, _a, _b`` conversions
        self.units: tuple[frozenset[str | None], pl.DataFrame] = (frozenset(), empty_units)


#: the most codes (or unit spellings) a :class:`KeyMemo` keeps before it starts again
MEMO_MAX = 200_000


def code_concepts(facts: pl.DataFrame, rp: RowPlan) -> pl.DataFrame:
    """``(system, code, _ck)`` for every distinct code of ``facts`` in some concept: the memo's rows, after the codes
    it has not judged yet are judged (:func:`_judge_codes`)."""
    codes = facts.get_column("code").unique()
    judged, known = rp.memo.codes
    new = [c for c in codes.to_list() if c not in judged]
    if new:
        fresh = _judge_codes(pl.Series("code", new, dtype=pl.String), rp)
        judged, known = judged.union(new), pl.concat([known, fresh], how="vertical", rechunk=True)
        rp.memo.codes = (judged, known) if len(judged) <= MEMO_MAX else (frozenset(), known.clear())
    return known.filter(pl.col("code").is_in(codes.implode()))


def _judge_codes(codes: pl.Series, rp: RowPlan) -> pl.DataFrame:
    """``(system, code, _ck)`` for every code of ``codes`` (distinct) in some concept, decided on the codes paired
    with every system a concept lists (one string ``unique`` over the facts, not a two-column one)."""
    systems = sorted({system for c in rp.concepts.values() for system, _ in c.codes})
    paired = (
        codes.to_frame()
        .join(pl.DataFrame({"system": systems}, schema={"system": pl.String}), how="cross")
        .with_row_index("_fid")
    )
    pairs = membership(paired.lazy(), rp.concepts, rp.member_table)
    ck = pl.col("_ckey").replace_strict(rp.ckeys, return_dtype=pl.UInt32).alias("_ck")
    return paired.lazy().join(pairs, on="_fid", how="inner").select("system", "code", ck).collect(engine=ENGINE)


@dataclass(frozen=True)
class Keys:
    """The small tables :func:`screener.rules._select._concept_facts` keys the facts by: ``pairs`` (``_sc, system,
    code``: the distinct (system, code) pairs in some concept), ``concept_of`` (``_sc, _ck``: each pair's concept sets)
    and the unit conversion of each (concept, spelling ``_u``) as two dense columns ``a``/``b`` at ``_ck * n_units +
    _u``."""

    pairs: pl.DataFrame
    concept_of: pl.DataFrame
    spellings: pl.DataFrame  # _u, unit
    units: pl.DataFrame  # _ck, _u, _a, _b


def keys_of(facts: pl.DataFrame, cc: pl.DataFrame, rp: RowPlan) -> Keys:
    spellings = facts.select(pl.col("unit").unique()).with_row_index("_u")
    judged, known = rp.memo.units
    new = [u for u in spellings.get_column("unit").to_list() if u not in judged]
    if new:
        fresh = (
            pl.LazyFrame({"unit": new}, schema={"unit": pl.String})
            .with_columns(normalise_unit_expr(pl.col("unit")).alias("_unit"))
            .join(rp.conversions.lazy(), on="_unit", how="inner")
            .select("unit", "_ck", "_a", "_b")
            .collect(engine=ENGINE)
        )
        judged, known = judged.union(new), pl.concat([known, fresh], how="vertical", rechunk=True)
        rp.memo.units = (judged, known) if len(judged) <= MEMO_MAX else (frozenset(), known.clear())
    # (a null spelling normalises to "" and converts as that: the memo's row for it has a null unit)
    units = spellings.join(known, on="unit", how="inner", nulls_equal=True).select("_ck", "_u", "_a", "_b")
    pairs = cc.select("system", "code").unique().with_row_index("_sc")
    concept_of = cc.join(pairs, on=["system", "code"]).select("_sc", "_ck")
    return Keys(pairs, concept_of, spellings, units)


def conversion(keys: Keys, n_ck: int, ck: pl.Series, u: pl.Series) -> tuple[pl.Series, pl.Series]:
    """``_a``, ``_b`` of the (concept, unit spelling) pairs ``ck``, ``u`` (``n_ck`` concepts; null without a
    conversion): a gather from the dense table of every pair, or a join when that table would be large."""
    n_u = max(keys.spellings.height, 1)
    if n_ck * n_u <= 1 << 22:
        at = (keys.units["_ck"].cast(pl.UInt64) * n_u + keys.units["_u"]).cast(pl.UInt32)
        idx = (ck.cast(pl.UInt64) * n_u + u).cast(pl.UInt32)
        out = []
        for c in ("_a", "_b"):
            dense = pl.Series(c, [None] * (n_ck * n_u), dtype=pl.Float64)
            dense.scatter(at, keys.units[c])
            out.append(dense.gather(idx))
        return out[0], out[1]
    got = pl.DataFrame([ck.alias("_ck"), u.alias("_u")]).join(
        keys.units, on=["_ck", "_u"], how="left", maintain_order="left"
    )
    return got["_a"], got["_b"]
