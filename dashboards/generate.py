"""Generate the Grafana dashboards in ``dashboards/grafana/dashboards/`` (run: ``python dashboards/generate.py``).

The JSON files are committed (Grafana provisions them as they are); this script is their source, so panels stay
consistent (one datasource uid, stable dashboard uids, grid layout). ``tests/unit/dashboards`` fails when the
committed JSON differs from what this script generates.

Grafana macros used in expressions: ``$__rate_interval`` and ``$__range`` only (tests substitute them).
Equity panels read the ``...:disclosed`` recording rules, which apply NHS disclosure control (counts 1-7
suppressed, others rounded to the nearest 5) before anything reaches a browser.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}


class _Layout:
    """Places panels left to right on Grafana's 24-column grid."""

    def __init__(self) -> None:
        self.x = 0
        self.y = 0
        self.row_h = 0
        self.next_id = 1

    def place(self, w: int, h: int) -> dict[str, int]:
        if self.x + w > 24:
            self.x, self.y, self.row_h = 0, self.y + self.row_h, 0
        pos = {"x": self.x, "y": self.y, "w": w, "h": h}
        self.x += w
        self.row_h = max(self.row_h, h)
        return pos

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id - 1


def _targets(exprs: list[tuple[str, str]], instant: bool = False) -> list[dict[str, Any]]:
    refs = "ABCDEFGH"
    out = []
    for i, (expr, legend) in enumerate(exprs):
        t: dict[str, Any] = {"refId": refs[i], "datasource": DATASOURCE, "expr": expr, "legendFormat": legend}
        if instant:
            t.update({"instant": True, "range": False, "format": "table" if legend == "__table" else "time_series"})
            if legend == "__table":
                t["legendFormat"] = ""
        out.append(t)
    return out


def panel(
    layout: _Layout,
    kind: str,
    title: str,
    exprs: list[tuple[str, str]],
    *,
    w: int = 12,
    h: int = 8,
    unit: str = "short",
    description: str = "",
    instant: bool = False,
    thresholds: list[tuple[float | None, str]] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    steps = [{"color": c, "value": v} for v, c in (thresholds or [(None, "green")])]
    p: dict[str, Any] = {
        "id": layout.new_id(),
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "gridPos": layout.place(w, h),
        "targets": _targets(exprs, instant=instant),
        "fieldConfig": {
            "defaults": {"unit": unit, "thresholds": {"mode": "absolute", "steps": steps}},
            "overrides": [],
        },
        "options": {},
    }
    if kind == "timeseries":
        p["options"] = {
            "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["lastNotNull"]},
            "tooltip": {"mode": "multi"},
        }
    elif kind in ("stat", "gauge"):
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "none",
            "textMode": "auto",
        }
    elif kind == "bargauge":
        p["options"] = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "orientation": "horizontal",
            "displayMode": "basic",
            "showUnfilled": True,
        }
    if extra:
        for key, value in extra.items():
            p[key] = value
    return p


def dashboard(uid: str, title: str, description: str, panels: list[dict[str, Any]], tags: list[str]) -> dict:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["screener", *tags],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "editable": False,
        "graphTooltip": 1,
        "refresh": "30s",
        "time": {"from": "now-6h", "to": "now"},
        "templating": {"list": []},
        "annotations": {"list": []},
        "links": [],
        "panels": panels,
    }


