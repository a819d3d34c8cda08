"""Feature values of the SQL lowering (:mod:`screener.rules.sql`): which fact rows each feature selects and the
per-patient statistics it reads, as :mod:`screener.rules.features` and :mod:`screener.rules._leaves` define them.

Features are shared by key across studies. Order-free statistics are aggregates of one ``GROUP BY patient_id``
over ``_rows`` whose ``FILTER (WHERE ...)`` clauses select each feature's rows (``_agg``); order-dependent ones
(episodes, exposure days, continuity, relations) are window functions (:mod:`screener.rules._sql_windows`),
gathered into ``_wagg``. Selection, as the Polars path: facts up to now (``upcoming``: planned/ordered facts in
``[now, now + w]``), planned/ordered facts skipped unless the filter reads ``.status``, a look-back
``[now - w, now]`` inclusive on ``occurred_at`` (periods: on the period's end), the filter true.
"""

from __future__ import annotations

from datetime import datetime

from screener.errors import RuleError
from screener.rules._sql_facts import DAY_US, day, registrations_sql, rows_ctes, ts
from screener.rules._sql_filters import filter_sql, reads_attributes, reads_encounter
from screener.rules._sql_windows import WindowSQL
from screener.rules.concepts import ConceptSet
from screener.rules.ir import Feat, Source

__all__ = ["FeatureSQL"]


