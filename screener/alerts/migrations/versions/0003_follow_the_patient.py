"""Matches follow the patient: location, the previous outcome, when the engine last changed a match, when it
was closed as no longer eligible and when it was upgraded (possible -> eligible). Studies gain the metadata
people read: lay summary, contacts, protocol and information-sheet links, sites, the alert mode, and the
criteria in plain words.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)
#: Text columns added to studies (contacts, sites and criteria_plain hold JSON).
_STUDY_TEXT = ("lay_summary", "contacts", "protocol_url", "pis_url", "sites", "criteria_plain")


def upgrade() -> None:
    with op.batch_alter_table("matches") as batch:
        batch.add_column(sa.Column("location", sa.String(64), nullable=True))
        batch.add_column(sa.Column("previous_outcome", sa.String(16), nullable=True))
        batch.add_column(sa.Column("changed_at", _TZ, nullable=True))
        batch.add_column(sa.Column("closed_at", _TZ, nullable=True))
        batch.add_column(sa.Column("upgraded_at", _TZ, nullable=True))

    with op.batch_alter_table("studies") as batch:
        for name in _STUDY_TEXT:
            batch.add_column(sa.Column(name, sa.Text, nullable=True))
        batch.add_column(sa.Column("alert", sa.String(16), nullable=False, server_default="digest"))


def downgrade() -> None:
    with op.batch_alter_table("studies") as batch:
        for name in ("alert", *reversed(_STUDY_TEXT)):
            batch.drop_column(name)
    with op.batch_alter_table("matches") as batch:
        for name in ("upgraded_at", "closed_at", "changed_at", "previous_outcome", "location"):
            batch.drop_column(name)