def operations() -> dict[str, Any]:
    L = _Layout()
    ri = "$__rate_interval"
    panels = [
        panel(
            L,
            "stat",
            "Events consumed per second",
            [("sum(rate(screener_events_consumed_total[" + ri + "]))", "events/s")],
            w=6,
            h=4,
            unit="ops",
        ),
        panel(
            L,
            "stat",
            "Consumer lag (records)",
            [("sum(screener_consumer_lag_records)", "lag")],
            w=6,
            h=4,
            thresholds=[(None, "green"), (1000, "orange"), (10000, "red")],
        ),
        panel(
            L,
            "stat",
            "p95 event to match",
            [
                (
                    "histogram_quantile(0.95, sum by (le) (rate(screener_event_to_match_latency_seconds_bucket["
                    + ri
                    + "])))",
                    "p95",
                )
            ],
            w=6,
            h=4,
            unit="s",
            thresholds=[(None, "green"), (30, "orange"), (60, "red")],
        ),
        panel(L, "stat", "Scrape targets up", [('sum(up{job=~"screener-.*"})', "up")], w=6, h=4),
        panel(
            L,
            "timeseries",
            "Events consumed by source and kind",
            [("sum by (source, kind) (rate(screener_events_consumed_total[" + ri + "]))", "{{source}} {{kind}}")],
            unit="ops",
            description="Events read from ehr.events per second.",
        ),
        panel(
            L,
            "timeseries",
            "Consumer lag by partition",
            [("sum by (topic, partition) (screener_consumer_lag_records)", "{{topic}}/{{partition}}")],
            description="Records between the engine's committed offset and the log end, per partition.",
        ),
        panel(
            L,
            "timeseries",
            "Event to match latency",
            [
                (
                    "histogram_quantile(0.5, sum by (le) (rate(screener_event_to_match_latency_seconds_bucket["
                    + ri
                    + "])))",
                    "p50",
                ),
                (
                    "histogram_quantile(0.95, sum by (le) (rate(screener_event_to_match_latency_seconds_bucket["
                    + ri
                    + "])))",
                    "p95",
                ),
                (
                    "histogram_quantile(0.99, sum by (le) (rate(screener_event_to_match_latency_seconds_bucket["
                    + ri
                    + "])))",
                    "p99",
                ),
            ],
            unit="s",
            description="From an event's broker timestamp to its match being stored.",
        ),
        panel(
            L,
            "timeseries",
            "Micro-batch duration and size",
            [
                (
                    "histogram_quantile(0.95, sum by (le) (rate(screener_batch_duration_seconds_bucket[" + ri + "])))",
                    "p95 duration",
                ),
                (
                    "histogram_quantile(0.5, sum by (le) (rate(screener_batch_duration_seconds_bucket[" + ri + "])))",
                    "p50 duration",
                ),
            ],
            unit="s",
        ),
        panel(
            L,
            "timeseries",
            "Dead letters by stage and reason",
            [("sum by (stage, reason) (rate(screener_dead_letters_total[" + ri + "]))", "{{stage}}: {{reason}}")],
            unit="ops",
            description="Inputs sent to ehr.events.dlq.",
        ),
        panel(
            L,
            "timeseries",
            "Rule load errors (last hour) and rules loaded",
            [
                ("sum by (file) (increase(screener_rule_load_errors_total[1h]))", "errors {{file}}"),
                ("max(screener_rules_loaded)", "rule files loaded"),
                ("max(screener_studies_open)", "studies open"),
            ],
        ),
        panel(
            L,
            "timeseries",
            "Outbound deliveries",
            [
                ("sum by (channel) (rate(screener_delivery_attempts_total[" + ri + "]))", "attempts {{channel}}"),
                ("sum by (channel) (rate(screener_delivery_failures_total[" + ri + "]))", "failures {{channel}}"),
            ],
            unit="ops",
        ),
        panel(
            L,
            "timeseries",
            "Outbox and state",
            [
                ("sum by (channel) (screener_outbox_pending_messages)", "outbox {{channel}}"),
                ("sum(screener_patients_in_state)", "patients in state"),
                ("sum(screener_facts_in_state)", "facts in state"),
            ],
        ),
        panel(
            L,
            "timeseries",
            "Screens by trigger",
            [("sum by (trigger) (rate(screener_screens_total[" + ri + "]))", "{{trigger}}")],
            unit="ops",
            description="Patient x study evaluations per second: events, scheduled re-screens, rule changes.",
        ),
        panel(
            L,
            "timeseries",
            "Dead-letter share (recording rule)",
            [("job:screener_dead_letters:ratio_rate5m", "{{job}}")],
            unit="percentunit",
            description="Alert ScreenerDeadLettersHigh fires above 1% for 10 minutes.",
        ),
    ]
    return dashboard(
        "screener-operations",
        "screener / Operations",
        "Throughput, lag, latency, dead letters, rule errors and deliveries.",
        panels,
        ["operations"],
    )


