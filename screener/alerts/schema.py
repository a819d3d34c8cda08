"""The worklist database schema (SQLAlchemy Core). Migrations in ``migrations/`` create exactly this.

Tables, one job each:

- ``studies``: metadata from rule files (upserted by :meth:`SqlStore.sync_studies`), with the plain-English
  criteria for the public open-studies page.
- ``matches``: one row per (study, patient), ever. ``token`` is the opaque random id used in URLs and the API;
  the patient id never leaves the database except on the match page shown to a logged-in team member.
- ``actions``: the recruitment funnel, one row per nurse action (append-only).
- ``users``, ``teams``, ``memberships``: who may see which study's matches (a study belongs to one team).
- ``sessions``, ``api_tokens``: server-side login sessions and bearer tokens, stored as SHA-256 hashes.
- ``do_not_contact``: the register the engine honours and the worklist hides.
- ``audit_log``: append-only record of every view and action (who, when, what).
- ``outbox``: outbound notifications (webhook, email digest) written in the same transaction as the matches
  they announce, so a failed delivery never loses one. Rows carry a study and a count, never a patient.

All timestamps are UTC. SQLite returns them naive; :func:`screener.alerts.store._utc` normalises on read.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from screener.vocab import NEW_STAGE

__all__ = [
    "actions",
    "api_tokens",
    "audit_log",
    "do_not_contact",
    "matches",
    "memberships",
    "metadata",
    "outbox",
    "sessions",
    "studies",
    "teams",
    "users",
]

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

studies = Table(
    "studies",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("title", Text, nullable=False),
    Column("summary", Text, nullable=False, default=""),
    Column("team", String(128), nullable=False),
    Column("sponsor", String(32), nullable=True),
    Column("portfolio", Boolean, nullable=False, default=False),
    Column("target", Integer, nullable=True),
    Column("opens", Date, nullable=True),
    Column("closes", Date, nullable=True),
    Column("settings", Text, nullable=False, default="[]"),  # JSON list
    #: Longest criterion window in seconds; null when some criterion needs all history.
    Column("horizon_s", Float, nullable=True),
    Column("content_hash", String(64), nullable=True),
    Column("criteria_markdown", Text, nullable=True),
    Column("active", Boolean, nullable=False, default=True),  # present in the last sync
    #: What the public page and the match page show (rule-file metadata, all optional).
    Column("lay_summary", Text, nullable=True),
    Column("contacts", Text, nullable=True),  # JSON list of {name, role, email, phone}
    Column("protocol_url", Text, nullable=True),
    Column("pis_url", Text, nullable=True),
    Column("sites", Text, nullable=True),  # JSON list of site names
    #: JSON list of {group: include|exclude, label}: the criteria in plain words, for patients.
    Column("criteria_plain", Text, nullable=True),
    #: ``immediate`` (alerted on the next delivery pass, and to the pager webhook) or ``digest``.
    Column("alert", String(16), nullable=False, default="digest", server_default="digest"),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

matches = Table(
    "matches",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("token", String(32), nullable=False, unique=True),
    Column("study_id", String(64), nullable=False),
    Column("patient_id", String(128), nullable=False),
    Column("outcome", String(16), nullable=False),
    Column("criteria", Text, nullable=False),  # JSON list of {name, group, result, evidence}
    Column("rule_hash", String(64), nullable=False),
    Column("matched_at", DateTime(timezone=True), nullable=False),
    Column("event_time", DateTime(timezone=True), nullable=True),
    Column("setting", String(32), nullable=True),
    Column("imd_decile", Integer, nullable=True),
    Column("ethnic_group", String(16), nullable=True),
    #: Worklist stage, one of screener.vocab.STAGES (new | reviewed | approached | consented | enrolled |
    #: not_eligible | declined).
    Column("stage", String(16), nullable=False, default=NEW_STAGE),
    Column("reason", String(64), nullable=True),  # coded reason of the dismissing action
    Column("snoozed_until", Date, nullable=True),
    Column("reopened_at", DateTime(timezone=True), nullable=True),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    #: When the broker acknowledged the match on ``screening.matches``; null until then (the engine's sweep
    #: publishes what a crash left unpublished).
    Column("published_at", DateTime(timezone=True), nullable=True),
    #: Ward/bed/clinic of the patient's latest visit, as the engine last passed it.
    Column("location", String(64), nullable=True),
    #: The outcome before the engine's last change of it (``possible`` for an upgrade).
    Column("previous_outcome", String(16), nullable=True),
    #: When the engine last changed the outcome or the evidence (the page's "changed since you last looked").
    Column("changed_at", DateTime(timezone=True), nullable=True),
    #: When a later screen found the patient no longer eligible (outcome ``ineligible``); null while it holds.
    Column("closed_at", DateTime(timezone=True), nullable=True),
    #: When the match went from possible to eligible.
    Column("upgraded_at", DateTime(timezone=True), nullable=True),
    UniqueConstraint("study_id", "patient_id"),
    Index(None, "study_id", "stage"),
    Index(None, "patient_id"),
    Index("ix_matches_published_at", "published_at"),
)

teams = Table(
    "teams",
    metadata,
    Column("name", String(128), primary_key=True),
    #: Shared mailbox for the team's digest; members' own addresses are used when empty.
    Column("email", String(256), nullable=True),
)

users = Table(
    "users",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("username", String(128), nullable=False, unique=True),
    Column("password_hash", Text, nullable=False),
    Column("role", String(16), nullable=False),  # nurse | coordinator | admin
    Column("email", String(256), nullable=True),
    Column("active", Boolean, nullable=False, default=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

memberships = Table(
    "memberships",
    metadata,
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("team", String(128), ForeignKey("teams.name", ondelete="CASCADE"), primary_key=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("csrf_token", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("expires_at", DateTime(timezone=True), nullable=False),
)

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("user_id", Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
    Column("name", String(128), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

actions = Table(
    "actions",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("match_id", Integer, ForeignKey("matches.id", ondelete="CASCADE"), nullable=False),
    Column("action", String(16), nullable=False),
    Column("reason", String(64), nullable=True),
    Column("until", Date, nullable=True),
    Column("note", Text, nullable=True),
    Column("username", String(128), nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
    Index(None, "match_id"),
)

do_not_contact = Table(
    "do_not_contact",
    metadata,
    Column("patient_id", String(128), primary_key=True),
    Column("added_at", DateTime(timezone=True), nullable=False),
    Column("added_by", String(128), nullable=False),
    Column("source", String(64), nullable=True),
)

audit_log = Table(
    "audit_log",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("at", DateTime(timezone=True), nullable=False),
    Column("username", String(128), nullable=False),
    Column("action", String(32), nullable=False),  # view_worklist | view_match | action | dnc_add | login ...
    Column("object_type", String(32), nullable=True),
    Column("object_id", String(128), nullable=True),
    Column("detail", Text, nullable=True),  # JSON
    Index(None, "at"),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("channel", String(16), nullable=False),  # webhook | email
    Column("team", String(128), nullable=False),
    Column("study_id", String(64), nullable=False),
    Column("count", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("status", String(16), nullable=False, default="pending"),  # pending | sent | no_recipient
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_at", DateTime(timezone=True), nullable=False),
    Column("last_error", Text, nullable=True),
    Column("sent_at", DateTime(timezone=True), nullable=True),
    Index(None, "channel", "status", "next_attempt_at"),
)
