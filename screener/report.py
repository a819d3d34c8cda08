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

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from screener._report_html import COMMERCIAL_GOAL, COMMUNITY_TARGET, TIME_TARGET_GOAL, render_html
from screener.metrics import WEST_YORKSHIRE_ETHNICITY, WEST_YORKSHIRE_IMD_QUINTILE, Metrics
from screener.vocab import FUNNEL_STAGES, Stage

if TYPE_CHECKING:
    from prometheus_client import Gauge
    from sqlalchemy.engine import Engine

__all__ = [
    "COMMERCIAL_GOAL",
    "COMMUNITY_TARGET",
    "FUNNEL_STAGES",
    "SUPPRESSED_MAX",
    "TIME_TARGET_GOAL",
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
#: Store stage -> furthest funnel stage reached (index into FUNNEL_STAGES, which is cumulative: a patient at a later
#: stage has passed every earlier one). Dismissals count where they happen. Every store stage has a rank.
_STAGE_RANK: dict[Stage, int] = {
    "new": 0,
    "reviewed": 1,
    "not_eligible": 1,
    "approached": 2,
    "declined": 2,
    "consented": 3,
    "enrolled": 4,
}

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


def load_report_data(database: str | Engine) -> ReportData:
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


def _label_sets(gauge: Gauge) -> set[tuple[str, ...]]:
    return {tuple(s.labels[name] for name in gauge._labelnames) for family in gauge.collect() for s in family.samples}


def write_report(database_url: str, out: Path, today: date | None = None) -> Report:
    """Read the store, build the report and write it to ``out`` (parent folders created)."""
    now = datetime.now(UTC)
    report = build_report(load_report_data(database_url), today or now.date(), generated_at=now)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(report), encoding="utf-8")
    return report
