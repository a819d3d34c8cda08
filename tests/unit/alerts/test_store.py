"""SqlStore: the MatchStore contract, alert-fatigue policies, visibility, do-not-contact, audit and outbox."""

from __future__ import annotations

import json
import threading
from datetime import date, timedelta
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa
from prometheus_client import CollectorRegistry

from screener.alerts import schema
from screener.alerts.base import MatchStore
from screener.alerts.store import InvalidAction, SqlStore
from screener.metrics import Metrics


@pytest.fixture
def synced(store: SqlStore, make_study: Any) -> SqlStore:
    store.sync_studies([make_study("CKD-1", team="renal"), make_study("RESP-1", team="respiratory")])
    return store


@pytest.fixture
def nurse(synced: SqlStore) -> Any:
    return synced.add_user("nina", "violet-harbour-17", "nurse", ["renal"], email="nina@example.org")


def test_store_satisfies_the_protocol(store: SqlStore) -> None:
    assert isinstance(store, MatchStore)


def test_record_matches_returns_only_new_rows_and_stores_one_per_study_and_patient(
    synced: SqlStore, make_frame: Any
) -> None:
    first = make_frame([{"study_id": "CKD-1", "patient_id": "P1"}, {"study_id": "CKD-1", "patient_id": "P2"}])
    new = synced.record_matches(first)
    assert new.columns == first.columns
    assert sorted(new["patient_id"].to_list()) == ["P1", "P2"]
    again = make_frame(
        [
            {"study_id": "CKD-1", "patient_id": "P1"},
            {"study_id": "RESP-1", "patient_id": "P1"},
            {"study_id": "RESP-1", "patient_id": "P1"},
        ]
    )
    new = synced.record_matches(again)
    assert new.select("study_id", "patient_id").rows() == [("RESP-1", "P1")]
    with synced.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.matches)).scalar() == 3
    assert synced.record_matches(again).height == 0
    assert synced.record_matches(first.clear()).height == 0


def test_changed_outcome_or_rule_hash_updates_in_place_without_a_second_alert(
    synced: SqlStore, nurse: Any, make_frame: Any, crit: Any
) -> None:
    synced.record_matches(
        make_frame(
            [{"study_id": "CKD-1", "patient_id": "P1", "outcome": "possible", "criteria": crit(adult=True, egfr=None)}]
        )
    )
    token = synced.worklist(nurse)[0]["token"]
    new = synced.record_matches(
        make_frame(
            [
                {
                    "study_id": "CKD-1",
                    "patient_id": "P1",
                    "outcome": "eligible",
                    "rule_hash": "h2",
                    "criteria": crit(adult=True, egfr=True),
                }
            ]
        )
    )
    assert new.height == 0
    m = synced.get_match(nurse, token)
    assert (m["outcome"], m["rule_hash"]) == ("eligible", "h2")
    assert [c["to_verify"] for c in m["criteria"]] == [False, False]
    assert synced.outbox_counts()[("webhook", "pending")] == 1  # still one notification


def test_ineligible_rows_are_not_inserted_but_update_existing_matches(
    synced: SqlStore, nurse: Any, make_frame: Any
) -> None:
    assert (
        synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P9", "outcome": "ineligible"}])).height
        == 0
    )
    synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1", "outcome": "ineligible"}]))
    assert synced.worklist(nurse) == []
    closed = synced.worklist(nurse, view="closed")
    assert [r["outcome"] for r in closed] == ["ineligible"]


