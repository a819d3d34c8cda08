"""The recruitment and equity report (``screener report``): one self-contained HTML file with inline SVG charts.

Pure core, thin shell: :func:`load_report_data` reads the worklist store into two frames; :func:`build_report`
aggregates them (Polars, no loop over patients) into a :class:`Report`; :func:`render_html` draws it. Only
aggregates ever reach the HTML: no patient id, no match token.

Disclosure control (NHS England / NHS Digital convention for published patient counts): a count from 1 to 7
is suppressed (shown as ``*``) and every other count is rounded to the nearest 5, so a suppressed cell cannot be
recovered by subtracting the others from a total. Shares are computed from the disclosed counts. Applied to
every patient count broken down by funnel stage, setting, deprivation or ethnic group. Study-level totals
(enrolled against target, and the NIHR time-and-target score) are shown as they are: they are the figures a
study reports to its sponsor and the NIHR anyway.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from screener.metrics import WEST_YORKSHIRE_ETHNICITY, WEST_YORKSHIRE_IMD_QUINTILE, Metrics

__all__ = [
    "FUNNEL_STAGES",
    "SUPPRESSED_MAX",
    "Report",
    "ReportData",
    "build_report",
    "disclose",
    "load_report_data",
    "publish_store_metrics",
    "render_html",
    "write_report",
]

#: Counts from 1 to this value are suppressed.
SUPPRESSED_MAX = 7
#: Cumulative funnel: a patient at a later stage has passed every earlier one.
FUNNEL_STAGES = ("matched", "reviewed", "approached", "consented", "enrolled")
#: Store stage -> furthest funnel stage reached (index into FUNNEL_STAGES). Dismissals count where they happen.
_STAGE_RANK = {
    "new": 0,
    "reviewed": 1,
    "not_eligible": 1,
    "approached": 2,
    "declined": 2,
    "consented": 3,
    "enrolled": 4,
}
COMMUNITY_TARGET = 10_000
TIME_TARGET_GOAL = 0.80
COMMERCIAL_GOAL = 0.07

STUDY_COLUMNS = {
    "study_id": pl.String,
    "title": pl.String,
    "sponsor": pl.String,
    "target": pl.Int64,
    "opens": pl.Date,
    "closes": pl.Date,
}
MATCH_COLUMNS = {
    "study_id": pl.String,
    "setting": pl.String,
    "stage": pl.String,
    "imd_decile": pl.Int64,
    "ethnic_group": pl.String,
}


def disclose(count: pl.Expr) -> pl.Expr:
    """Disclosure-controlled count: 0 stays 0, 1-7 becomes null (suppressed), the rest round to the nearest 5."""
    return (
        pl.when(count == 0)
        .then(0)
        .when(count <= SUPPRESSED_MAX)
        .then(None)
        .otherwise((count + 2) // 5 * 5)
        .cast(pl.Int64)
    )


@dataclass(frozen=True)
class ReportData:
    """What the report needs from the store: study metadata and one row per match (no patient ids).

    ``studies``: STUDY_COLUMNS. ``matches``: MATCH_COLUMNS, ``stage`` as stored (new, reviewed, not_eligible,
    approached, declined, consented, enrolled), ``ethnic_group`` an ONS high-level group or null.
    """

    studies: pl.DataFrame
    matches: pl.DataFrame

    @classmethod
    def of(
        cls, studies: Sequence[dict[str, Any]] | pl.DataFrame, matches: Sequence[dict[str, Any]] | pl.DataFrame
    ) -> ReportData:
        """Build from rows or frames, coercing to the documented schema (missing optional columns are null)."""
        return cls(_frame(studies, STUDY_COLUMNS), _frame(matches, MATCH_COLUMNS))


def _frame(rows: Sequence[dict[str, Any]] | pl.DataFrame, schema: dict[str, type[pl.DataType]]) -> pl.DataFrame:
    df = rows if isinstance(rows, pl.DataFrame) else pl.DataFrame(list(rows), infer_schema_length=None)
    return df.select([(pl.col(c) if c in df.columns else pl.lit(None)).cast(t).alias(c) for c, t in schema.items()])


@dataclass(frozen=True)
class Report:
    """Aggregates only. Every frame's ``count`` column is already disclosure-controlled (null = suppressed)."""

    generated_at: datetime
    today: date
    studies: pl.DataFrame  # study_id, title, sponsor, target, enrolled, target_recruited, time_elapsed, score
    funnel: pl.DataFrame  # stage, count
    by_setting: pl.DataFrame  # setting, count (enrolled)
    imd: pl.DataFrame  # stage, group, count, share, population
    ethnicity: pl.DataFrame  # stage, group, count, share, population
    community_enrolled: int | None
    on_time_and_target: float | None
    commercial_share: float | None


