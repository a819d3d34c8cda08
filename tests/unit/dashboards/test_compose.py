"""compose.yaml parses, and every file, port, verb and environment variable it references exists in the repo.

Docker is not available to the tests, so this checks what `docker compose config` cannot: that the stack's
wiring agrees with screener's settings, CLI, Prometheus scrape config and Grafana provisioning.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from screener.settings import Settings

ROOT = Path(__file__).resolve().parents[3]
COMPOSE = yaml.safe_load((ROOT / "compose.yaml").read_text())
SERVICES = COMPOSE["services"]
SCREENER_SERVICES = {name: s for name, s in SERVICES.items() if s.get("image") == "screener:latest"}
SETTINGS_ENV = {f"SCREENER_{name.upper()}" for name in Settings.model_fields}


def _env(service: dict) -> dict[str, str]:
    return {k: str(v) for k, v in (service.get("environment") or {}).items()}


def _interpolations(text: str) -> set[str]:
    return set(re.findall(r"(?<!\$)\$\{([A-Z_][A-Z0-9_]*)", text))


def test_compose_has_the_whole_stack():
    assert {
        "kafka",
        "kafka-init",
        "postgres",
        "engine",
        "web",
        "hl7",
        "fhir",
        "prometheus",
        "grafana",
        "mailpit",
    } <= set(SERVICES)
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    env = _env(SERVICES["kafka"])
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft, no ZooKeeper
    assert "ZOOKEEPER" not in " ".join(env)
    for name, service in SERVICES.items():
        if name != "kafka-init":
            assert "healthcheck" in service, f"{name} has no health check"
    for volume in ("kafka-data", "postgres-data", "engine-state", "prometheus-data", "grafana-data"):
        assert volume in COMPOSE["volumes"]


def test_screener_services_use_only_settings_fields():
    assert set(SCREENER_SERVICES) == {"engine", "web", "hl7", "fhir"}
    for name, service in SCREENER_SERVICES.items():
        for key in _env(service):
            assert key in SETTINGS_ENV, f"{name}: {key} is not a screener.settings.Settings field"
        # and the values are valid settings (interpolations replaced by their defaults)
        values = {
            k[len("SCREENER_") :].lower(): re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", v) for k, v in _env(service).items()
        }
        Settings(**{k: v for k, v in values.items() if v != ""})


def test_interpolated_screener_variables_are_settings_fields():
    text = (ROOT / "compose.yaml").read_text()
    required = {"SCREENER_SECRET_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
    for var in _interpolations(text):
        assert var in SETTINGS_ENV or not var.startswith("SCREENER_"), var
        if var in required:  # secrets have no default: compose refuses to start without them, saying which
            assert re.search(r"\$\{" + var + r":\?set " + var, text), f"${{{var}}} must be required"
            assert not re.search(r"\$\{" + var + r":-", text), f"${{{var}}} has a default"
        else:
            assert re.search(r"\$\{" + var + r":-", text), f"${{{var}}} has no default: compose up would fail"


def test_topics_created_are_the_ones_screener_uses():
    script = "\n".join(SERVICES["kafka-init"]["command"])
    defaults = Settings()
    for topic in (defaults.events_topic, defaults.dlq_topic, defaults.matches_topic):
        assert topic in script
    assert f"--partitions {defaults.topic_partitions}" in script
    env = _env(SCREENER_SERVICES["engine"])
    assert env["SCREENER_EVENTS_TOPIC"] == defaults.events_topic
    assert env["SCREENER_BOOTSTRAP_SERVERS"] == "kafka:9092"
    assert "PLAINTEXT://kafka:9092" in _env(SERVICES["kafka"])["KAFKA_ADVERTISED_LISTENERS"]


def test_every_host_path_exists():
    paths = []
    for name, service in SERVICES.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith((".", "/")):
                paths.append((name, source))
            else:
                assert source in COMPOSE["volumes"], f"{name}: named volume {source} is not declared"
        if "build" in service:
            context = service["build"] if isinstance(service["build"], str) else service["build"]["context"]
            paths.append((name, context + "/Dockerfile"))
    assert len(paths) >= 6
    for name, path in paths:
        assert (ROOT / path).exists(), f"{name}: {path} does not exist"


def test_dockerfile_copies_only_what_exists_and_is_not_ignored():
    dockerfile = (ROOT / "Dockerfile").read_text()
    ignored = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    for line in dockerfile.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            for source in line.split()[1:-1]:
                if source.startswith("--"):
                    continue
                assert (ROOT / source).exists(), source
                assert source not in ignored, f"{source} is copied but .dockerignore drops it"
    for port in ("9108", "8080", "2575", "8090"):
        assert port in dockerfile


def test_ports_agree_with_settings_prometheus_and_health_checks():
    engine, web, hl7 = (_env(SCREENER_SERVICES[n]) for n in ("engine", "web", "hl7"))
    metrics_port, web_port = engine["SCREENER_METRICS_PORT"], web["SCREENER_WEB_PORT"]
    assert engine["SCREENER_METRICS_HOST"] == "0.0.0.0" and web["SCREENER_WEB_HOST"] == "0.0.0.0"
    assert int(metrics_port) == Settings().metrics_port and int(web_port) == Settings().web_port
    assert f"{metrics_port}:{metrics_port}" in SCREENER_SERVICES["engine"]["ports"]
    assert f"{web_port}:{web_port}" in SCREENER_SERVICES["web"]["ports"]
    assert f":{metrics_port}/metrics" in " ".join(SCREENER_SERVICES["engine"]["healthcheck"]["test"])
    assert f":{web_port}/metrics" in " ".join(SCREENER_SERVICES["web"]["healthcheck"]["test"])
    for name in ("hl7", "fhir"):  # connectors listen where compose publishes and health-checks
        command = SCREENER_SERVICES[name]["command"]
        port = command[command.index("--listen") + 1].rsplit(":", 1)[1]
        assert command[command.index("--listen") + 1].startswith("0.0.0.0:")
        assert f"{port}:{port}" in SCREENER_SERVICES[name]["ports"]
        # the health check asks /healthz (503 while the broker is unreachable): the FHIR endpoint's own, and the
        # MLLP listener's on SCREENER_MLLP_HEALTH_LISTEN
        health_port = _env(SCREENER_SERVICES[name]).get("SCREENER_MLLP_HEALTH_LISTEN", f":{port}").rsplit(":", 1)[1]
        assert f"127.0.0.1:{health_port}/healthz" in str(SCREENER_SERVICES[name]["healthcheck"]["test"])
    assert not hl7.get("SCREENER_METRICS_PORT")

    prom = yaml.safe_load((ROOT / "dashboards" / "prometheus" / "prometheus.yml").read_text())
    targets = {j["job_name"]: j["static_configs"][0]["targets"] for j in prom["scrape_configs"]}
    assert targets["screener-engine"] == [f"engine:{metrics_port}"]
    assert targets["screener-web"] == [f"web:{web_port}"]
    assert "prometheus:9090" in (ROOT / "dashboards/grafana/provisioning/datasources/prometheus.yaml").read_text()
    assert "9090:9090" in SERVICES["prometheus"]["ports"]


def test_prometheus_and_grafana_mounts_match_their_configs():
    prom = SERVICES["prometheus"]
    mounts = {v.split(":")[1]: v.split(":")[0] for v in prom["volumes"]}
    config_path = next(a.split("=", 1)[1] for a in prom["command"] if a.startswith("--config.file="))
    assert mounts[config_path] == "./dashboards/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / "dashboards/prometheus/prometheus.yml").read_text())
    for pattern in config["rule_files"]:
        assert str(Path(pattern).parent) in mounts
        assert list((ROOT / mounts[str(Path(pattern).parent)].lstrip("./")).glob(Path(pattern).name))
    grafana = {v.split(":")[1]: v.split(":")[0] for v in SERVICES["grafana"]["volumes"]}
    assert grafana["/etc/grafana/provisioning"] == "./dashboards/grafana/provisioning"
    provider = yaml.safe_load((ROOT / "dashboards/grafana/provisioning/dashboards/provider.yaml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert list((ROOT / grafana[path].lstrip("./")).glob("*.json"))
    home = _env(SERVICES["grafana"])["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (ROOT / grafana[path].lstrip("./") / Path(home).name).exists()


@pytest.mark.parametrize("service", ["engine", "web", "hl7", "fhir"])
def test_screener_commands_are_real_cli_verbs(service):
    from click.testing import CliRunner

    from screener.cli import main

    command = SCREENER_SERVICES[service]["command"]
    assert command[0] == "screener"
    verb = main.commands.get(command[1])
    assert verb is not None, f"{service}: `screener {command[1]}` does not exist"
    # the verb accepts the options compose gives it (--help parses the command line up to the options)
    result = CliRunner().invoke(main, [*command[1:], "--help"])
    assert result.exit_code == 0, result.output
    for option in (a for a in command[2:] if a.startswith("--")):
        assert option in result.output, (service, option)


def test_every_service_that_writes_or_delivers_matches_has_the_alert_settings():
    """The engine writes the outbox rows (only for the channels its settings configure) and the web app delivers
    them: both need the webhook, pager and SMTP settings, and SMTP reaches the mail catcher by default."""
    alert = {
        "SCREENER_WEBHOOK_URL",
        "SCREENER_PAGER_WEBHOOK_URL",
        "SCREENER_SMTP_HOST",
        "SCREENER_SMTP_PORT",
        "SCREENER_SMTP_FROM",
        "SCREENER_PUBLIC_URL",
    }
    for name in ("engine", "web"):
        env = _env(SCREENER_SERVICES[name])
        assert alert <= set(env), f"{name} lacks {sorted(alert - set(env))}"
        assert env["SCREENER_SMTP_HOST"] == "${SCREENER_SMTP_HOST:-mailpit}"
        assert env["SCREENER_SMTP_PORT"] == "${SCREENER_SMTP_PORT:-1025}"
    assert SERVICES["mailpit"]["image"].startswith("axllent/mailpit:")
    assert "8025:8025" in SERVICES["mailpit"]["ports"]


def test_no_service_starts_with_a_default_secret_outside_demo_mode():
    from screener.errors import ConfigError
    from screener.settings import DEFAULT_SECRET_KEY

    for name in ("engine", "web"):
        env = _env(SCREENER_SERVICES[name])
        assert env["SCREENER_SECRET_KEY"].startswith("${SCREENER_SECRET_KEY:?")
        assert env["SCREENER_DEMO"] == "${SCREENER_DEMO:-false}"
    assert "admin}" not in str(SERVICES["grafana"]["environment"])  # no admin/admin
    with pytest.raises(ConfigError, match="SCREENER_SECRET_KEY is the shipped default"):
        Settings(secret_key=DEFAULT_SECRET_KEY, demo=False).check_secrets()
    Settings(secret_key=DEFAULT_SECRET_KEY, demo=True).check_secrets()
    Settings(secret_key="a-long-random-value-from-the-env-file", demo=False).check_secrets()


def test_the_operating_guides_kafka_configurations_are_valid_settings(tmp_path):
    """docs/operating.md's worked TLS/mTLS and SASL files load as settings and reach every Kafka client."""
    from screener.settings import load_settings

    text = (ROOT / "docs" / "operating.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 2
    for i, block in enumerate(blocks):
        path = tmp_path / f"kafka-{i}.yaml"
        path.write_text(block)
        opts = load_settings(config_file=path, ssl_password="secret", sasl_password="secret").kafka_options()
        assert opts["security_protocol"] in ("SSL", "SASL_SSL") and opts["ssl_cafile"].endswith(".pem")
        assert opts["ssl_check_hostname"] is True
    mtls = yaml.safe_load(blocks[0])
    opts = load_settings(config_file=tmp_path / "kafka-0.yaml", ssl_password="pass").kafka_options()
    assert opts["ssl_certfile"] == mtls["ssl_certfile"] and opts["ssl_keyfile"] == mtls["ssl_keyfile"]
    assert opts["ssl_password"] == "pass"
    scram = load_settings(config_file=tmp_path / "kafka-1.yaml", sasl_password="pw").kafka_options()
    assert scram["sasl_mechanism"] == "SCRAM-SHA-512" and scram["sasl_plain_password"] == "pw"


def test_the_image_build_has_what_the_wheel_force_includes():
    """pyproject.toml builds rules/ into the wheel; the Dockerfile's build stage must copy it before `pip wheel`."""
    import tomllib

    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    included = pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    build_stage = (ROOT / "Dockerfile").read_text().split("RUN pip wheel")[0]
    for source in included:
        assert f"COPY {source} ./{source}" in build_stage, source
        assert (ROOT / source).is_dir()