@pytest.mark.parametrize(
    ("rule_hash", "outcome", "results", "reopens"),
    [
        ("h1", "possible", {"adult": True, "egfr": None}, False),  # rule unchanged: stays dismissed
        ("h2", "eligible", {"adult": True, "egfr": True}, False),  # rule changed, result not material
        ("h2", "possible", {"adult": True, "egfr": None}, True),  # rule changed and outcome changed
        ("h2", "eligible", {"adult": True, "egfr": True, "x_new": False}, True),  # a criterion was added
    ],
)
def test_a_dismissed_match_stays_dismissed_unless_the_rule_changes_materially(
    synced: SqlStore,
    nurse: Any,
    make_frame: Any,
    crit: Any,
    rule_hash: str,
    outcome: str,
    results: dict[str, Any],
    reopens: bool,
) -> None:
    synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    token = synced.worklist(nurse)[0]["token"]
    synced.record_action(nurse, token, "not_eligible", reason="criterion_not_met")
    assert synced.worklist(nurse) == []
    new = synced.record_matches(
        make_frame(
            [
                {
                    "study_id": "CKD-1",
                    "patient_id": "P1",
                    "rule_hash": rule_hash,
                    "outcome": outcome,
                    "criteria": crit(**results),
                }
            ]
        )
    )
    assert new.height == 0  # never a second alert
    rows = synced.worklist(nurse)
    if reopens:
        assert [r["token"] for r in rows] == [token]
        assert rows[0]["stage"] == "new" and rows[0]["reopened_at"] is not None
        assert any(e["action"] == "reopen" for e in synced.audit_entries())
    else:
        assert rows == []
        assert synced.get_match(nurse, token)["stage"] == "not_eligible"


def test_record_matches_is_atomic(synced: SqlStore, make_frame: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_a: Any, **_k: Any) -> None:
        raise sa.exc.OperationalError("INSERT INTO outbox", {}, Exception("disk full"))

    monkeypatch.setattr(synced, "_enqueue", boom)
    from screener.errors import DeliveryError

    with pytest.raises(DeliveryError):
        synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    with synced.engine.connect() as conn:
        assert conn.execute(sa.select(sa.func.count()).select_from(schema.matches)).scalar() == 0
    monkeypatch.undo()
    assert synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}])).height == 1


def test_do_not_contact_hides_existing_matches_and_blocks_new_ones(
    synced: SqlStore, nurse: Any, make_frame: Any
) -> None:
    synced.record_matches(
        make_frame([{"study_id": "CKD-1", "patient_id": "P1"}, {"study_id": "CKD-1", "patient_id": "P2"}])
    )
    token = {r["patient_id"]: r["token"] for r in synced.worklist(nurse)}["P1"]
    assert synced.dnc_add(["P1", " P1 ", "P3"], by="admin", source="csv") == 2
    assert synced.dnc_add(["P1"], by="admin") == 0
    dnc = synced.do_not_contact()
    assert dnc.dtype == pl.String and sorted(dnc.to_list()) == ["P1", "P3"]
    assert [r["patient_id"] for r in synced.worklist(nurse, view="all")] == ["P2"]
    assert synced.get_match(nurse, token) is None
    assert synced.record_action(nurse, token, "reviewed") is None
    assert synced.record_matches(make_frame([{"study_id": "RESP-1", "patient_id": "P3"}])).height == 0
    assert synced.dnc_remove(["P1"], by="admin") == 1
    assert synced.get_match(nurse, token) is not None


def test_team_membership_decides_visibility(synced: SqlStore, nurse: Any, make_frame: Any) -> None:
    synced.record_matches(
        make_frame([{"study_id": "CKD-1", "patient_id": "P1"}, {"study_id": "RESP-1", "patient_id": "P2"}])
    )
    resp = synced.add_user("rory", "amber-lantern-42", "nurse", ["respiratory"])
    admin = synced.add_user("ada", "copper-meadow-93", "admin", [])
    mine = synced.worklist(nurse)
    theirs = synced.worklist(resp)
    assert [r["study_id"] for r in mine] == ["CKD-1"] and [r["study_id"] for r in theirs] == ["RESP-1"]
    assert synced.get_match(resp, mine[0]["token"]) is None
    assert synced.record_action(resp, mine[0]["token"], "reviewed") is None
    assert {r["study_id"] for r in synced.worklist(admin)} == {"CKD-1", "RESP-1"}
    assert [s["id"] for s in synced.studies(user=resp)] == ["RESP-1"]


