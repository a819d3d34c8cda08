"""matches.published_at: when the match was acknowledged on screening.matches.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-30
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("matches") as batch:
        batch.add_column(sa.Column("published_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_matches_published_at", ["published_at"])
    # Matches stored before this revision were published when they were recorded (or the gap this column
    # closes already lost them): they count as published, so upgrading does not replay history on the topic.
    op.execute("UPDATE matches SET published_at = updated_at")


def downgrade() -> None:
    with op.batch_alter_table("matches") as batch:
        batch.drop_index("ix_matches_published_at")
        batch.drop_column("published_at")
