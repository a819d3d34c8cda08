"""What dashboards/ ships, checked without Prometheus: every dashboard parses with a stable uid, the committed
JSON is what the generator writes, alert and recording rules are well formed, and every PromQL expression names
only real metrics. ``tests/tooling/dashboards/test_promtool.py`` runs ``promtool`` over the same files."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from screener.metrics import Metrics

ROOT = Path(__file__).resolve().parents[3]
DASH = ROOT / "dashboards"
RULES = sorted((DASH / "prometheus" / "rules").glob("*.yml"))
UIDS = {
    "operations.json": "screener-operations",
    "recruitment.json": "screener-recruitment",
    "equity.json": "screener-equity",
}
#: Grafana macros the dashboards may use, with the values the tests substitute.
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__range": "1h"}
AGGREGATION_LABELS = (
    "job",
    "source",
    "kind",
    "topic",
    "channel",
    "study",
    "sponsor",
    "setting",
    "stage",
    "imd_quintile",
    "ethnic_group",
)
LEVEL_METRIC_OPERATIONS = re.compile(r"^[a-z_]*:[a-z_]+:[a-z0-9_]+$")


def _load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def dashboard_exprs() -> list[tuple[str, str, str]]:
    """(dashboard file, panel title, expression with Grafana macros substituted) for every panel target."""
    out = []
    for path in sorted((DASH / "grafana" / "dashboards").glob("*.json")):
        for p in json.loads(path.read_text())["panels"]:
            for t in p.get("targets", []):
                expr = t["expr"]
                for macro, value in GRAFANA_MACROS.items():
                    expr = expr.replace(macro, value)
                out.append((path.name, p["title"], expr))
    return out


def rule_entries() -> list[dict]:
    return [r for path in RULES for g in yaml.safe_load(path.read_text())["groups"] for r in g["rules"]]


def exported_metric_names() -> set[str]:
    """Every sample name screener.metrics exports (histogram _bucket/_sum/_count, counter _total)."""
    registry = CollectorRegistry()
    Metrics(registry=registry)
    names = set()
    for family in registry.collect():
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + s for s in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


def test_alerts_cover_the_issue_and_carry_severity_and_summary():
    alerts = {r["alert"]: r for r in rule_entries() if "alert" in r}
    for name in (
        "ScreenerNoEventsConsumed",
        "ScreenerConsumerLagGrowing",
        "ScreenerDeadLettersHigh",
        "ScreenerRuleLoadFailure",
        "ScreenerDeliveryFailures",
        "ScreenerStudyBehindTimeAndTarget",
    ):
        assert name in alerts
    for rule in alerts.values():
        assert rule["labels"]["severity"] in {"page", "warning", "info"}
        assert rule["annotations"]["summary"] and rule["annotations"]["description"]


def test_recording_rules_follow_level_metric_operations():
    """level names the labels the output keeps, metric the source metric, operations what was done."""
    records = {r["record"]: r["expr"] for r in rule_entries() if "record" in r}
    assert len(records) >= 10
    for name, expr in records.items():
        assert LEVEL_METRIC_OPERATIONS.match(name), name
        level, metric, _ = name.split(":")
        assert metric.startswith("screener_"), name
        rest = level
        while rest:  # the level is a concatenation of aggregation labels, each named in the expression
            label = next((x for x in AGGREGATION_LABELS if rest == x or rest.startswith(x + "_")), None)
            assert label is not None and label in expr, (name, rest)
            rest = rest[len(label) + 1 :]


def test_dashboards_parse_with_stable_uids_and_the_provisioned_datasource():
    files = {p.name: json.loads(p.read_text()) for p in (DASH / "grafana" / "dashboards").glob("*.json")}
    assert {name: d["uid"] for name, d in files.items()} == UIDS
    ds = yaml.safe_load((DASH / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())
    ds_uid = ds["datasources"][0]["uid"]
    for name, d in files.items():
        ids = [p["id"] for p in d["panels"]]
        assert len(ids) == len(set(ids)), name
        assert d["title"].startswith("screener / ")
        for p in d["panels"]:
            assert p["datasource"]["uid"] == ds_uid
            for t in p.get("targets", []):
                assert t["datasource"]["uid"] == ds_uid
                assert "$" not in re.sub(r"\$__(rate_interval|range)", "", t["expr"]), t["expr"]
            pos = p["gridPos"]
            assert pos["x"] + pos["w"] <= 24


def test_dashboard_provider_points_at_the_mounted_dashboards_folder():
    provider = yaml.safe_load((DASH / "grafana" / "provisioning" / "dashboards" / "provider.yaml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"


def test_committed_dashboards_match_the_generator():
    generate = _load_module(DASH / "generate.py", "dashboards_generate")
    for name, text in generate.render().items():
        assert (DASH / "grafana" / "dashboards" / name).read_text() == text, (
            f"{name} is stale: run python dashboards/generate.py"
        )


@pytest.mark.parametrize("source", ["dashboards", "rules"])
def test_every_metric_named_is_exported_or_recorded(source):
    """A typo in a metric name parses fine and silently shows nothing: check names against screener.metrics."""
    known = exported_metric_names() | {r["record"] for r in rule_entries() if "record" in r} | {"up"}
    exprs = [e for _, _, e in dashboard_exprs()] if source == "dashboards" else [r["expr"] for r in rule_entries()]
    seen = set()
    for expr in exprs:
        for name in re.findall(r"(?<![\w{\"=])(:?[a-z_]*:?screener_[a-z_]+(?::[a-z0-9_]+)?)", expr):
            assert name in known, (name, expr)
            seen.add(name)
    assert len(seen) >= 15