def test_worklist_orders_by_urgency_then_newest_and_filters(
    store: SqlStore, make_study: Any, make_frame: Any, clock: Any
) -> None:
    today = clock().date()
    store.sync_studies(
        [
            make_study("SLOW", horizon=timedelta(days=365)),
            make_study("ACUTE", horizon=timedelta(hours=6)),
            make_study("CLOSING", closes=today + timedelta(days=10)),
            make_study("ALLHIST", horizon=None),
        ]
    )
    user = store.add_user("n", "silver-orchard-58", "nurse", ["renal"])
    t0 = clock()
    store.record_matches(
        make_frame(
            [
                {"study_id": "SLOW", "patient_id": "A", "matched_at": t0 - timedelta(hours=1)},
                {"study_id": "SLOW", "patient_id": "B", "matched_at": t0, "setting": "hospital", "outcome": "possible"},
                {"study_id": "ACUTE", "patient_id": "C", "matched_at": t0 - timedelta(days=2)},
                {"study_id": "CLOSING", "patient_id": "D", "matched_at": t0 - timedelta(days=3)},
                {"study_id": "ALLHIST", "patient_id": "E", "matched_at": t0 - timedelta(minutes=5)},
            ]
        )
    )
    rows = store.worklist(user)
    assert [r["patient_id"] for r in rows] == ["C", "D", "B", "E", "A"]
    assert [r["urgency"] for r in rows] == [0, 1, 2, 2, 2]
    assert [r["patient_id"] for r in store.worklist(user, study="SLOW")] == ["B", "A"]
    assert [r["patient_id"] for r in store.worklist(user, setting="hospital")] == ["B"]
    assert [r["patient_id"] for r in store.worklist(user, outcome="possible")] == ["B"]
    with pytest.raises(ValueError, match="unknown view"):
        store.worklist(user, view="everything")


def test_actions_move_the_funnel_and_are_validated(synced: SqlStore, nurse: Any, make_frame: Any) -> None:
    registry = CollectorRegistry()
    synced.metrics = Metrics(registry=registry)
    synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    token = synced.worklist(nurse)[0]["token"]
    for bad in [
        ("maybe", {}),
        ("not_eligible", {}),
        ("declined", {"reason": "criterion_not_met"}),
        ("reviewed", {"reason": "other"}),
        ("snoozed", {}),
        ("snoozed", {"until": synced.clock().date()}),
        ("approached", {"until": date(2030, 1, 1)}),
    ]:
        with pytest.raises(InvalidAction):
            synced.record_action(nurse, token, bad[0], **bad[1])
    for action in ("reviewed", "approached", "consented", "enrolled"):
        m = synced.record_action(nurse, token, action, note="  spoke on ward 3 ")
        assert m["stage"] == action
    assert [a["action"] for a in m["history"]] == ["reviewed", "approached", "consented", "enrolled"]
    assert m["history"][0]["note"] == "spoke on ward 3" and m["history"][0]["username"] == "nina"
    assert synced.worklist(nurse) == [] and len(synced.worklist(nurse, view="closed")) == 1
    labels = {"study": "CKD-1", "setting": "community", "stage": "enrolled"}
    assert registry.get_sample_value("screener_funnel_actions_total", labels) == 1.0
    audited = [e for e in synced.audit_entries() if e["action"] == "action"]
    assert len(audited) == 4 and all(e["username"] == "nina" for e in audited)
    assert all("P1" not in (e["detail"] or "") for e in synced.audit_entries())


