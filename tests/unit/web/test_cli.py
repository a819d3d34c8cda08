"""screener users / dnc / outbox commands against a SQLite store."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from screener.alerts.store import SqlStore
from screener.cli import main


def _run(*args: str, env: dict[str, str]) -> Any:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result


def test_users_dnc_and_outbox_commands(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"SCREENER_DATABASE_URL": url, "NURSE_PW": "s3cret-violet-harbour"}
    r = _run(
        "users",
        "add",
        "nina",
        "--role",
        "nurse",
        "--team",
        "renal",
        "--team",
        "stroke",
        "--email",
        "nina@example.org",
        "--password-env",
        "NURSE_PW",
        env=env,
    )
    assert r.exit_code == 0 and "teams renal, stroke" in r.output
    assert _run("users", "add", "x", "--password-env", "UNSET_VAR", env=env).exit_code != 0
    r = _run("users", "list", env=env)
    assert r.output.strip() == "nina\tnurse\trenal,stroke\tnina@example.org"
    token = _run("users", "token", "nina", env=env).output.strip()
    assert len(token) >= 40
    assert _run("users", "team-email", "renal", "renal@example.org", env=env).exit_code == 0

    csv_file = tmp_path / "dnc.csv"
    csv_file.write_text("name,patient_id\nA,P1\nB,P2\nC, P3 \n\n")
    r = _run("dnc", "import", str(csv_file), "--by", "records-office", env=env)
    assert r.exit_code == 0 and "read 3 ids" in r.output and "3 new" in r.output
    plain = tmp_path / "plain.csv"
    plain.write_text("P3\nP4\n")
    assert "1 new" in _run("dnc", "import", str(plain), env=env).output
    assert _run("dnc", "import", str(csv_file), "--column", "nhs", env=env).exit_code != 0
    assert "1 removed" in _run("dnc", "remove", "P1", env=env).output
    assert "1 added" in _run("dnc", "add", "P9", env=env).output
    r = _run("outbox", "send", "--flush", env=env)
    assert r.exit_code == 0 and "sent 0, failed 0" in r.output

    with SqlStore(url) as store:
        assert sorted(store.do_not_contact().to_list()) == ["P2", "P3", "P4", "P9"]
        assert store.authenticate("nina", "s3cret-violet-harbour").teams == {"renal", "stroke"}
        assert store.token_user(token).username == "nina"
        assert store.team_recipients("renal") == ["renal@example.org"]
        sources = {e["source"] for e in store.dnc_entries()}
        assert sources == {"import:dnc.csv", "import:plain.csv", "cli"}


def test_users_disable_enable_remove(tmp_path: Any) -> None:
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    env = {"SCREENER_DATABASE_URL": url, "PW": "a-long-enough-password"}
    assert _run("users", "add", "nina", "--password-env", "PW", env=env).exit_code == 0
    short = _run("users", "add", "rory", "--password-env", "SHORT", env={**env, "SHORT": "pw"})
    assert short.exit_code != 0 and "at least 12 characters" in short.output
    assert "disabled" in _run("users", "disable", "nina", env=env).output
    with SqlStore(url) as store:
        assert store.authenticate("nina", "a-long-enough-password") is None
    assert "enabled" in _run("users", "enable", "nina", env=env).output
    assert _run("users", "remove", "nina", "--yes", env=env).exit_code == 0
    missing = _run("users", "disable", "nina", env=env)
    assert missing.exit_code != 0 and "no user 'nina'" in missing.output


def test_web_refuses_the_default_secret_outside_demo_mode(tmp_path: Any) -> None:
    env = {"SCREENER_DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}"}
    r = _run("web", "--port", "0", env=env)
    assert r.exit_code != 0 and "SCREENER_SECRET_KEY is the shipped default" in r.output


def test_report_finds_the_demos_database_or_names_the_paths_it_tried(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)
    env: dict[str, Any] = {"SCREENER_DATABASE_URL": None, "SCREENER_CONFIG": None}
    r = CliRunner().invoke(main, ["report"], env=env)
    assert r.exit_code != 0
    assert (
        str(tmp_path / ".screener" / "screener.db") in r.output
        and str(tmp_path / "screener-demo" / "screener.db") in r.output
    )
    assert "sqlalchemy" not in r.output.lower()
    with SqlStore(f"sqlite:///{tmp_path / 'screener-demo' / 'screener.db'}"):
        pass
    r = CliRunner().invoke(main, ["report", "--out", "r.html"], env=env)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "r.html").exists() and not (tmp_path / ".screener").exists()
    missing = CliRunner().invoke(main, ["report", "--database-url", "sqlite:///nowhere/x.db"], env=env)
    assert missing.exit_code != 0 and str(tmp_path / "nowhere" / "x.db") in missing.output


def test_db_current_and_downgrade_for_a_rollback(tmp_path: Any) -> None:
    env = {"SCREENER_DATABASE_URL": f"sqlite:///{tmp_path / 'db.db'}"}
    assert _run("db", "current", env=env).output.strip() == "0003"
    r = _run("db", "downgrade", "0002", env=env)
    assert r.exit_code == 0 and "now at 0002" in r.output
    with SqlStore(env["SCREENER_DATABASE_URL"]):  # this release opens it and migrates it up again
        pass
    assert _run("db", "current", env=env).output.strip() == "0003"
