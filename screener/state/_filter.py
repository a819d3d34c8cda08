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

    def __call__(self, facts: pl.DataFrame) -> pl.DataFrame:
        if self.since is not None:
            facts = facts.filter(pl.col("occurred_at") >= pl.lit(self.since).cast(TS))
        if self.expr is None or facts.height == 0:
            return facts
        if self.keys is None:
            return facts.filter(self.expr.fill_null(False))
        self.learn(facts)
        assert self._known is not None
        allowed = self._known.filter(pl.col("_keep")).select(self.keys)
        return facts.join(allowed, on=self.keys, how="semi", nulls_equal=True, maintain_order="left")

    def learn(self, facts: pl.DataFrame) -> None:
        """Judge the key combinations in ``facts`` not seen before (one evaluation of ``expr`` for all of them).
        ``facts`` needs only the key columns. The engine calls this once per batch, before the partitions."""
        if self.expr is None or self.keys is None or facts.height == 0:
            return
        distinct = facts.select(self.keys).unique()
        unknown = (
            distinct
            if self._known is None
            else distinct.join(self._known.select(self.keys), on=self.keys, how="anti", nulls_equal=True)
        )
        if unknown.height:
            if self.judge is not None:
                judged = unknown.with_columns(self.judge(unknown).alias("_keep"))
            else:
                judged = unknown.with_columns(self.expr.fill_null(False).alias("_keep"))
            self._known = judged if self._known is None else pl.concat([self._known, judged], how="vertical")
