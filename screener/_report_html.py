"""HTML rendering of the recruitment and equity report (:func:`render_html`): inline CSS and SVG, no script,
no external asset. Only aggregates reach it (see :mod:`screener.report`)."""

from __future__ import annotations

import html
from typing import TYPE_CHECKING

import polars as pl

if TYPE_CHECKING:
    from screener.report import Report

__all__ = ["COMMERCIAL_GOAL", "COMMUNITY_TARGET", "TIME_TARGET_GOAL", "render_html"]

#: The goals the report draws against (the NIHR's and the hospital's); re-exported by :mod:`screener.report`.
COMMUNITY_TARGET = 10_000
TIME_TARGET_GOAL = 0.80
COMMERCIAL_GOAL = 0.07


_COLOURS = {"population": "#9e9e9e", "matched": "#4f7cac", "enrolled": "#2e7d32"}
_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Arial,sans-serif;margin:2rem auto;max-width:60rem;color:#222}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2.2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.8rem 0}td,th{border:1px solid #ccc;padding:.25rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left}.suppressed{color:#777}.note{color:#555;font-size:.9rem}
.headline{display:flex;gap:1rem;flex-wrap:wrap}.card{border:1px solid #ccc;border-radius:6px;padding:.8rem 1rem;
flex:1;min-width:14rem}.card b{font-size:1.5rem;display:block}.ok{color:#2e7d32}.behind{color:#c62828}
svg text{font-size:12px;font-family:inherit}
"""


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _fmt_count(value: int | None) -> str:
    return '<span class="suppressed" title="1 to 7: suppressed">*</span>' if value is None else f"{value:,}"


def _fmt_pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _hbar_svg(
    title: str,
    categories: list[str],
    series: list[tuple[str, list[float | None], list[str]]],
    *,
    max_value: float | None = None,
    zero_at: float = 0.0,
) -> str:
    """Grouped horizontal bar chart. ``series``: (name, values, labels); a None value draws 'suppressed'.

    ``zero_at`` > 0 leaves room for negative values (diverging chart around 0).
    """
    bar_h, gap, label_w, chart_w, value_w = 14.0, 10.0, 130.0, 420.0, 120.0
    n = max(len(series), 1)
    group_h = n * bar_h + gap
    legend_h = 22 if len(series) > 1 else 0
    height = legend_h + len(categories) * group_h + 10
    values = [abs(v) for _, vs, _ in series for v in vs if v is not None]
    top = max_value if max_value is not None else (max(values) if values else 1.0) or 1.0
    scale = chart_w / (top * (1 + zero_at))
    origin = label_w + chart_w * zero_at / (1 + zero_at)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" role="img" width="{label_w + chart_w + value_w}" '
        f'height="{height}" viewBox="0 0 {label_w + chart_w + value_w} {height}"><title>{_esc(title)}</title>'
    ]
    for i, (name, _, _) in enumerate(series if len(series) > 1 else []):
        x = label_w + i * 130
        colour = _COLOURS.get(name, "#4f7cac")
        parts.append(
            f'<rect x="{x}" y="4" width="12" height="12" fill="{colour}"/><text x="{x + 16}" y="14">{_esc(name)}</text>'
        )
    for ci, category in enumerate(categories):
        y0 = legend_h + ci * group_h
        parts.append(f'<text x="{label_w - 6}" y="{y0 + n * bar_h / 2 + 4}" text-anchor="end">{_esc(category)}</text>')
        for si, (name, vs, labels) in enumerate(series):
            y = y0 + si * bar_h
            value, label = vs[ci], labels[ci]
            colour = _COLOURS.get(name, "#4f7cac")
            if value is None:
                parts.append(
                    f'<text x="{origin + 4}" y="{y + bar_h - 3}" class="suppressed" fill="#777">{_esc(label)}</text>'
                )
                continue
            w = abs(value) * scale
            x = origin - w if value < 0 else origin
            fill = "#c62828" if value < 0 else colour
            parts.append(
                f'<rect x="{x:.1f}" y="{y + 1}" width="{max(w, 0.5):.1f}" height="{bar_h - 2}" '
                f'fill="{fill}"><title>{_esc(name)}: {_esc(label)}</title></rect>'
            )
            tx = max(origin, x + w) + 4
            parts.append(f'<text x="{tx:.1f}" y="{y + bar_h - 3}">{_esc(label)}</text>')
    parts.append(f'<line x1="{origin}" y1="{legend_h}" x2="{origin}" y2="{height - 10}" stroke="#444"/></svg>')
    return "".join(parts)


def _equity_section(title: str, frame: pl.DataFrame, label: str) -> str:
    groups = frame.filter(pl.col("stage") == "matched")["group"].to_list()
    series = []
    pop = frame.filter(pl.col("stage") == "matched")["population"].to_list()
    series.append(("population", pop, [_fmt_pct(v) if v is not None else "no reference" for v in pop]))
    for stage in ("matched", "enrolled"):
        part = frame.filter(pl.col("stage") == stage)
        shares = part["share"].to_list()
        counts = part["count"].to_list()
        series.append(
            (
                stage,
                shares,
                [
                    "suppressed (1–7)" if c is None else f"{s:.1%} ({c:,})" if s is not None else f"({c:,})"
                    for s, c in zip(shares, counts, strict=True)
                ],
            )
        )
    rows = "".join(
        f"<tr><td>{_esc(g)}</td><td>{_fmt_pct(p)}</td>"
        + "".join(
            f"<td>{_fmt_count(c)}</td><td>{_fmt_pct(s)}</td>"
            for stage in ("matched", "enrolled")
            for c, s in [
                frame.filter((pl.col("stage") == stage) & (pl.col("group") == g)).select("count", "share").row(0)
            ]
        )
        + "</tr>"
        for g, p in zip(groups, pop, strict=True)
    )
    return (
        f"<h2>{_esc(title)}</h2>"
        + _hbar_svg(title, [f"{label}{g}" if g != "unknown" else "not recorded" for g in groups], series, max_value=1.0)
        + f"<table><thead><tr><th>{_esc(label.strip() or 'group')}</th><th>population</th><th>matched</th>"
        "<th>share</th><th>enrolled</th><th>share</th></tr></thead><tbody>" + rows + "</tbody></table>"
    )


def render_html(report: Report) -> str:
    """The report as one HTML document: no scripts, no external resources, charts as inline SVG."""
    headline = (
        '<div class="headline">'
        f'<div class="card">Participants from community settings<b>{_fmt_count(report.community_enrolled)}</b>'
        f"of the {COMMUNITY_TARGET:,} target</div>"
        f'<div class="card">Studies on time and target<b>{_fmt_pct(report.on_time_and_target)}</b>'
        f"goal {TIME_TARGET_GOAL:.0%}</div>"
        f'<div class="card">Commercial share of participants<b>{_fmt_pct(report.commercial_share)}</b>'
        f"goal {COMMERCIAL_GOAL:.0%}</div></div>"
    )
    s = report.studies
    study_rows = "".join(
        f"<tr><td>{_esc(r['study_id'])}</td><td>{_esc(r['title'] or '')}</td><td>{_esc(r['sponsor'] or '')}</td>"
        f"<td>{r['enrolled']:,}</td><td>{_fmt_count(r['target']) if r['target'] is not None else ''}</td>"
        f"<td>{_fmt_pct(r['time_elapsed'])}</td>"
        + (
            "<td>–</td>"
            if r["score"] is None
            else f'<td class="{"ok" if r["score"] >= 0 else "behind"}">{r["score"]:+.2f}</td>'
        )
        + "</tr>"
        for r in s.iter_rows(named=True)
    )
    scored = s.filter(pl.col("score").is_not_null())
    tt_chart = (
        _hbar_svg(
            "Recruitment to time and target",
            scored["study_id"].to_list(),
            [("score", scored["score"].to_list(), [f"{v:+.2f}" for v in scored["score"].to_list()])],
            zero_at=1.0 if (scored["score"] < 0).any() else 0.0,
        )
        if scored.height
        else '<p class="note">No study has both a target and a recruitment period yet.</p>'
    )
    funnel = report.funnel
    funnel_chart = _hbar_svg(
        "Recruitment funnel",
        funnel["stage"].to_list(),
        [
            (
                "matched",
                [None if c is None else float(c) for c in funnel["count"].to_list()],
                ["suppressed (1–7)" if c is None else f"{c:,}" for c in funnel["count"].to_list()],
            )
        ],
    )
    setting_rows = "".join(
        f"<tr><td>{_esc(r['setting'])}</td><td>{_fmt_count(r['count'])}</td></tr>"
        for r in report.by_setting.iter_rows(named=True)
    )
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        "<title>screener: recruitment and equity report</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>Recruitment and equity report</h1>"
        f'<p class="note">Generated {report.generated_at:%Y-%m-%d %H:%M} UTC, for {report.today:%d %B %Y}. '
        "Disclosure control: patient counts from 1 to 7 are suppressed (<b>*</b>) and other counts are rounded to "
        "the nearest 5; shares are computed from the rounded counts. Study totals are shown unrounded.</p>"
        + headline
        + "<h2>Recruitment to time and target</h2>"
        '<p class="note">NIHR: (% of target recruited / % of time elapsed) − 1; on track when ≥ 0.</p>'
        + tt_chart
        + "<table><thead><tr><th>study</th><th>title</th><th>sponsor</th><th>enrolled</th><th>target</th>"
        "<th>time elapsed</th><th>time and target</th></tr></thead><tbody>"
        + study_rows
        + "</tbody></table>"
        + "<h2>Recruitment funnel</h2>"
        '<p class="note">Patients who reached each stage or a later one, all studies.</p>'
        + funnel_chart
        + "<h2>Participants by setting</h2><table><thead><tr><th>setting</th><th>enrolled</th></tr></thead>"
        f"<tbody>{setting_rows}</tbody></table>"
        + _equity_section("Deprivation: share by IMD 2019 quintile (1 = most deprived)", report.imd, "quintile ")
        + _equity_section("Ethnic group: share by ONS high-level group", report.ethnicity, "")
        + '<p class="note">Population: West Yorkshire, Census 2021 (ethnic group) and IMD 2019 (quintile, '
        "approximate).</p></body></html>\n"
    )
