"""Leaves of a criterion over the per-patient frame: a feature's value and evidence from its statistics.

Values (unknown = null; "no record" defaults in brackets): ever/within [false]; count, count_days,
episodes, exposure_days [0]; latest/earliest/min/max/mean, change, pct_change [unknown]; days_since,
days_since_first, age_at_first [unknown]; on_now, continuous, after, before, upcoming [false]; latest_code
[unknown]. Evidence names the concept set by its label (or its name with underscores as spaces) and, when a
filter left facts out as unknown, says how many.
"""

from __future__ import annotations

from collections.abc import Callable

import polars as pl

from screener.rules.ir import ATTRIBUTES, NUM, Feat, filter_fields

__all__ = ["NOW_COL", "TRANSFORM_STATS", "attr_leaf", "feature_leaf", "fmt_num", "stat_col", "unit_text"]

#: column of the per-patient frame holding the screening instant (Datetime us UTC)
NOW_COL = "_now"
_V = ("n_unk",)

#: the statistics a transform needs from the aggregated facts
TRANSFORM_STATS: dict[str, tuple[str, ...]] = {
    "ever": ("n", "last_t", "last_code"),
    "within": ("n", "last_t", "last_code"),
    "count": ("n",),
    "latest": ("latest_v", "latest_t", *_V),
    "earliest": ("earliest_v", "earliest_t", *_V),
    "min": ("min_v", "min_t", *_V),
    "max": ("max_v", "max_t", *_V),
    "mean": ("mean_v", "n_num", *_V),
    "days_since": ("n", "last_t", "last_code"),
    "days_since_first": ("n", "first_t", "first_code"),
    "age_at_first": ("n", "first_t", "first_code"),
    "count_days": ("n_days",),
    "episodes": ("n_ep",),
    "change": ("latest_v", "latest_t", "earliest_v", "earliest_t", "n_num", *_V),
    "pct_change": ("latest_v", "latest_t", "earliest_v", "earliest_t", "n_num", *_V),
    "exposure_days": ("n_exp",),
    "on_now": ("on_now", "on_t", "on_code"),
    "continuous": ("cont", "cont_t"),
    "after": ("rel", "rel_t", "rel_code", "rel_u", "rel_ocode"),
    "before": ("rel", "rel_t", "rel_code", "rel_u", "rel_ocode"),
    "latest_code": ("latest_c", "latest_ct"),
    "upcoming": ("n", "first_t", "first_code"),
}


def stat_col(feat: Feat, stat: str) -> str:
    """Name of the per-patient column holding ``stat`` of ``feat``'s group."""
    return f"{feat.key}:{stat}"


def fmt_num(e: pl.Expr) -> pl.Expr:
    """A number as short text: whole numbers without '.0', others to at most 2 decimals."""
    return (
        pl.when(e.round(0) == e)
        .then(e.cast(pl.Int64, strict=False).cast(pl.String))
        .otherwise(e.round(2).cast(pl.String))
    )


def unit_text(unit: str | None) -> str:
    """A unit as people write it: ``{score}`` -> ``score``."""
    return unit.strip().removeprefix("{").removesuffix("}") if unit else ""


def _days(e: pl.Expr) -> pl.Expr:
    return e.dt.total_days().cast(pl.Float64)


def _lit(text: str) -> pl.Expr:
    return pl.lit(text, dtype=pl.String)


def feature_leaf(feat: Feat) -> tuple[pl.Expr, pl.Expr]:
    """``(value, evidence)`` of one feature over the per-patient frame."""
    value, evidence = _feature(feat)
    if feat.filter is not None or (feat.other is not None and feat.other.filter is not None):
        fields = [*(filter_fields(feat.filter) if feat.filter is not None else [])]
        if feat.other is not None and feat.other.filter is not None:
            fields += [f for f in filter_fields(feat.other.filter) if f not in fields]
        funk = pl.col(stat_col(feat, "n_funk")).fill_null(0)
        note = pl.concat_str(
            [_lit(" ("), funk.cast(pl.String), _lit(f" fact(s) with unknown {' or '.join(fields)} left out)")]
        )
        evidence = pl.concat_str([evidence, pl.when(funk > 0).then(note).otherwise(_lit(""))])
    return value, evidence


