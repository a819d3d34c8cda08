"""The Prometheus files under dashboards/ pass ``promtool``: config and rules check, the alerts behave over synthetic
series (``promtool test rules alerts_test.yml``), and every dashboard expression parses as PromQL.

Needs ``promtool`` (Debian's ``prometheus`` package; ``scripts/test`` installs it). The checks that need no
Prometheus binary are in ``tests/unit/dashboards/test_prometheus.py``, whose helpers this module reuses.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from types import ModuleType

import pytest
import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
DASH = ROOT / "dashboards"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _load_unit_module() -> ModuleType:
    """The unit test module's helpers (``dashboard_exprs``, ``RULES``): one reading of the dashboards for both."""
    path = ROOT / "tests" / "unit" / "dashboards" / "test_prometheus.py"
    spec = importlib.util.spec_from_file_location("_dashboards_unit_helpers", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_unit = _load_unit_module()
RULES: list[Path] = _unit.RULES
dashboard_exprs = _unit.dashboard_exprs


def _promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_config_passes_on_shipped_config():
    result = _promtool("check", "config", str(DASH / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_check_config_with_the_rules_it_loads(tmp_path):
    """The shipped config with rule_files pointed at the repo, so check config also checks the rules."""
    config = yaml.safe_load((DASH / "prometheus" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/*.yml"]
    config["rule_files"] = [str(DASH / "prometheus" / "rules" / "*.yml")]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    result = _promtool("check", "config", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(RULES)} rule files found" in result.stdout


def test_promtool_check_rules_passes():
    assert {p.name for p in RULES} == {"alerts.yml", "recording.yml"}
    result = _promtool("check", "rules", *map(str, RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_for_alerts_pass():
    result = _promtool("test", "rules", "alerts_test.yml", cwd=HERE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_dashboard_expression_parses(tmp_path):
    """promtool parses each expression as a recording rule; an error names the dashboard and panel."""
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    rules = {
        "groups": [
            {
                "name": "dashboards",
                "rules": [{"record": f"dashboard:expr_{i}:check", "expr": e} for i, (_, _, e) in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(rules))
    result = _promtool("check", "rules", str(path))
    if result.returncode != 0:
        bad = re.findall(r"group \"dashboards\", rule (\d+)", result.stdout + result.stderr)
        where = [exprs[int(i) - 1][:2] for i in bad]
        pytest.fail(f"{where}: {result.stdout}{result.stderr}")


def test_a_bad_expression_is_caught_by_the_parse_check(tmp_path):
    path = tmp_path / "bad.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "groups": [
                    {
                        "name": "g",
                        "rules": [{"record": "a:b:c", "expr": "sum by (x) (rate(screener_events_consumed_total[5m])"}],
                    }
                ]
            }
        )
    )
    assert _promtool("check", "rules", str(path)).returncode != 0