def recruitment() -> dict[str, Any]:
    L = _Layout()
    panels = [
        panel(
            L,
            "gauge",
            "Community-setting participants (target 10,000)",
            [('sum(setting:screener_study_enrolled_participants:sum{setting="community"}) or vector(0)', "community")],
            w=8,
            h=6,
            description="Participants enrolled from community settings, all studies; the strategy's target is 10,000.",
            thresholds=[(None, "orange"), (10000, "green")],
            extra={
                "fieldConfig": {
                    "defaults": {
                        "unit": "short",
                        "min": 0,
                        "max": 10000,
                        "thresholds": {
                            "mode": "absolute",
                            "steps": [{"color": "orange", "value": None}, {"color": "green", "value": 10000}],
                        },
                    },
                    "overrides": [],
                }
            },
        ),
        panel(
            L,
            "stat",
            "Studies on time and target (goal 80%)",
            [
                (
                    "count(study:screener_study_time_target:ratio >= 0) / count(study:screener_study_time_target:ratio)"
                    " or (count(study:screener_study_time_target:ratio) * 0)",
                    "on track",
                )
            ],
            w=8,
            h=6,
            unit="percentunit",
            thresholds=[(None, "red"), (0.8, "green")],
            description="Share of open studies whose NIHR time-and-target score is >= 0.",
        ),
        panel(
            L,
            "stat",
            "Commercial share of participants (goal 7%)",
            [(":screener_study_enrolled_participants:commercial_ratio", "commercial")],
            w=8,
            h=6,
            unit="percentunit",
            thresholds=[(None, "orange"), (0.07, "green")],
        ),
        panel(
            L,
            "bargauge",
            "Recruitment to time and target by study",
            [("study:screener_study_time_target:ratio", "{{study}}")],
            w=12,
            h=10,
            unit="percentunit",
            thresholds=[(None, "red"), (0, "green")],
            description="NIHR: (% of target recruited / % of time elapsed) - 1. On track when >= 0.",
        ),
        panel(
            L,
            "table",
            "Studies: enrolled, target, time elapsed",
            [
                ("study_sponsor:screener_study_enrolled_participants:sum", "__table"),
                ("study_sponsor:screener_study_target_participants:max", "__table"),
                ("study:screener_study_time_elapsed:ratio", "__table"),
            ],
            w=12,
            h=10,
            instant=True,
            extra={
                "transformations": [
                    {"id": "merge", "options": {}},
                    {
                        "id": "organize",
                        "options": {
                            "excludeByName": {"Time": True},
                            "renameByName": {"Value #A": "enrolled", "Value #B": "target", "Value #C": "time elapsed"},
                        },
                    },
                ]
            },
        ),
        panel(
            L,
            "bargauge",
            "Recruitment funnel (dashboard range)",
            [("sum by (stage) (increase(screener_funnel_actions_total[$__range]))", "{{stage}}")],
            w=12,
            h=8,
            instant=True,
            description="Worklist actions recorded by nurses, by funnel stage.",
        ),
        panel(
            L,
            "timeseries",
            "New matches by study and setting",
            [("sum by (study, setting) (rate(screener_matches_total[$__rate_interval]))", "{{study}} {{setting}}")],
            w=12,
            h=8,
            unit="ops",
        ),
        panel(
            L,
            "bargauge",
            "Participants by setting",
            [("setting:screener_study_enrolled_participants:sum", "{{setting}}")],
            w=12,
            h=8,
        ),
        panel(
            L,
            "timeseries",
            "Funnel actions by study and stage",
            [("sum by (study, stage) (rate(screener_funnel_actions_total[$__rate_interval]))", "{{study}} {{stage}}")],
            w=12,
            h=8,
            unit="ops",
        ),
    ]
    return dashboard(
        "screener-recruitment",
        "screener / Recruitment",
        "Funnel, community recruitment, time and target, commercial share.",
        panels,
        ["recruitment"],
    )


