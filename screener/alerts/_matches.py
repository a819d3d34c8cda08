"""The ``matches`` table as the engine writes it: idempotent recording, publishing marks."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from screener.alerts import auth
from screener.alerts import schema as t
from screener.alerts._common import _CHUNK, StoreBase, _utc, materially_changed
from screener.alerts._follow import followed
from screener.alerts.base import MATCH_COLUMNS
from screener.errors import DeliveryError
from screener.vocab import DISMISSED_STAGES, INELIGIBLE, NEW_STAGE

#: What the recording step reads of a stored match to decide how a new screen changes it.
_OLD_COLUMNS = (
    "id",
    "token",
    "study_id",
    "patient_id",
    "outcome",
    "rule_hash",
    "criteria",
    "stage",
    "setting",
    "imd_decile",
    "ethnic_group",
    "location",
    "previous_outcome",
    "changed_at",
    "closed_at",
    "upgraded_at",
)
_OLD_COLUMNS_SQL = tuple(f"m.{c}" for c in _OLD_COLUMNS)


class MatchesPart(StoreBase):
    # --- MatchStore ----------------------------------------------------------------------------------------
    def record_matches(self, matches: pl.DataFrame) -> pl.DataFrame:
        """Insert matches idempotently: one row per (study_id, patient_id), ever. See the module docstring.

        Returns the rows of ``matches`` that were new (the ones to alert on), with the input's columns. Rows for
        patients on the do-not-contact register and new rows whose outcome is ``ineligible`` are not stored; an
        ``ineligible`` row for an existing match closes it as no longer eligible, and possible -> eligible is an
        upgrade (:mod:`screener.alerts._follow`). An optional ``location`` column is stored with the match.
        Atomic: if it raises (:class:`DeliveryError`), nothing was written.
        """
        if matches.height == 0:
            return matches.clear()
        missing = [c for c in ("study_id", "patient_id", "outcome", "rule_hash") if c not in matches.columns]
        if missing:
            raise ValueError(f"record_matches: missing column(s) {missing}; expected {list(MATCH_COLUMNS)}")
        frame = matches.unique(subset=["study_id", "patient_id"], keep="last", maintain_order=True)
        now = self.clock()
        try:
            with self.engine.begin() as conn:
                new_keys = self._record(conn, frame, now)
        except sa.exc.SQLAlchemyError as exc:
            raise DeliveryError(f"cannot record matches: {exc}", channel="store") from exc
        if not new_keys:
            return matches.clear()
        keys = pl.DataFrame(list(new_keys), schema={"study_id": pl.String, "patient_id": pl.String}, orient="row")
        return frame.join(keys, on=["study_id", "patient_id"], how="semi", maintain_order="left")

    def _record(self, conn: Connection, frame: pl.DataFrame, now: datetime) -> set[tuple[str, str]]:
        dnc = self._dnc_ids(conn)
        rows = [_match_row(r, now) for r in frame.to_dicts()]
        rows = [r for r in rows if r["patient_id"] not in dnc]
        existing = self._existing(conn, rows)
        inserts = [r for r in rows if (r["study_id"], r["patient_id"]) not in existing and r["outcome"] != INELIGIBLE]
        new_keys: set[tuple[str, str]] = set()
        if inserts:
            for r in inserts:
                r["token"] = auth.new_token(16)
            new_keys = self._insert_new(conn, inserts)
        updates, reopened, events = [], [], []
        for r in rows:
            old = existing.get((r["study_id"], r["patient_id"]))
            if old is None:
                continue
            values, followed_event = followed(old, r, now)
            if values is None:
                continue
            reopen = (
                old["stage"] in DISMISSED_STAGES
                and r["outcome"] != INELIGIBLE
                and old["rule_hash"] != r["rule_hash"]
                and materially_changed(old["outcome"], old["criteria"], r["outcome"], r["criteria"])
            )
            updates.append({"b_id": old["id"], **values})
            if reopen:
                reopened.append(old)
            if followed_event is not None:
                events.append((old, followed_event, r["outcome"]))
        if updates:
            conn.execute(
                t.matches.update()
                .where(t.matches.c.id == sa.bindparam("b_id"))
                .values(**{k: sa.bindparam(k) for k in updates[0] if k != "b_id"}),
                updates,
            )
        for old, what, outcome in events:
            detail = {"study": old["study_id"], "from": old["outcome"], "to": outcome}
            self._audit(conn, "system", what, "match", old["token"], detail)
        for old in reopened:
            conn.execute(
                t.matches.update()
                .where(t.matches.c.id == old["id"])
                .values(stage=NEW_STAGE, reason=None, snoozed_until=None, reopened_at=now)
            )
            self._audit(
                conn,
                "system",
                "reopen",
                "match",
                old["token"],
                {"study": old["study_id"], "was": old["stage"], "why": "rule file changed materially"},
            )
        if new_keys:
            self._enqueue(conn, [r for r in inserts if (r["study_id"], r["patient_id"]) in new_keys], now)
        return new_keys

    def _existing(self, conn: Connection, rows: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        by_study: dict[str, list[str]] = {}
        for r in rows:
            by_study.setdefault(r["study_id"], []).append(r["patient_id"])
        m = t.matches.c
        found: dict[tuple[str, str], dict[str, Any]] = {}
        if conn.dialect.name == "postgresql" and rows:
            # One round trip: join against the keys as arrays (an IN list per chunk costs ~30 ms a query).
            keys = sa.text(
                f"SELECT {', '.join(_OLD_COLUMNS_SQL)} "
                "FROM matches m JOIN unnest(CAST(:s AS text[]), CAST(:p AS text[])) AS k(study_id, patient_id) "
                "ON m.study_id = k.study_id AND m.patient_id = k.patient_id"
            )
            result = conn.execute(keys, {"s": [r["study_id"] for r in rows], "p": [r["patient_id"] for r in rows]})
            return {(row["study_id"], row["patient_id"]): dict(row) for row in result.mappings()}
        for study_id, pids in by_study.items():
            for i in range(0, len(pids), _CHUNK):
                q = sa.select(*(m[c] for c in _OLD_COLUMNS))
                q = q.where(m.study_id == study_id, m.patient_id.in_(pids[i : i + _CHUNK]))
                for row in conn.execute(q).mappings():
                    found[(row["study_id"], row["patient_id"])] = dict(row)
        return found

    def _insert_new(self, conn: Connection, inserts: list[dict[str, Any]]) -> set[tuple[str, str]]:
        """Insert, skipping keys another writer inserted meanwhile; return the keys this call inserted."""
        dialect = conn.dialect.name
        if dialect in ("sqlite", "postgresql"):
            from sqlalchemy.dialects import postgresql, sqlite

            dialect_insert: Any = sqlite.insert if dialect == "sqlite" else postgresql.insert
            stmt = dialect_insert(t.matches).on_conflict_do_nothing(index_elements=["study_id", "patient_id"])
            keys: set[tuple[str, str]] = set()
            for i in range(0, len(inserts), _CHUNK):
                result = conn.execute(
                    stmt.returning(t.matches.c.study_id, t.matches.c.patient_id), inserts[i : i + _CHUNK]
                )
                keys.update((row[0], row[1]) for row in result)
            return keys
        conn.execute(t.matches.insert(), inserts)
        return {(r["study_id"], r["patient_id"]) for r in inserts}

    def unpublished_matches(self, settled_before: datetime | None = None, limit: int = 10_000) -> pl.DataFrame:
        """Stored matches not yet acknowledged on ``screening.matches`` (oldest first, at most ``limit``): the
        publisher's columns (``study_id, patient_id, outcome, rule_hash, criteria, matched_at, setting``).
        Only rows last written before ``settled_before`` when given (a live engine's own matches are still in
        flight), and none of a patient on the do-not-contact register."""
        m = t.matches.c
        q = (
            sa.select(m.study_id, m.patient_id, m.outcome, m.rule_hash, m.criteria, m.matched_at, m.setting)
            .where(m.published_at.is_(None), m.patient_id.not_in(sa.select(t.do_not_contact.c.patient_id)))
            .order_by(m.id)
            .limit(limit)
        )
        if settled_before is not None:
            q = q.where(m.updated_at < settled_before)
        try:
            with self.engine.connect() as conn:
                rows = [dict(r) for r in conn.execute(q).mappings()]
        except sa.exc.SQLAlchemyError as exc:
            raise DeliveryError(f"cannot read unpublished matches: {exc}", channel="store") from exc
        schema: dict[str, pl.DataType] = {
            "study_id": pl.String(),
            "patient_id": pl.String(),
            "outcome": pl.String(),
            "rule_hash": pl.String(),
            "criteria": pl.String(),
            "matched_at": pl.Datetime("us", "UTC"),
            "setting": pl.String(),
        }
        for r in rows:
            r["matched_at"] = _utc(r["matched_at"])
        return pl.DataFrame(rows, schema=schema, orient="row") if rows else pl.DataFrame(schema=schema)

    def mark_published(self, keys: Sequence[tuple[str, str]]) -> None:
        """Record that the broker acknowledged these (study_id, patient_id) matches on ``screening.matches``."""
        if not keys:
            return
        m = t.matches.c
        now = self.clock()
        pairs = list(dict.fromkeys(keys))
        try:
            with self.engine.begin() as conn:
                for i in range(0, len(pairs), _CHUNK):
                    conn.execute(
                        t.matches.update()
                        .where(sa.tuple_(m.study_id, m.patient_id).in_(pairs[i : i + _CHUNK]), m.published_at.is_(None))
                        .values(published_at=now)
                    )
        except sa.exc.SQLAlchemyError as exc:
            raise DeliveryError(f"cannot mark matches published: {exc}", channel="store") from exc


def _match_row(r: dict[str, Any], now: datetime) -> dict[str, Any]:
    criteria = r.get("criteria")
    if criteria is not None and not isinstance(criteria, str):
        criteria = json.dumps(criteria, default=str)
    imd = r.get("imd_decile")
    return {
        "study_id": str(r["study_id"]),
        "patient_id": str(r["patient_id"]),
        "outcome": str(r["outcome"]),
        "criteria": criteria or "[]",
        "rule_hash": str(r["rule_hash"]),
        "matched_at": _utc(r.get("matched_at")) or now,
        "event_time": _utc(r.get("event_time")),
        "setting": r.get("setting"),
        "imd_decile": int(imd) if imd is not None else None,
        "ethnic_group": r.get("ethnic_group"),
        "location": (str(r["location"])[:64] or None) if r.get("location") is not None else None,
        "stage": NEW_STAGE,
        "updated_at": now,
    }