def _feature(feat: Feat) -> tuple[pl.Expr, pl.Expr]:
    c = feat.concept
    label = c.display
    w = feat.window
    fmt = "%Y-%m-%d %H:%M" if w is not None and w.fine else "%Y-%m-%d"
    when = f" in the last {w.describe()}" if w else ""

    def col(stat: str) -> pl.Expr:
        return pl.col(stat_col(feat, stat))

    def on(stat: str) -> pl.Expr:
        return col(stat).dt.strftime(fmt)

    t = feat.transform
    unit = f" {unit_text(c.unit)}" if c.unit else ""
    now = pl.col(NOW_COL)
    if t in ("ever", "within", "days_since"):
        n = col("n").fill_null(0)
        seen = pl.concat_str([_lit(f"{label} "), col("last_code").fill_null("?"), _lit(" on "), on("last_t")])
        if t == "days_since":
            # "now" is the ``_now`` column of the per-patient frame, so compiled expressions can be cached.
            value = _days(now - col("last_t"))
            seen = pl.concat_str(
                [
                    _lit(f"last {label} "),
                    value.cast(pl.Int64).cast(pl.String),
                    _lit(" days ago ("),
                    col("last_code").fill_null("?"),
                    _lit(" on "),
                    on("last_t"),
                    _lit(")"),
                ]
            )
        else:
            value = n > 0
        return value, pl.when(n > 0).then(seen).otherwise(_lit(f"no record of {label}{when}"))
    if t in ("days_since_first", "age_at_first"):
        n = col("n").fill_null(0)
        first = pl.concat_str([col("first_code").fill_null("?"), _lit(" on "), on("first_t")])
        if t == "days_since_first":
            value = _days(now - col("first_t"))
            seen = pl.concat_str(
                [_lit(f"first {label} "), value.cast(pl.Int64).cast(pl.String), _lit(" days ago ("), first, _lit(")")]
            )
        else:
            b, d = pl.col("_birth"), col("first_t").dt.date()
            later = (b.dt.month() > d.dt.month()) | ((b.dt.month() == d.dt.month()) & (b.dt.day() > d.dt.day()))
            value = (d.dt.year().cast(pl.Int32) - b.dt.year().cast(pl.Int32) - later.cast(pl.Int32)).cast(pl.Float64)
            seen = pl.concat_str(
                [_lit(f"first {label} at age "), value.cast(pl.Int64).cast(pl.String), _lit(" ("), first, _lit(")")]
            )
            seen = (
                pl.when(b.is_null())
                .then(pl.concat_str([_lit(f"first {label} "), first, _lit(", birth date unknown")]))
                .otherwise(seen)
            )
        return value, pl.when(n > 0).then(seen).otherwise(_lit(f"no record of {label}"))
    if t in ("count", "count_days", "episodes", "exposure_days"):
        stat = {"count": "n", "count_days": "n_days", "episodes": "n_ep", "exposure_days": "n_exp"}[t]
        n = col(stat).fill_null(0)
        words = {
            "count": f" {label} record(s){when}",
            "count_days": f" day(s) with {label}{when}",
            "episodes": f" episode(s) of {label}{when} (a new one after {feat.gap.describe() if feat.gap else ''})",
            "exposure_days": f" day(s) on {label}{when}",
        }[t]
        return n.cast(pl.Float64), pl.concat_str([n.cast(pl.String), _lit(words)])
    if t == "on_now":
        value = col("on_now").fill_null(False)
        seen = pl.concat_str([_lit(f"{label} "), col("on_code").fill_null("?"), _lit(" ongoing since "), on("on_t")])
        return value, pl.when(value).then(seen).otherwise(_lit(f"no ongoing {label}"))
    if t == "continuous":
        value = col("cont").fill_null(False)
        assert w is not None and feat.gap is not None
        seen = pl.concat_str([_lit(f"{label} continuously since "), on("cont_t")])
        return value, pl.when(value).then(seen).otherwise(
            _lit(f"{label} not continuous over the last {w.describe()} (gaps up to {feat.gap.describe()} allowed)")
        )
    if t in ("after", "before"):
        assert feat.other is not None and w is not None
        value = col("rel").fill_null(False)
        other = feat.other.concept.display
        seen = pl.concat_str(
            [
                _lit(f"{label} "),
                col("rel_code").fill_null("?"),
                _lit(" on "),
                on("rel_t"),
                _lit(f" {t} {other} "),
                col("rel_ocode").fill_null("?"),
                _lit(" on "),
                on("rel_u"),
            ]
        )
        return value, pl.when(value).then(seen).otherwise(_lit(f"no {label} within {w.describe()} {t} {other}"))
    if t == "upcoming":
        assert w is not None
        n = col("n").fill_null(0)
        seen = pl.concat_str(
            [_lit(f"{label} "), col("first_code").fill_null("?"), _lit(" planned for "), on("first_t")]
        )
        return n > 0, pl.when(n > 0).then(seen).otherwise(_lit(f"no {label} planned in the next {w.describe()}"))
    if t == "latest_code":
        value = col("latest_c")
        seen = pl.concat_str([_lit(f"latest {label} "), value, _lit(" on "), on("latest_ct")])
        return value, pl.when(value.is_not_null()).then(seen).otherwise(_lit(f"no record of {label}{when}"))
    return _numeric(feat, col, on, label, unit, when)