def test_a_snoozed_match_comes_back_on_its_date(synced: SqlStore, nurse: Any, make_frame: Any, clock: Any) -> None:
    synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    token = synced.worklist(nurse)[0]["token"]
    until = clock().date() + timedelta(days=3)
    synced.record_action(nurse, token, "snoozed", until=until)
    assert synced.worklist(nurse) == []
    assert [r["token"] for r in synced.worklist(nurse, view="snoozed")] == [token]
    clock.advance(days=2)
    assert synced.worklist(nurse) == []
    clock.advance(days=1)
    rows = synced.worklist(nurse)
    assert [r["token"] for r in rows] == [token] and rows[0]["snooze_ended"]
    synced.record_action(nurse, token, "reviewed")
    assert synced.get_match(nurse, token)["snoozed_until"] is None


def test_sync_studies_upserts_and_tolerates_a_failing_markdown_renderer(
    store: SqlStore, make_study: Any, clock: Any
) -> None:
    def broken() -> str:
        raise RuntimeError("renderer not ready")

    store.sync_studies(
        [
            make_study("A", opens=date(2026, 7, 1)),
            make_study("B", render_markdown=broken),
            make_study("C", closes=date(2026, 5, 1)),
        ]
    )
    store.sync_studies(
        [
            make_study("A", title="Renamed", opens=date(2026, 1, 1)),
            make_study("B", render_markdown=broken),
            make_study("C", closes=date(2026, 5, 1)),
        ]
    )
    got = {s["id"]: s for s in store.studies()}
    assert got["A"]["title"] == "Renamed" and got["B"]["criteria_markdown"] is None
    assert got["A"]["settings"] == ["community", "hospital"] and got["A"]["horizon_s"] == 180 * 86400
    assert [s["id"] for s in store.studies(open_on=clock().date())] == ["A", "B"]


def test_outbox_rows_carry_study_team_and_count_never_a_patient(synced: SqlStore, make_frame: Any) -> None:
    synced.record_matches(
        make_frame(
            [{"study_id": "CKD-1", "patient_id": f"P{i}"} for i in range(3)]
            + [{"study_id": "RESP-1", "patient_id": "P0"}]
        )
    )
    due = synced.outbox_due("email", synced.clock())
    assert [(r["study_id"], r["team"], r["count"]) for r in due] == [
        ("CKD-1", "renal", 3),
        ("RESP-1", "respiratory", 1),
    ]
    assert due[0]["title"] == "Study CKD-1"
    assert not any("P0" in json.dumps(r, default=str) for r in due)
    assert len(synced.outbox_due("webhook", synced.clock())) == 2


def test_production_passwords_cost_what_argon2_cffi_recommends(cheap_password_hashing: Any) -> None:
    """The tests hash at argon2's cheapest parameters (tests/conftest.py); production keeps argon2-cffi's defaults
    (RFC 9106's low-memory recommendation: argon2id, 3 passes over 64 MiB, 4 lanes)."""
    from argon2 import PasswordHasher, Type

    production, default = cheap_password_hashing, PasswordHasher()
    assert production.type == Type.ID
    assert (production.time_cost, production.memory_cost, production.parallelism) == (3, 65536, 4)
    assert (production.time_cost, production.memory_cost, production.parallelism, production.hash_len) == (
        default.time_cost,
        default.memory_cost,
        default.parallelism,
        default.hash_len,
    )


def test_users_sessions_and_tokens(store: SqlStore, clock: Any) -> None:
    u = store.add_user("nina", "correct horse", "coordinator", ["renal", "renal", "resp"], email="n@x.org")
    assert u.teams == {"renal", "resp"}
    with store.engine.connect() as conn:
        stored = conn.execute(sa.select(schema.users.c.password_hash)).scalar()
    assert stored.startswith("$argon2id$") and "correct horse" not in stored
    assert store.authenticate("nina", "wrong") is None and store.authenticate("nobody", "x") is None
    assert store.authenticate("nina", "correct horse").teams == {"renal", "resp"}
    with pytest.raises(ValueError, match="unknown role"):
        store.add_user("x", "silver-orchard-58", "superuser")
    token, csrf = store.create_session(u, ttl=timedelta(hours=1))
    user, got_csrf = store.session_user(token)
    assert user.username == "nina" and got_csrf == csrf
    clock.advance(hours=2)
    assert store.session_user(token) is None
    api = store.create_api_token("nina")
    assert store.token_user(api).username == "nina" and store.token_user("forged") is None
    assert store.team_recipients("renal") == ["n@x.org"]
    store.set_team_email("renal", "renal-research@example.org")
    assert store.team_recipients("renal") == ["renal-research@example.org"]


