"""Initial worklist schema.

Revision ID: 0001
Revises:
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)
#: Tables whose rows may only ever be inserted (the audit trail and the funnel).
_APPEND_ONLY = ("audit_log", "actions")


def upgrade() -> None:
    op.create_table(
        "studies",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("title", sa.Text, nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("sponsor", sa.String(32), nullable=True),
        sa.Column("portfolio", sa.Boolean, nullable=False),
        sa.Column("target", sa.Integer, nullable=True),
        sa.Column("opens", sa.Date, nullable=True),
        sa.Column("closes", sa.Date, nullable=True),
        sa.Column("settings", sa.Text, nullable=False),
        sa.Column("horizon_s", sa.Float, nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=True),
        sa.Column("criteria_markdown", sa.Text, nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_studies"),
    )
    op.create_table(
        "matches",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("token", sa.String(32), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("criteria", sa.Text, nullable=False),
        sa.Column("rule_hash", sa.String(64), nullable=False),
        sa.Column("matched_at", _TZ, nullable=False),
        sa.Column("event_time", _TZ, nullable=True),
        sa.Column("setting", sa.String(32), nullable=True),
        sa.Column("imd_decile", sa.Integer, nullable=True),
        sa.Column("ethnic_group", sa.String(16), nullable=True),
        sa.Column("stage", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("snoozed_until", sa.Date, nullable=True),
        sa.Column("reopened_at", _TZ, nullable=True),
        sa.Column("updated_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_matches"),
        sa.UniqueConstraint("token", name="uq_matches_token"),
        sa.UniqueConstraint("study_id", "patient_id", name="uq_matches_study_id_patient_id"),
    )
    op.create_index("ix_matches_study_id_stage", "matches", ["study_id", "stage"])
    op.create_index("ix_matches_patient_id", "matches", ["patient_id"])
    op.create_table(
        "teams",
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("email", sa.String(256), nullable=True),
        sa.PrimaryKeyConstraint("name", name="pk_teams"),
    )
    op.create_table(
        "users",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("password_hash", sa.Text, nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("email", sa.String(256), nullable=True),
        sa.Column("active", sa.Boolean, nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_users"),
        sa.UniqueConstraint("username", name="uq_users_username"),
    )
    op.create_table(
        "memberships",
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("team", sa.String(128), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_memberships_user_id_users", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["team"], ["teams.name"], name="fk_memberships_team_teams", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("user_id", "team", name="pk_memberships"),
    )
    op.create_table(
        "sessions",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("csrf_token", sa.String(64), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("expires_at", _TZ, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_sessions_user_id_users", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_sessions"),
    )
    op.create_table(
        "api_tokens",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("user_id", sa.Integer, nullable=False),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name="fk_api_tokens_user_id_users", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("token_hash", name="pk_api_tokens"),
    )
    op.create_table(
        "actions",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("match_id", sa.Integer, nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("reason", sa.String(64), nullable=True),
        sa.Column("until", sa.Date, nullable=True),
        sa.Column("note", sa.Text, nullable=True),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("at", _TZ, nullable=False),
        sa.ForeignKeyConstraint(["match_id"], ["matches.id"], name="fk_actions_match_id_matches", ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name="pk_actions"),
    )
    op.create_index("ix_actions_match_id", "actions", ["match_id"])
    op.create_table(
        "do_not_contact",
        sa.Column("patient_id", sa.String(128), nullable=False),
        sa.Column("added_at", _TZ, nullable=False),
        sa.Column("added_by", sa.String(128), nullable=False),
        sa.Column("source", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("patient_id", name="pk_do_not_contact"),
    )
    op.create_table(
        "audit_log",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("at", _TZ, nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("action", sa.String(32), nullable=False),
        sa.Column("object_type", sa.String(32), nullable=True),
        sa.Column("object_id", sa.String(128), nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_audit_log"),
    )
    op.create_index("ix_audit_log_at", "audit_log", ["at"])
    op.create_table(
        "outbox",
        sa.Column("id", sa.Integer, autoincrement=True, nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("team", sa.String(128), nullable=False),
        sa.Column("study_id", sa.String(64), nullable=False),
        sa.Column("count", sa.Integer, nullable=False),
        sa.Column("created_at", _TZ, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("next_attempt_at", _TZ, nullable=False),
        sa.Column("last_error", sa.Text, nullable=True),
        sa.Column("sent_at", _TZ, nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_outbox"),
    )
    op.create_index("ix_outbox_channel_status_next_attempt_at", "outbox", ["channel", "status", "next_attempt_at"])
    _append_only_triggers(create=True)


def downgrade() -> None:
    _append_only_triggers(create=False)
    for name in (
        "outbox",
        "audit_log",
        "do_not_contact",
        "actions",
        "api_tokens",
        "sessions",
        "memberships",
        "users",
        "teams",
        "matches",
        "studies",
    ):
        op.drop_table(name)


def _append_only_triggers(*, create: bool) -> None:
    """Make the audit log and the funnel append-only in the database itself, not just by convention.

    The triggers reject UPDATE and DELETE; the application never deletes a match, so the cascade never fires.
    """
    dialect = op.get_bind().dialect.name
    for table in _APPEND_ONLY:
        if dialect == "sqlite":
            for verb in ("UPDATE", "DELETE"):
                name = f"{table}_no_{verb.lower()}"
                if create:
                    op.execute(
                        f"CREATE TRIGGER {name} BEFORE {verb} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END"
                    )
                else:
                    op.execute(f"DROP TRIGGER IF EXISTS {name}")
        elif dialect == "postgresql":
            if create:
                op.execute(
                    f"CREATE OR REPLACE FUNCTION {table}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$ "
                    f"BEGIN RAISE EXCEPTION '{table} is append-only'; END $$"
                )
                op.execute(
                    f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
                    f"FOR EACH ROW EXECUTE FUNCTION {table}_append_only()"
                )
            else:
                op.execute(f"DROP TRIGGER IF EXISTS {table}_append_only ON {table}")
                op.execute(f"DROP FUNCTION IF EXISTS {table}_append_only()")
