"""Features that need the order of a patient's facts, lowered with SQL window functions (gaps and islands), as
:mod:`screener.rules._aggregate` computes them with sorted group-bys and ``join_asof``.

Each kind collects one branch per feature (``_fi``, its index) over ``_rows`` and writes one CTE giving
``(patient_id, _fi, _val)``, with windows partitioned by ``(patient_id, _fi)`` and ordered by ``_ord`` (the
patient's (occurred_at, event_id) order):

- ``episodes(gap)``: 1 + the facts whose previous fact is at least ``gap`` before (``LAG``).
- ``exposure_days``: the days covered by the union of the periods' day ranges (each row adds the days after the
  furthest end seen so far: a running ``max`` over the preceding rows).
- ``continuous(w, gap)``: periods merged when the next starts at most ``gap`` after the furthest end so far (a
  running sum of "new block" flags numbers the islands); 1 when one block covers ``[now - w, now]``.
- ``after``/``before(other, w)``: both sides' facts in one ordered partition; each fact of this side looks at
  the nearest other fact at or before it (after) or at or after it (before), then checks the distance.
"""

from __future__ import annotations

from datetime import datetime

from screener.rules._sql_facts import day, shift, ts
from screener.rules.windows import Window

__all__ = ["WindowSQL"]

_PART = "PARTITION BY patient_id, _fi"


class WindowSQL:
    """Collects the window-function features of a set of studies and writes their CTEs."""

    def __init__(self, now: datetime) -> None:
        self.now = now
        self.episodes: list[str] = []
        self.exposure: list[str] = []
        self.continuous: list[str] = []
        self.relations: list[str] = []

    def add_episodes(self, i: int, sel: str, gap: Window) -> None:
        self.episodes.append(
            f"SELECT patient_id, {i} AS _fi, _ord, occurred_at AS _t, {shift('occurred_at', gap, -1)} AS _tg "
            f"FROM _rows WHERE {sel}"
        )

    def add_exposure(self, i: int, sel: str, start: datetime | None) -> None:
        first = f"greatest(occurred_at, {ts(start)})" if start is not None else "occurred_at"
        self.exposure.append(
            f"SELECT patient_id, {i} AS _fi, _ord, {day(first)} AS _sd, {day(f'least(_pend, {ts(self.now)})')} AS _ed "
            f"FROM _rows WHERE {sel}"
        )

    def add_continuous(self, i: int, sel: str, w: Window, gap: Window) -> None:
        self.continuous.append(
            f"SELECT patient_id, {i} AS _fi, _ord, occurred_at AS _t, {shift('occurred_at', gap, -1)} AS _tg, "
            f"least(_pend, {ts(self.now)}) AS _pe, {ts(w.start(self.now))} AS _cov FROM _rows WHERE {sel}"
        )

    def add_relation(self, i: int, this: str, other: str, after: bool, w: Window) -> None:
        # at equal times the other side sorts first for 'after' (u <= t) and last for 'before' (u >= t)
        so_this, so_other = (1, 0) if after else (0, 1)
        lim = shift("occurred_at", w, -1 if after else 1)
        flag = "TRUE" if after else "FALSE"
        self.relations.append(
            f"SELECT patient_id, {i} AS _fi, occurred_at AS _t, 0 AS _side, {so_this} AS _so, {lim} AS _lim, "
            f"{flag} AS _after FROM _rows WHERE {this}"
        )
        self.relations.append(
            f"SELECT patient_id, {i} AS _fi, occurred_at AS _t, 1 AS _side, {so_other} AS _so, "
            f"CAST(NULL AS TIMESTAMPTZ) AS _lim, {flag} AS _after FROM _rows WHERE {other}"
        )

    def ctes(self) -> tuple[list[str], list[str]]:
        """``(ctes, names)``: the CTEs and the names of those giving ``(patient_id, _fi, _val)``."""
        out: list[str] = []
        names: list[str] = []
        if self.episodes:
            out.append(
                "_ep AS (SELECT patient_id, _fi, CAST(1 + sum(CASE WHEN _prev <= _tg THEN 1 ELSE 0 END) AS DOUBLE) "
                f"AS _val FROM (SELECT *, lag(_t) OVER ({_PART} ORDER BY _ord) AS _prev FROM "
                f"({' UNION ALL '.join(self.episodes)}) AS _b) AS _l GROUP BY patient_id, _fi)"
            )
            names.append("_ep")
        if self.exposure:
            fresh = "greatest(_ed - greatest(_sd, coalesce(_pm + 1, _sd)) + 1, 0)"
            out.append(
                f"_ex AS (SELECT patient_id, _fi, CAST(sum({fresh}) AS DOUBLE) AS _val FROM (SELECT *, max(_ed) OVER "
                f"({_PART} ORDER BY _ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS _pm FROM "
                f"({' UNION ALL '.join(self.exposure)}) AS _b) AS _l GROUP BY patient_id, _fi)"
            )
            names.append("_ex")
        if self.continuous:
            prev = f"max(_pe) OVER ({_PART} ORDER BY _ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
            blk = (
                f"sum(CASE WHEN _pp IS NULL OR _tg > _pp THEN 1 ELSE 0 END) OVER ({_PART} ORDER BY _ord "
                "ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
            )
            out += [
                f"_co1 AS (SELECT *, {prev} AS _pp FROM ({' UNION ALL '.join(self.continuous)}) AS _b)",
                f"_co2 AS (SELECT patient_id, _fi, _t, _pe, _cov, {blk} AS _blk FROM _co1)",
                "_co AS (SELECT patient_id, _fi, max(CASE WHEN _bs <= _cov AND _be >= "
                f"{ts(self.now)} THEN 1.0 ELSE 0.0 END) AS _val FROM (SELECT patient_id, _fi, min(_t) AS _bs, "
                "max(_pe) AS _be, max(_cov) AS _cov FROM _co2 GROUP BY patient_id, _fi, _blk) AS _k "
                "GROUP BY patient_id, _fi)",
            ]
            names.append("_co")
        if self.relations:
            other = "CASE WHEN _side = 1 THEN _t END"
            last = f"max({other}) OVER ({_PART} ORDER BY _t, _so ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)"
            nxt = f"min({other}) OVER ({_PART} ORDER BY _t, _so ROWS BETWEEN CURRENT ROW AND UNBOUNDED FOLLOWING)"
            hit = "_side = 0 AND CASE WHEN _after THEN _lb >= _lim ELSE _nb <= _lim END"
            out.append(
                f"_re AS (SELECT patient_id, _fi, max(CASE WHEN {hit} THEN 1.0 ELSE 0.0 END) AS _val FROM "
                f"(SELECT *, {last} AS _lb, {nxt} AS _nb FROM ({' UNION ALL '.join(self.relations)}) AS _b) AS _l "
                "GROUP BY patient_id, _fi)"
            )
            names.append("_re")
        return out, names
