"""A real Prometheus scrapes a running engine and web app fed by the synthetic connector through the session's
embedded broker; every PromQL expression in every dashboard panel and every rule runs against it.

Topology (as in compose.yaml, on localhost): `screener connect synthetic` -> broker -> `screener run` (engine,
/metrics) -> SQLite worklist <- `screener web` (/metrics, API). A nurse's actions go through the web API so the
funnel moves. Prometheus runs the shipped prometheus.yml (targets and intervals rewritten) and the shipped rules
(group intervals shortened to 1 s).

"Should have data": a dashboard or recording-rule expression must return samples when every raw metric it
depends on (recording rules resolved to their sources) has series in Prometheus. Alert expressions must parse
and evaluate; firing is not expected. A core set of metrics must be present, so the test cannot pass empty.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from screener.bus import ensure_topics, free_port

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
DASH = ROOT / "dashboards"
PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
GRAFANA_MACROS = {"$__rate_interval": "1m", "$__range": "1h"}
#: Raw metrics the dashboards and rules use that no process exports (none: every one must be scraped).
NOT_EXPORTED: frozenset[str] = frozenset()
#: Expressions whose result is filtered by a value, so they may be empty on healthy data (with the reason).
MAY_BE_EMPTY: dict[str, str] = {}
BROKEN_RULE = "broken-on-purpose.yaml"
STARTUP_DEADLINE_S = 180.0


@dataclass
class Stack:
    prometheus: str
    engine_metrics: str
    web: str
    workdir: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def query(self, expr: str, **params: Any) -> dict[str, Any]:
        r = httpx.get(f"{self.prometheus}/api/v1/query", params={"query": expr, **params}, timeout=30)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]

    def metric_names(self) -> set[str]:
        return set(httpx.get(f"{self.prometheus}/api/v1/label/__name__/values", timeout=30).json()["data"])

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(self.workdir.glob("*.log")))


class _Webhook(BaseHTTPRequestHandler):
    """Accepts outbound webhook posts (so delivery attempts are counted) and keeps their bodies."""

    bodies: list[bytes] = []

    def do_POST(self) -> None:
        self.bodies.append(self.rfile.read(int(self.headers.get("content-length", 0))))
        # the first delivery fails, so the failure counter and the failure-ratio rule have data
        self.send_response(503 if len(self.bodies) == 1 else 204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _wait(
    what: str, check: Any, deadline_s: float, stack: Stack | None = None, interval: float = 0.5, describe: Any = None
) -> Any:
    deadline = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError, OSError, KeyError, ValueError, AssertionError):
            last = check()
            if last:
                return last
        if stack is not None:
            dead = {n: p.returncode for n, p in stack.procs.items() if p.poll() is not None and n != "feed"}
            if dead:
                pytest.fail(f"process exited while waiting for {what}: {dead}\n{stack.logs()}")
        time.sleep(interval)
    pytest.fail(
        f"timed out after {deadline_s:.0f}s waiting for {what} (last: {describe() if describe else last!r})"
        + (f"\n{stack.logs()}" if stack else "")
    )


def _prometheus_config(workdir: Path, engine_port: int, web_port: int, prom_port: int) -> Path:
    """The shipped config and rules with local targets and 1 s intervals."""
    config = yaml.safe_load((DASH / "prometheus" / "prometheus.yml").read_text())
    config["global"].update({"scrape_interval": "1s", "evaluation_interval": "1s"})
    targets = {
        "screener-engine": f"127.0.0.1:{engine_port}",
        "screener-web": f"127.0.0.1:{web_port}",
        "prometheus": f"127.0.0.1:{prom_port}",
    }
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    rules_dir = workdir / "rules"
    rules_dir.mkdir()
    for path in (DASH / "prometheus" / "rules").glob("*.yml"):
        rules = yaml.safe_load(path.read_text())
        for group in rules["groups"]:
            group["interval"] = "1s"
        (rules_dir / path.name).write_text(yaml.safe_dump(rules, sort_keys=False))
    config["rule_files"] = [str(rules_dir / "*.yml")]
    out = workdir / "prometheus.yml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def _spawn(stack: Stack, name: str, args: list[str], env: dict[str, str]) -> None:
    log = open(stack.workdir / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process below
    stack.procs[name] = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=stack.workdir)


@pytest.fixture(scope="module")
def stack(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    workdir = tmp_path_factory.mktemp("observability")
    suffix = uuid.uuid4().hex[:8]
    engine_port, web_port, prom_port = free_port(), free_port(), free_port()
    webhook = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    threading.Thread(target=webhook.serve_forever, daemon=True).start()
    # the shipped studies plus one rule file that cannot load (rule_load_errors, ScreenerRuleLoadFailure)
    rules = workdir / "studies"
    shutil.copytree(ROOT / "rules", rules)
    (rules / BROKEN_RULE).write_text("study: {id: BROKEN, title: x}\ninclude:\n  adult: age >= \n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCREENER_")}
    env.update(
        {
            "SCREENER_BOOTSTRAP_SERVERS": broker.bootstrap,
            "SCREENER_EVENTS_TOPIC": f"obs-events-{suffix}",
            "SCREENER_DLQ_TOPIC": f"obs-dlq-{suffix}",
            "SCREENER_MATCHES_TOPIC": f"obs-matches-{suffix}",
            "SCREENER_TOPIC_PARTITIONS": "2",
            # Batches of 5,000 spread the feed over several scrapes, so every rate() sees flow (with the default
            # 50,000 the whole feed can be consumed before Prometheus's first scrape).
            "SCREENER_BATCH_MAX_RECORDS": "5000",
            "SCREENER_GROUP_ID": f"obs-engine-{suffix}",
            "SCREENER_DEMO": "true",  # `screener web` refuses the default secret key otherwise
            "SCREENER_PRODUCER_IDEMPOTENCE": "false",
            "SCREENER_RULES_DIR": str(rules),
            "SCREENER_STATE_DIR": str(workdir / "state"),
            "SCREENER_DATABASE_URL": f"sqlite:///{workdir / 'screener.db'}",
            "SCREENER_METRICS_HOST": "127.0.0.1",
            "SCREENER_METRICS_PORT": str(engine_port),
            "SCREENER_WEB_HOST": "127.0.0.1",
            "SCREENER_WEB_PORT": str(web_port),
            "SCREENER_PUBLIC_URL": f"http://127.0.0.1:{web_port}",
            "SCREENER_WEBHOOK_URL": f"http://127.0.0.1:{webhook.server_address[1]}/hook",
            "SCREENER_OUTBOX_INTERVAL_S": "1",
            "SCREENER_LOG_FORMAT": "json",
        }
    )
    ensure_topics(
        broker.bootstrap,
        {env["SCREENER_EVENTS_TOPIC"]: 2, env["SCREENER_DLQ_TOPIC"]: 2, env["SCREENER_MATCHES_TOPIC"]: 2},
    )
    _publish_malformed(broker.bootstrap, env["SCREENER_EVENTS_TOPIC"])  # one dead letter
    # Migrate the database once before two processes open it.
    from screener.alerts.store import SqlStore

    SqlStore(env["SCREENER_DATABASE_URL"]).close()

    st = Stack(
        prometheus=f"http://127.0.0.1:{prom_port}",
        engine_metrics=f"http://127.0.0.1:{engine_port}/metrics",
        web=f"http://127.0.0.1:{web_port}",
        workdir=workdir,
    )
    screener = [str(Path(sys.executable).with_name("screener"))]  # the installed console script
    try:
        _spawn(st, "engine", [*screener, "run"], env)
        _spawn(st, "web", [*screener, "web"], env)
        # 3000 patients as fast as the broker takes them; the 5m rate windows still see the flow afterwards
        _spawn(
            st,
            "feed",
            [*screener, "connect", "synthetic", "--no-idempotence", "--patients", "3000", "--rate", "0", "--seed", "6"],
            env,
        )
        config = _prometheus_config(workdir, engine_port, web_port, prom_port)
        _spawn(
            st,
            "prometheus",
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
                "--storage.tsdb.retention.time=1h",
                "--log.level=warn",
            ],
            env,
        )
        _wait(
            "both screener targets up",
            lambda: len(st.query('up{job=~"screener-.*"} == 1')["result"]) == 2,
            STARTUP_DEADLINE_S,
            st,
        )
        _wait(
            "80 matches in the worklist",
            lambda: _matches_in_store(env["SCREENER_DATABASE_URL"]) >= 80,
            STARTUP_DEADLINE_S,
            st,
            describe=lambda: f"{_matches_in_store(env['SCREENER_DATABASE_URL'])} matches",
        )
        _nurse_actions(st, env["SCREENER_DATABASE_URL"])
        _wait(
            "every metric the dashboards and rules use",
            lambda: not (_required_metrics() - st.metric_names()),
            60,
            st,
            describe=lambda: f"missing {sorted(_required_metrics() - st.metric_names())}",
        )
        # rate() and the recording rules need a few more scrapes and evaluations after the last change
        _wait(
            "recording rules evaluated",
            lambda: (
                st.query("job:screener_events_consumed:rate5m")["result"]
                and st.query("study:screener_study_time_elapsed:ratio")["result"]
            ),
            30,
            st,
        )
        time.sleep(3)  # a few more 1 s scrapes, so every rate() window holds the nurse actions
        yield st
    finally:
        for proc in st.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in st.procs.values():
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
        webhook.shutdown()


def _publish_malformed(bootstrap: str, topic: str) -> None:
    from kafka import KafkaProducer

    producer = KafkaProducer(bootstrap_servers=bootstrap)
    producer.send(topic, key=b"x", value=b'{"schema": "screener.event/v1", "kind": "nonsense"}')
    producer.flush(timeout=30)
    producer.close(timeout=10)


def _required_metrics() -> set[str]:
    """Every raw metric some dashboard panel or rule reads (recording rules resolved to their inputs)."""
    records = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    exprs = [e for _, e in _dashboard_exprs()] + [r["expr"] for r in _rules()]
    return set().union(*(_raw_metrics(e, records) for e in exprs)) - NOT_EXPORTED


def _matches_in_store(url: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text("SELECT count(*) FROM matches")).scalar_one())
    finally:
        engine.dispose()


def _nurse_actions(st: Stack, url: str) -> None:
    """An admin records funnel actions through the web API (bearer token), as a research nurse would."""
    from screener.alerts.store import SqlStore

    with SqlStore(url) as store:
        store.add_user("obs-admin", "a-long-test-password-1", "admin")
        token = store.create_api_token("obs-admin", "observability-test")
    headers = {"Authorization": f"Bearer {token}"}
    rows = httpx.get(f"{st.web}/api/worklist", headers=headers, timeout=30).json()
    assert rows, "the worklist API returned no matches"
    # 80 matches: one in eight reviewed, one in eight approached, three in four enrolled (enough that not
    # every IMD-quintile or ethnic-group cell is suppressed by disclosure control)
    paths = [("reviewed",), ("reviewed", "approached")] + [("approached", "consented", "enrolled")] * 6
    assert len(rows) >= 80
    for i, row in enumerate(rows[:80]):
        for action in paths[i % len(paths)]:
            r = httpx.post(
                f"{st.web}/api/matches/{row['token']}/actions", json={"action": action}, headers=headers, timeout=30
            )
            assert r.status_code == 200, r.text


def _rules() -> list[dict[str, Any]]:
    return [
        r
        for path in sorted((DASH / "prometheus" / "rules").glob("*.yml"))
        for g in yaml.safe_load(path.read_text())["groups"]
        for r in g["rules"]
    ]


def _dashboard_exprs() -> list[tuple[str, str]]:
    out = []
    for path in sorted((DASH / "grafana" / "dashboards").glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel.get("targets", []):
                expr = target["expr"]
                for macro, value in GRAFANA_MACROS.items():
                    expr = expr.replace(macro, value)
                out.append((f"{path.stem}: {panel['title']}", expr))
    return out


def _raw_metrics(expr: str, records: dict[str, str]) -> set[str]:
    """Raw metric names an expression depends on, resolving recording rules to their own expressions."""
    names = set(re.findall(r"(?<![\w{\"=])(:?[a-z_]*:?screener_[a-z_]+(?::[a-z0-9_]+)?|\bup\b)", expr))
    out: set[str] = set()
    for name in names:
        out |= _raw_metrics(records[name], records) if name in records else {name}
    return out


def _check_expressions(st: Stack, exprs: list[tuple[str, str]]) -> list[str]:
    """Run each expression; return the ones that came back empty although all their inputs exist."""
    records = {r["record"]: r["expr"] for r in _rules() if "record" in r}
    present = st.metric_names()
    empty = []
    for where, expr in exprs:
        data = st.query(expr)
        needs = _raw_metrics(expr, records)
        assert needs, (where, expr)
        if needs <= present and not data["result"] and not any(k in expr for k in MAY_BE_EMPTY):
            empty.append(f"{where}: {expr}")
    return empty


def test_every_metric_the_dashboards_use_is_scraped_from_the_two_processes(stack: Stack):
    missing = _required_metrics() - stack.metric_names()
    assert not missing, f"no process exports {sorted(missing)}"
    assert len(_required_metrics()) >= 20
    jobs = {r["metric"]["job"] for r in stack.query('count by (job) ({__name__=~"screener_.+"})')["result"]}
    assert jobs == {"screener-engine", "screener-web"}
    consumed = stack.query("sum(screener_events_consumed_total)")["result"]
    assert float(consumed[0]["value"][1]) > 0
    assert stack.query('sum(screener_funnel_actions_total{stage="enrolled"})')["result"]
    assert stack.query('sum(screener_delivery_failures_total{job="screener-web"}) > 0')["result"]


def test_every_dashboard_expression_parses_and_returns_data(stack: Stack):
    exprs = _dashboard_exprs()
    assert len(exprs) >= 30
    assert _check_expressions(stack, exprs) == []


def test_every_recording_rule_parses_and_returns_data(stack: Stack):
    rules = [r for r in _rules() if "record" in r]
    # the rule's own expression and its recorded series
    assert _check_expressions(stack, [(r["record"], r["expr"]) for r in rules]) == []
    assert _check_expressions(stack, [(r["record"], r["record"]) for r in rules]) == []


def test_every_alert_expression_parses_and_prometheus_loaded_every_rule(stack: Stack):
    for rule in _rules():
        if "alert" in rule:
            stack.query(rule["expr"])
    groups = httpx.get(f"{stack.prometheus}/api/v1/rules", timeout=30).json()["data"]["groups"]
    loaded = [r for g in groups for r in g["rules"]]
    assert len(loaded) == len(_rules())
    assert all(r["health"] == "ok" for r in loaded), [r for r in loaded if r["health"] != "ok"]
    # a healthy stack fires none of the paging alerts
    firing = [
        a["labels"]["alertname"]
        for a in httpx.get(f"{stack.prometheus}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
        if a["state"] == "firing" and a["labels"].get("severity") == "page"
    ]
    assert firing == []


def test_rule_load_failure_alert_fires_for_the_broken_file(stack: Stack):
    def firing() -> list[dict[str, Any]]:
        alerts = httpx.get(f"{stack.prometheus}/api/v1/alerts", timeout=30).json()["data"]["alerts"]
        return [a for a in alerts if a["labels"]["alertname"] == "ScreenerRuleLoadFailure" and a["state"] == "firing"]

    alerts = _wait("ScreenerRuleLoadFailure firing", firing, 30)
    assert {a["labels"]["file"] for a in alerts} == {BROKEN_RULE}
    assert alerts[0]["annotations"]["summary"] == f"Rule file {BROKEN_RULE} failed to load"


def test_time_and_target_matches_the_nihr_formula(stack: Stack):
    """The recorded score equals (% target recruited / % time elapsed) - 1 computed here from raw gauges.

    The recording rules run every second on the last scrape, so right after a gauge changes the recorded score
    can lag the raw gauges by one evaluation: the comparison is retried for a few seconds, and the last
    attempt's differences are the failure."""
    mismatches: list[str] = []

    def agree() -> bool:
        mismatches[:] = _nihr_mismatches(stack)
        return not mismatches

    _wait("the recorded time-and-target scores to match the formula", agree, 20, describe=lambda: mismatches)