class FeatureSQL:
    """Collects the features of a set of studies (shared by key) and writes the facts aggregation."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.concepts: dict[str, tuple[int, ConceptSet]] = {}
        self.feats: dict[str, tuple[int, Feat]] = {}
        self.filters: dict[str, tuple[int, Source, str]] = {}  # source key -> (index, source, SQL)
        self.stats: dict[str, str] = {}  # column -> aggregate over _rows
        self.wcols: list[str] = []  # columns of _wagg
        self.windows = WindowSQL(now)
        self.until = now  # the latest fact time any feature reads (upcoming looks ahead)
        self._done: dict[str, str] = {}  # feature key and transform -> its value SQL

    def _concept(self, c: ConceptSet) -> int:
        if c.key not in self.concepts:
            self.concepts[c.key] = (len(self.concepts), c)
        return self.concepts[c.key][0]

    def _sel(self, src: Source, where: str, *, start: datetime | None = None, byend: bool = False) -> str:
        """The SQL condition selecting ``src``'s done facts up to now, from ``start`` (on the period's end when
        ``byend``), its filter true."""
        parts = [f"_ck = {self._concept(src.concept)}", f"occurred_at <= {ts(self.now)}"]
        if not src.reads_status:
            parts.append("_done")
        if start is not None:
            parts.append(f"{'_pend' if byend else 'occurred_at'} >= {ts(start)}")
        return " AND ".join([*parts, *self._filter(src, where)])

    def _filter(self, src: Source, where: str) -> list[str]:
        if src.filter is None:
            return []
        if src.key not in self.filters:
            self.filters[src.key] = (len(self.filters), src, filter_sql(src.filter, where))
        return [f"_k{self.filters[src.key][0]} IS TRUE"]

    def leaf(self, feat: Feat, where: str) -> str:
        """The SQL value of ``feat`` over the per-patient frame (its statistics become columns of ``_base``)."""
        if feat.key not in self.feats:
            self.feats[feat.key] = (len(self.feats), feat)
        ident = f"{feat.key}|{feat.transform}"  # features of one key share statistics, not values
        if ident not in self._done:
            self._done[ident] = self._value(feat, self.feats[feat.key][0], where)
        return self._done[ident]

    def _value(self, feat: Feat, i: int, where: str) -> str:
        t, w, src, now = feat.transform, feat.window, feat.source, self.now
        start = w.start(now) if w is not None else None

        def wcol() -> str:
            self.wcols.append(f"_w{i}")
            return f"_w{i}"

        if feat.mode == "upcoming":
            assert w is not None
            end = w.end(now)
            self.until = max(self.until, end)
            sel = f"_ck = {self._concept(src.concept)} AND NOT _done AND occurred_at >= {ts(now)} "
            sel += f"AND occurred_at <= {ts(end)}"
            sel = " AND ".join([sel, *self._filter(src, where)])
            return f"(coalesce({self._stat(i, 'n', f'count(*) FILTER (WHERE {sel})')}, 0) > 0)"
        if t == "exposure_days":
            self.windows.add_exposure(i, self._sel(src, where, start=start, byend=True), start)
            return f"CAST(coalesce({wcol()}, 0) AS DOUBLE)"
        if t == "continuous":
            assert w is not None and feat.gap is not None
            self.windows.add_continuous(i, self._sel(src, where), w, feat.gap)
            return f"(coalesce({wcol()}, 0) > 0)"
        if t in ("after", "before"):
            assert w is not None and feat.other is not None
            self.windows.add_relation(i, self._sel(src, where), self._sel(feat.other, where), t == "after", w)
            return f"(coalesce({wcol()}, 0) > 0)"
        if t == "episodes":
            assert feat.gap is not None
            self.windows.add_episodes(i, self._sel(src, where, start=start), feat.gap)
            return f"CAST(coalesce({wcol()}, 0) AS DOUBLE)"
        sel = self._sel(src, where, start=start, byend=feat.mode == "period")
        return self._plain(feat, i, sel, where)

    def _stat(self, i: int, name: str, agg: str) -> str:
        self.stats[f"_f{i}_{name}"] = agg
        return f"_f{i}_{name}"

    def _plain(self, feat: Feat, i: int, sel: str, where: str) -> str:
        t, now = feat.transform, self.now
        val = f"{sel} AND _v IS NOT NULL"
        aggs = {
            "n": f"count(*) FILTER (WHERE {sel})",
            "last": f"max(occurred_at) FILTER (WHERE {sel})",
            "first": f"min(occurred_at) FILTER (WHERE {sel})",
            "latest": f"arg_max(_v, _ord) FILTER (WHERE {val})",
            "earliest": f"arg_min(_v, _ord) FILTER (WHERE {val})",
            "min": f"min(_v) FILTER (WHERE {val})",
            "max": f"max(_v) FILTER (WHERE {val})",
            "mean": f"avg(_v) FILTER (WHERE {val})",
            "n_num": f"count(_v) FILTER (WHERE {val})",
            "latest_code": f"arg_max(_lc, _ord) FILTER (WHERE {sel})",
            "days": f"count(DISTINCT CASE WHEN {sel} THEN {day('occurred_at')} END)",
            # on_now: a period still open now (ended later, or no end and active or no status)
            "on": f"count(*) FILTER (WHERE {sel} AND (ended_at >= {ts(now)} OR (ended_at IS NULL AND "
            "coalesce(status, 'active') = 'active')))",
        }

        def stat(name: str) -> str:
            return self._stat(i, name, aggs[name])

        if t in ("change", "pct_change"):
            first, last, n = stat("earliest"), stat("latest"), stat("n_num")
            if t == "change":
                return f"CASE WHEN coalesce({n}, 0) >= 2 THEN {last} - {first} END"
            return f"CASE WHEN coalesce({n}, 0) >= 2 AND {first} <> 0 THEN 100 * ({last} - {first}) / {first} END"
        if t == "on_now":
            return f"(coalesce({stat('on')}, 0) > 0)"
        if t == "count_days":
            return f"CAST(coalesce({stat('days')}, 0) AS DOUBLE)"
        if t == "age_at_first":
            d, b = f"CAST({stat('first')} AS DATE)", "_birth"
            later = f"(month({b}) > month({d}) OR (month({b}) = month({d}) AND day({b}) > day({d})))"
            return f"CAST(year({d}) - year({b}) - CASE WHEN {later} THEN 1 ELSE 0 END AS DOUBLE)"
        names = {"ever": "n", "within": "n", "count": "n", "days_since": "last", "days_since_first": "first"}
        if t not in names and t not in aggs:
            raise RuleError(f"{where}: the SQL lowering does not support the transform '{t}'")
        col = stat(names.get(t, t))
        if t in ("ever", "within"):
            return f"(coalesce({col}, 0) > 0)"
        if t == "count":
            return f"CAST(coalesce({col}, 0) AS DOUBLE)"
        if t in ("days_since", "days_since_first"):
            return f"floor(CAST(epoch_us({ts(now)}) - epoch_us({col}) AS DOUBLE) / {DAY_US})"
        return col

    # ---------------------------------------------------------------- the CTEs

    @property
    def reads_attributes(self) -> bool:
        return any(reads_attributes(s.filter) for _, s, _ in self.filters.values() if s.filter is not None)

    def ctes(self, facts: str) -> list[str]:
        """The fact-side CTEs: ``_rows``, ``_agg`` (when some statistic is an aggregate) and ``_wagg``."""
        if not self.stats and not self.wcols:
            return []
        enc = any(reads_encounter(s.filter) for _, s, _ in self.filters.values() if s.filter is not None)
        concepts = {i: c for i, c in self.concepts.values()}
        filters = {j: (self._concept(s.concept), s, sql) for j, s, sql in self.filters.values()}
        out = rows_ctes(facts, self.now, self.until, concepts, filters, attrs=self.reads_attributes, encounters=enc)
        if self.stats:
            stats = ", ".join(f"{a} AS {c}" for c, a in self.stats.items())
            out.append(f"_agg AS (SELECT patient_id, {stats} FROM _rows GROUP BY patient_id)")
        if self.wcols:
            wctes, names = self.windows.ctes()
            union = " UNION ALL ".join(f"SELECT patient_id, _fi, _val FROM {n}" for n in names)
            cols = ", ".join(f"max(_val) FILTER (WHERE _fi = {c[2:]}) AS {c}" for c in self.wcols)
            out += [*wctes, f"_wagg AS (SELECT patient_id, {cols} FROM ({union}) AS _u GROUP BY patient_id)"]
        return out

    def registrations_sql(self, facts: str) -> str:
        return registrations_sql(facts, self.now)