def test_audit_log_and_actions_are_append_only(synced: SqlStore) -> None:
    synced.audit("nina", "view_worklist")
    for stmt in (schema.audit_log.update().values(username="mallory"), schema.audit_log.delete()):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"), synced.engine.begin() as conn:
            conn.execute(stmt)
    assert synced.audit_entries()[0]["username"] == "nina"


def test_migrations_create_exactly_the_schema_module(store: SqlStore) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), schema.metadata)
    assert diff == []


def test_reopening_an_existing_database_is_a_no_op(store_url: str, make_frame: Any, make_study: Any) -> None:
    with SqlStore(store_url) as a:
        a.sync_studies([make_study("CKD-1")])
        a.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    with SqlStore(store_url) as b:
        assert b.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}])).height == 0


def test_concurrent_writers_insert_each_match_once(store_url: str, make_frame: Any, make_study: Any) -> None:
    with SqlStore(store_url) as s:
        s.sync_studies([make_study("CKD-1")])
        frame = make_frame([{"study_id": "CKD-1", "patient_id": f"P{i}"} for i in range(200)])
        results: list[int] = []
        errors: list[BaseException] = []

        def write() -> None:
            try:
                results.append(s.record_matches(frame).height)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=write) for _ in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(60)
        assert errors == []
        assert sum(results) == 200


def test_a_study_whose_rule_file_was_removed_leaves_the_public_list_but_keeps_its_matches(
    synced: SqlStore, nurse: Any, make_study: Any, make_frame: Any
) -> None:
    synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
    synced.sync_studies([make_study("RESP-1", team="respiratory")])
    assert [s["id"] for s in synced.studies()] == ["RESP-1"]
    assert [r["study_id"] for r in synced.worklist(nurse)] == ["CKD-1"]
    synced.sync_studies([])  # an empty set is a mistake, not "every study was removed"
    assert [s["id"] for s in synced.studies()] == ["RESP-1"]
    synced.sync_studies([make_study("CKD-1"), make_study("RESP-1", team="respiratory")])
    assert [s["id"] for s in synced.studies()] == ["CKD-1", "RESP-1"]


def test_funnel_failed_logins_and_register_listing(synced: SqlStore, nurse: Any, make_frame: Any, clock: Any) -> None:
    synced.record_matches(
        make_frame(
            [{"study_id": "CKD-1", "patient_id": f"P{i}"} for i in range(3)]
            + [{"study_id": "RESP-1", "patient_id": "P0"}]
        )
    )
    token = synced.worklist(nurse)[0]["token"]
    synced.record_action(nurse, token, "approached")
    assert synced.funnel(nurse) == [
        {"study_id": "CKD-1", "stage": "approached", "n": 1},
        {"study_id": "CKD-1", "stage": "new", "n": 2},
    ]
    for _ in range(3):
        synced.audit("nina", "login_failed")
    clock.advance(minutes=20)
    synced.audit("nina", "login_failed")
    assert synced.failed_logins("nina", timedelta(minutes=15)) == 1
    assert synced.failed_logins("nina", timedelta(hours=1)) == 4
    synced.dnc_add(["P7"], by="ada", source="csv")
    assert [(e["patient_id"], e["added_by"], e["source"]) for e in synced.dnc_entries()] == [("P7", "ada", "csv")]
    assert [u.username for u in synced.users()] == ["nina"]