def equity() -> dict[str, Any]:
    L = _Layout()
    note = (
        "Counts from 1 to 7 are suppressed and the rest rounded to the nearest 5 (NHS disclosure control); "
        "shares are computed from the disclosed counts."
    )
    panels = [
        panel(
            L,
            "text",
            "About these figures",
            [],
            w=24,
            h=3,
            extra={
                "options": {
                    "mode": "markdown",
                    "content": "Representation of screened and recruited patients against the West Yorkshire "
                    "population (Census 2021; IMD 2019 quintile 1 = most deprived). " + note,
                }
            },
        ),
        panel(
            L,
            "bargauge",
            "Share by IMD quintile vs population",
            [
                (
                    'stage_imd_quintile:screener_funnel_imd_quintile_patients:disclosed_share{stage="enrolled"}',
                    "enrolled Q{{imd_quintile}}",
                ),
                ("max by (imd_quintile) (screener_population_imd_quintile_ratio)", "population Q{{imd_quintile}}"),
            ],
            w=12,
            h=10,
            unit="percentunit",
            description=note,
        ),
        panel(
            L,
            "bargauge",
            "Share by ethnic group vs population",
            [
                (
                    'stage_ethnic_group:screener_funnel_ethnic_group_patients:disclosed_share{stage="enrolled"}',
                    "enrolled {{ethnic_group}}",
                ),
                ("max by (ethnic_group) (screener_population_ethnic_group_ratio)", "population {{ethnic_group}}"),
            ],
            w=12,
            h=10,
            unit="percentunit",
            description=note,
        ),
        panel(
            L,
            "bargauge",
            "Representation ratio by IMD quintile (1 = as population)",
            [
                (
                    "stage_imd_quintile:screener_funnel_imd_quintile_patients:disclosed_share"
                    " / on (imd_quintile) group_left max by (imd_quintile) (screener_population_imd_quintile_ratio)",
                    "{{stage}} Q{{imd_quintile}}",
                )
            ],
            w=12,
            h=10,
            thresholds=[(None, "orange"), (0.8, "green"), (1.25, "orange")],
            description=note,
        ),
        panel(
            L,
            "bargauge",
            "Representation ratio by ethnic group (1 = as population)",
            [
                (
                    "stage_ethnic_group:screener_funnel_ethnic_group_patients:disclosed_share"
                    " / on (ethnic_group) group_left max by (ethnic_group) (screener_population_ethnic_group_ratio)",
                    "{{stage}} {{ethnic_group}}",
                )
            ],
            w=12,
            h=10,
            thresholds=[(None, "orange"), (0.8, "green"), (1.25, "orange")],
            description=note,
        ),
        panel(
            L,
            "table",
            "Patients by funnel stage and IMD quintile (disclosed)",
            [("stage_imd_quintile:screener_funnel_imd_quintile_patients:disclosed", "__table")],
            w=12,
            h=10,
            instant=True,
            description=note,
        ),
        panel(
            L,
            "table",
            "Patients by funnel stage and ethnic group (disclosed)",
            [("stage_ethnic_group:screener_funnel_ethnic_group_patients:disclosed", "__table")],
            w=12,
            h=10,
            instant=True,
            description=note,
        ),
    ]
    return dashboard(
        "screener-equity",
        "screener / Equity",
        "Funnel by deprivation quintile and ethnic group against the population, small counts hidden.",
        panels,
        ["equity"],
    )


DASHBOARDS = {"operations": operations, "recruitment": recruitment, "equity": equity}


def render() -> dict[str, str]:
    """File name -> JSON text for every dashboard."""
    return {f"{name}.json": json.dumps(build(), indent=2) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT / name).write_text(text)
        print(f"wrote {OUT / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