def _nihr_mismatches(stack: Stack) -> list[str]:
    t = float(stack.query("time()")["result"][1])
    opens = {
        r["metric"]["study"]: float(r["value"][1])
        for r in stack.query("max by (study) (screener_study_opens_timestamp_seconds)", time=t)["result"]
    }
    closes = {
        r["metric"]["study"]: float(r["value"][1])
        for r in stack.query("max by (study) (screener_study_closes_timestamp_seconds)", time=t)["result"]
    }
    target = {
        r["metric"]["study"]: float(r["value"][1])
        for r in stack.query("max by (study) (screener_study_target_participants)", time=t)["result"]
    }
    enrolled = {
        r["metric"]["study"]: float(r["value"][1])
        for r in stack.query(
            "sum by (study) (max by (study, sponsor, setting) (screener_study_enrolled_participants))", time=t
        )["result"]
    }
    scores = {
        r["metric"]["study"]: float(r["value"][1])
        for r in stack.query(
            "study:screener_study_target_recruited:ratio / on (study) study:screener_study_time_elapsed:ratio - 1",
            time=t,
        )["result"]
    }
    if not scores:
        return ["no recorded score"]
    out = []
    for study, score in scores.items():
        elapsed = min((t - opens[study]) / (closes[study] - opens[study]), 1.0)
        expected = (enrolled.get(study, 0.0) / target[study]) / elapsed - 1
        if score != pytest.approx(expected, rel=1e-6, abs=1e-9):
            out.append(f"{study}: recorded {score}, formula {expected}")
    return out