def test_unpublished_matches_until_marked_settled_and_never_do_not_contact(
    synced: SqlStore, make_frame: Any, clock: Any
) -> None:
    synced.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": p} for p in ("P1", "P2", "P3")]))
    unpublished = synced.unpublished_matches()
    assert unpublished.select("study_id", "patient_id").rows() == [("CKD-1", "P1"), ("CKD-1", "P2"), ("CKD-1", "P3")]
    assert set(unpublished.columns) == {
        "study_id",
        "patient_id",
        "outcome",
        "rule_hash",
        "criteria",
        "matched_at",
        "setting",
    }
    # Rows written at or after the settle point may be another engine's, still in flight.
    assert synced.unpublished_matches(settled_before=clock.now).height == 0
    assert synced.unpublished_matches(settled_before=clock.now + timedelta(seconds=1)).height == 3
    synced.mark_published([("CKD-1", "P1")])
    synced.dnc_add(["P3"], by="admin")
    assert synced.unpublished_matches()["patient_id"].to_list() == ["P2"]
    assert synced.unpublished_matches(limit=0).height == 0


def test_upgrading_counts_earlier_matches_as_published(store_url: str, make_frame: Any, make_study: Any) -> None:
    from pathlib import Path

    from alembic import command
    from alembic.config import Config

    import screener.alerts.store as store_module

    with SqlStore(store_url) as s:
        s.sync_studies([make_study("CKD-1")])
        s.record_matches(make_frame([{"study_id": "CKD-1", "patient_id": "P1"}]))
        assert s.unpublished_matches().height == 1
        cfg = Config()
        cfg.set_main_option("script_location", str(Path(store_module.__file__).with_name("migrations")))
        with s.engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.downgrade(cfg, "0001")
    with SqlStore(store_url) as s:  # opening migrates to head again
        assert s.unpublished_matches().height == 0


def test_a_new_sqlite_connection_retries_a_transient_lock_while_setting_wal(tmp_path: Any) -> None:
    """SQLite can answer 'database is locked' to the journal-mode pragma without waiting on the busy timeout (while
    another process checkpoints or recovers the WAL index): a second engine starting next to a busy one exited on
    it. The connection now retries; any other error, or a lock that outlasts the timeout, still raises."""
    import sqlite3

    from screener.alerts.store import _sqlite_pragmas

    class FlakyCursor(sqlite3.Cursor):
        locks = 3

        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("PRAGMA journal_mode") and FlakyCursor.locks:
                FlakyCursor.locks -= 1
                raise sqlite3.OperationalError("database is locked")
            return super().execute(sql, *args)

    class Flaky(sqlite3.Connection):
        def cursor(self, factory: Any = FlakyCursor) -> Any:  # type: ignore[override]
            return super().cursor(factory)

    path = tmp_path / "w.db"
    engine = sa.create_engine(
        "sqlite://", creator=lambda: sqlite3.connect(path, factory=Flaky, check_same_thread=False)
    )
    _sqlite_pragmas(engine)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
    assert FlakyCursor.locks == 0

    class Broken(sqlite3.Cursor):
        def execute(self, sql: str, *args: Any) -> Any:
            if sql.startswith("PRAGMA journal_mode"):
                raise sqlite3.OperationalError("disk I/O error")
            return super().execute(sql, *args)

    class BrokenConnection(sqlite3.Connection):
        def cursor(self, factory: Any = Broken) -> Any:  # type: ignore[override]
            return super().cursor(factory)

    broken = sa.create_engine(
        "sqlite://",
        creator=lambda: sqlite3.connect(tmp_path / "b.db", factory=BrokenConnection, check_same_thread=False),
    )
    _sqlite_pragmas(broken)
    with pytest.raises(sa.exc.OperationalError, match="disk I/O error"):
        broken.connect()
