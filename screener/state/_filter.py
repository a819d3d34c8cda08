"""Which facts the state keeps: :class:`FactFilter`, the fast form of the rule compiler's keep expression."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import polars as pl

from screener.vocab import TS


class FactFilter:
    """Keeps the facts for which ``expr`` is true (null counts as false) and, when ``since`` is set, that
    occurred at or after ``since``. Equivalent to ``facts.filter(expr)`` but fast for the engine's case.

    The rule compiler's filters are large expressions over code columns only; evaluating them on every fact is
    slow. When ``expr`` reads only the low-cardinality key columns (``KEY_COLUMNS``), it is evaluated once per
    distinct key combination, the answers are cached, and facts are kept by a semi-join on the allowed keys.
    Any other expression is applied directly. Not thread-safe (one per engine).
    """

    KEY_COLUMNS = ("kind", "system", "code", "unit", "status", "setting")

    def __init__(
        self,
        expr: pl.Expr | None,
        since: datetime | None = None,
        judge: Callable[[pl.DataFrame], pl.Series] | None = None,
    ) -> None:
        self.expr = expr
        self.since = since
        #: Optional fast form of ``expr`` on distinct key rows (a Boolean per row, the same answers): evaluating a
        #: large expression costs its planning, about half a second for fifty studies, whatever the rows.
        self.judge = judge
        roots = set(expr.meta.root_names()) if expr is not None else set()
        self.keys: list[str] | None = (
            [c for c in self.KEY_COLUMNS if c in roots] if roots and roots <= set(self.KEY_COLUMNS) else None
        )
        self._known: pl.DataFrame | None = None
        #: ``_known`` as a dict (key row -> kept), for a micro-batch's few distinct rows: looked up in Python
        #: instead of an anti-join and a semi-join against every row judged so far (about 2 ms a partition, 50
        #: studies); ``None`` when stale (a large frame was judged by the join), rebuilt on first use.
        self._verdicts: dict[tuple[str | None, ...], bool] | None = {}

    def __call__(self, facts: pl.DataFrame) -> pl.DataFrame:
        if self.since is not None:
            facts = facts.filter(pl.col("occurred_at") >= pl.lit(self.since).cast(TS))
        if self.expr is None or facts.height == 0:
            return facts
        if self.keys is None:
            return facts.filter(self.expr.fill_null(False))
        distinct = facts.select(self.keys).unique()
        if distinct.height <= SMALL_DISTINCT:
            rows = self._judge_rows(distinct)
            verdicts = self._verdicts
            assert verdicts is not None
            allowed = [r for r in rows if verdicts[r]]
            if len(allowed) == len(rows):
                return facts
            if not allowed:
                return facts.clear()
            keys = pl.DataFrame(allowed, schema=distinct.schema, orient="row")
            return facts.join(keys, on=self.keys, how="semi", nulls_equal=True, maintain_order="left")
        self._learn_distinct(distinct)
        assert self._known is not None
        allowed_keys = self._known.filter(pl.col("_keep")).select(self.keys)
        return facts.join(allowed_keys, on=self.keys, how="semi", nulls_equal=True, maintain_order="left")

    def learn(self, facts: pl.DataFrame) -> None:
        """Judge the key combinations in ``facts`` not seen before (one evaluation of ``expr`` for all of them).
        ``facts`` needs only the key columns. The engine calls this once per batch, before the partitions."""
        if self.expr is None or self.keys is None or facts.height == 0:
            return
        distinct = facts.select(self.keys).unique()
        if distinct.height <= SMALL_DISTINCT:
            self._judge_rows(distinct)
        else:
            self._learn_distinct(distinct)

    def _judge_rows(self, distinct: pl.DataFrame) -> list[tuple[str | None, ...]]:
        """``distinct``'s rows (distinct key rows, few), each judged now (:attr:`_verdicts` has them all)."""
        verdicts = self._verdicts
        if verdicts is None:
            known = self._known
            verdicts = {} if known is None else self._verdicts_of(known)
            self._verdicts = verdicts
        rows = distinct.rows()
        new = [r for r in rows if r not in verdicts]
        if new:
            judged = self._judge(pl.DataFrame(new, schema=distinct.schema, orient="row"))
            verdicts.update(self._verdicts_of(judged))
        return rows

    def _learn_distinct(self, distinct: pl.DataFrame) -> None:
        """Judge the rows of ``distinct`` (distinct key rows) not judged before, by a join with those that were."""
        assert self.keys is not None
        unknown = (
            distinct
            if self._known is None
            else distinct.join(self._known.select(self.keys), on=self.keys, how="anti", nulls_equal=True)
        )
        if unknown.height:
            self._judge(unknown)
            self._verdicts = None

    def _judge(self, unknown: pl.DataFrame) -> pl.DataFrame:
        """``unknown`` (key rows never judged) with ``_keep``, added to ``_known``."""
        assert self.expr is not None
        if self.judge is not None:
            judged = unknown.with_columns(self.judge(unknown).alias("_keep"))
        else:
            judged = unknown.with_columns(self.expr.fill_null(False).alias("_keep"))
        self._known = judged if self._known is None else pl.concat([self._known, judged], how="vertical")
        return judged

    def _verdicts_of(self, judged: pl.DataFrame) -> dict[tuple[str | None, ...], bool]:
        assert self.keys is not None
        # (a null verdict keeps nothing, as the filter on ``_keep`` does)
        return {row: keep is True for row, keep in zip(judged.select(self.keys).rows(), judged["_keep"], strict=True)}


#: Up to this many distinct key rows, a frame is judged and filtered through :attr:`FactFilter._verdicts` (a
#: micro-batch's partition has tens to hundreds); a larger frame (a store's load, a rebuild) by joins.
SMALL_DISTINCT = 4096
