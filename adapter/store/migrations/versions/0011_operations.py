"""Operations: console sign-ins (a cookie's digest, its CSRF token, until when), alerts (one row
per incident, with when it fired, when it ended and when each was notified), and the last
problem of each sync run.

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30
"""

import sqlalchemy as sa
from alembic import op

from adapter.store.tables import UtcDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "console_sessions",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("csrf", sa.String(64), nullable=False),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("expires_at", UtcDateTime(), nullable=False),
    )
    op.create_index("ix_console_sessions_expires", "console_sessions", ["expires_at"])
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(255), nullable=False),
        sa.Column("summary", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("opened_at", UtcDateTime(), nullable=False),
        sa.Column("closed_at", UtcDateTime()),
        sa.Column("opened_sent_at", UtcDateTime()),
        sa.Column("closed_sent_at", UtcDateTime()),
    )
    op.create_index("ix_alerts_open", "alerts", ["closed_at", "kind", "subject"])
    op.add_column("sync_runs", sa.Column("last_error", sa.Text))


def downgrade() -> None:
    op.drop_column("sync_runs", "last_error")
    op.drop_index("ix_alerts_open", "alerts")
    op.drop_table("alerts")
    op.drop_index("ix_console_sessions_expires", "console_sessions")
    op.drop_table("console_sessions")