def _numeric(
    feat: Feat, col: Callable[[str], pl.Expr], on: Callable[[str], pl.Expr], label: str, unit: str, when: str
) -> tuple[pl.Expr, pl.Expr]:
    t = feat.transform
    unk = col("n_unk").fill_null(0)
    suffix = (
        pl.when(unk > 0)
        .then(pl.concat_str([_lit(" ("), unk.cast(pl.String), _lit(" value(s) in unknown units left out)")]))
        .otherwise(_lit(""))
    )
    if t == "mean":
        value = col("mean_v")
        seen = pl.concat_str(
            [
                _lit(f"mean {label} "),
                fmt_num(value),
                _lit(f"{unit} of "),
                col("n_num").cast(pl.String),
                _lit(f" value(s){when}"),
            ]
        )
        none = f"no {label} value{when}"
    elif t in ("change", "pct_change"):
        first, last = col("earliest_v"), col("latest_v")
        enough = col("n_num").fill_null(0) >= 2
        diff = last - first
        if t == "change":
            value = pl.when(enough).then(diff)
            shown = pl.concat_str([fmt_num(value), _lit(unit)])
        else:
            value = pl.when(enough & (first != 0)).then(100 * diff / first)
            shown = pl.concat_str([fmt_num(value), _lit("%")])
        seen = pl.concat_str(
            [
                _lit(f"{label} changed by "),
                shown,
                _lit(" (from "),
                fmt_num(first),
                _lit(" on "),
                on("earliest_t"),
                _lit(" to "),
                fmt_num(last),
                _lit(" on "),
                on("latest_t"),
                _lit(")"),
            ]
        )
        none = (
            f"fewer than 2 {label} values{when}"
            if t == "change"
            else f"fewer than 2 {label} values{when}, or the first is 0"
        )
    else:
        value = col(f"{t}_v")
        seen = pl.concat_str([_lit(f"{t} {label} "), fmt_num(value), _lit(f"{unit} on "), on(f"{t}_t")])
        none = f"no {label} value{when}"
    evidence = pl.concat_str([pl.when(value.is_not_null()).then(seen).otherwise(_lit(none)), suffix])
    return value, evidence


def attr_leaf(name: str) -> tuple[pl.Expr, pl.Expr]:
    """``(value, evidence)`` of a person attribute."""
    value = pl.col(f"_attr_{name}")
    shown = fmt_num(value) if ATTRIBUTES[name][0] == NUM else value
    words = name.replace("_", " ")
    evidence = (
        pl.when(value.is_null()).then(_lit(f"{words} unknown")).otherwise(pl.concat_str([_lit(f"{words} "), shown]))
    )
    return value, evidence