def build_report(data: ReportData, today: date, generated_at: datetime | None = None) -> Report:
    """Aggregate the store's rows into the report's tables, applying disclosure control to patient counts."""
    m = data.matches.with_columns(
        rank=pl.col("stage").replace_strict(_STAGE_RANK, default=0, return_dtype=pl.Int64),
        imd_quintile=((pl.col("imd_decile") + 1) // 2).cast(pl.String).fill_null("unknown"),
        group=pl.col("ethnic_group").str.to_lowercase().fill_null("unknown"),
    )
    enrolled = m.filter(pl.col("stage") == "enrolled")

    funnel = (
        pl.DataFrame({"stage": list(FUNNEL_STAGES), "rank": list(range(len(FUNNEL_STAGES)))})
        .join(m.group_by("rank").len(), on="rank", how="left")
        .sort("rank", descending=True)
        .with_columns(
            count=pl.col("len").fill_null(0).cum_sum()  # cumulative: reached this stage or a later one
        )
        .sort("rank")
        .select("stage", disclose(pl.col("count")).alias("count"))
    )

    by_setting = (
        enrolled.group_by(pl.col("setting").fill_null("unknown"))
        .len()
        .select("setting", disclose(pl.col("len")).alias("count"))
        .sort("setting")
    )

    per_study = enrolled.group_by("study_id").len("enrolled")
    studies = data.studies.join(per_study, on="study_id", how="left").with_columns(
        pl.col("enrolled").fill_null(0).cast(pl.Int64)
    )
    opens = pl.col("opens").cast(pl.Datetime("us"))
    period = (pl.col("closes").cast(pl.Datetime("us")) - opens).dt.total_seconds()
    elapsed = (pl.lit(datetime.combine(today, datetime.min.time())) - opens).dt.total_seconds()
    studies = (
        studies.with_columns(
            target_recruited=pl.when(pl.col("target") > 0).then(pl.col("enrolled") / pl.col("target")),
            time_elapsed=pl.when((period > 0) & (elapsed > 0)).then(pl.min_horizontal(elapsed / period, 1.0)),
        )
        .with_columns(
            score=pl.col("target_recruited") / pl.col("time_elapsed") - 1  # NIHR recruitment to time and target
        )
        .sort("study_id")
    )

    scored = studies.filter(pl.col("score").is_not_null())
    on_track = scored.height and scored.filter(pl.col("score") >= 0).height / scored.height
    total_enrolled = enrolled.height
    commercial = (
        enrolled.join(data.studies.select("study_id", "sponsor"), on="study_id", how="left")
        .filter(pl.col("sponsor") == "commercial")
        .height
    )
    community = by_setting.filter(pl.col("setting") == "community")["count"]

    return Report(
        generated_at=generated_at or datetime.now(UTC),
        today=today,
        studies=studies,
        funnel=funnel,
        by_setting=by_setting,
        imd=_equity(m, "imd_quintile", WEST_YORKSHIRE_IMD_QUINTILE),
        ethnicity=_equity(m, "group", WEST_YORKSHIRE_ETHNICITY),
        community_enrolled=(community[0] if community.len() else 0),
        on_time_and_target=(float(on_track) if scored.height else None),
        commercial_share=(commercial / total_enrolled if total_enrolled else None),
    )


def _equity(m: pl.DataFrame, column: str, population: dict[str, float]) -> pl.DataFrame:
    """Disclosed counts and shares by group for the matched and enrolled stages, beside the population share."""
    groups = [*population, "unknown"]
    frames = []
    for stage, rows in (("matched", m), ("enrolled", m.filter(pl.col("stage") == "enrolled"))):
        counts = rows.group_by(pl.col(column).alias("group")).len()
        total = int(counts["len"].sum()) if counts.height else 0
        frame = (
            pl.DataFrame({"group": groups})
            .join(counts, on="group", how="left")
            .with_columns(
                stage=pl.lit(stage),
                count=disclose(pl.col("len").fill_null(0)),
                total=disclose(pl.lit(total, dtype=pl.Int64)),
            )
        )
        frames.append(
            frame.with_columns(
                share=pl.when(pl.col("total") > 0).then(pl.col("count") / pl.col("total")),
                population=pl.col("group").replace_strict(population, default=None, return_dtype=pl.Float64),
            ).select("stage", "group", "count", "share", "population")
        )
    return pl.concat(frames)


# --- rendering ------------------------------------------------------------------------------------------------

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


def load_report_data(database: str | Any) -> ReportData:
    """Read study metadata and the aggregate columns of every match from the worklist store.

    ``database`` is a SQLAlchemy URL or an existing ``Engine`` (the web app passes ``store.engine``). Reads only
    ``studies`` (active ones) and the non-identifying columns of ``matches``; the patient id is never selected.
    :raises ConfigError: when the database cannot be opened or has no worklist schema.
    """
    import sqlalchemy as sa

    from screener.alerts import schema
    from screener.errors import ConfigError

    own = isinstance(database, str)
    try:
        engine: sa.engine.Engine = sa.create_engine(database) if isinstance(database, str) else database
        with engine.connect() as conn:
            st = schema.studies.c
            studies = [
                dict(r._mapping)
                for r in conn.execute(
                    sa.select(st.id.label("study_id"), st.title, st.sponsor, st.target, st.opens, st.closes).where(
                        st.active.is_(True)
                    )
                )
            ]
            mt = schema.matches.c
            matches = [
                dict(r._mapping)
                for r in conn.execute(sa.select(mt.study_id, mt.setting, mt.stage, mt.imd_decile, mt.ethnic_group))
            ]
        if own:
            engine.dispose()
    except sa.exc.SQLAlchemyError as exc:
        raise ConfigError(f"cannot read the worklist store for the report: {exc}", setting="database_url") from exc
    return ReportData.of(studies, matches)


def funnel_by_group(data: ReportData) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Raw (undisclosed) patients per cumulative funnel stage, by IMD quintile and by ethnic group.

    Frames: (stage, imd_quintile, patients) and (stage, ethnic_group, patients); groups missing from a stage are
    absent. For Prometheus, where the ``...:disclosed`` recording rules apply disclosure control.
    """
    m = data.matches.with_columns(
        rank=pl.col("stage").replace_strict(_STAGE_RANK, default=0, return_dtype=pl.Int64),
        imd_quintile=((pl.col("imd_decile") + 1) // 2).cast(pl.String).fill_null("unknown"),
        ethnic_group=pl.col("ethnic_group").str.to_lowercase().fill_null("unknown"),
    ).drop("stage")
    stages = pl.DataFrame({"stage": list(FUNNEL_STAGES), "stage_rank": list(range(len(FUNNEL_STAGES)))})
    reached = m.join(stages, how="cross").filter(pl.col("rank") >= pl.col("stage_rank"))
    return (
        reached.group_by("stage", "imd_quintile").len("patients"),
        reached.group_by("stage", "ethnic_group").len("patients"),
    )


def publish_store_metrics(metrics: Metrics, data: ReportData, *, min_count: int = 1) -> None:
    """Set the store-derived gauges: enrolled per study/sponsor/setting and the funnel by IMD quintile and
    ethnic group. Called by the process that owns the store (the web app) on a timer or before a scrape.
    Demographic cells (IMD quintile, ethnic group) with fewer than ``min_count`` patients get no series at all:
    the web app passes 8, because its /metrics needs no login (small counts are disclosive).

    Label sets that vanished from the store are removed. Values are raw counts (no patient-level labels);
    the Grafana dashboards read them only through the disclosure-controlled recording rules.
    """
    enrolled = (
        data.matches.filter(pl.col("stage") == "enrolled")
        .join(data.studies.select("study_id", "sponsor"), on="study_id", how="left")
        .group_by("study_id", pl.col("sponsor").fill_null("unknown"), pl.col("setting").fill_null("unknown"))
        .len("patients")
    )
    # a study with nobody enrolled has no series; the recording rules count it as 0 against its target
    imd, ethnic = (f.filter(pl.col("patients") >= min_count) for f in funnel_by_group(data))
    for gauge, frame, cols in (
        (metrics.study_enrolled, enrolled, ("study_id", "sponsor", "setting")),
        (metrics.funnel_by_imd, imd, ("stage", "imd_quintile")),
        (metrics.funnel_by_ethnicity, ethnic, ("stage", "ethnic_group")),
    ):
        wanted = {tuple(str(v) for v in row[:-1]): row[-1] for row in frame.select(*cols, "patients").iter_rows()}
        for labels in _label_sets(gauge) - set(wanted):
            gauge.remove(*labels)
        for labels, value in wanted.items():
            gauge.labels(*labels).set(value)


def _label_sets(gauge: Any) -> set[tuple[str, ...]]:
    return {tuple(s.labels[name] for name in gauge._labelnames) for family in gauge.collect() for s in family.samples}


def write_report(database_url: str, out: Path, today: date | None = None) -> Report:
    """Read the store, build the report and write it to ``out`` (parent folders created)."""
    now = datetime.now(UTC)
    report = build_report(load_report_data(database_url), today or now.date(), generated_at=now)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report), encoding="utf-8")
    return report
