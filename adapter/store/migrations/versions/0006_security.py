"""Security: registered clients, access tokens, spent assertion ids, the audit record.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

APPEND_ONLY_SQLITE = (
    "CREATE TRIGGER audit_events_no_{verb} BEFORE {verb} ON audit_events "
    "BEGIN SELECT RAISE(ABORT, 'the audit record is append-only'); END"
)
APPEND_ONLY_POSTGRESQL = """
CREATE FUNCTION audit_events_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'the audit record is append-only';
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();
"""


def upgrade() -> None:
    op.create_table(
        "api_clients",
        sa.Column("id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(128), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("role", sa.String(16)),
        sa.Column("scopes", sa.Text),
        sa.Column("jwks", sa.Text),
        sa.Column("jwks_url", sa.Text),
        sa.Column("key_hash", sa.String(64), unique=True),
        sa.Column("development", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True)),
    )
    op.create_table(
        "access_tokens",
        sa.Column("token_hash", sa.String(64), primary_key=True),
        sa.Column("client_id", sa.String(64), nullable=False),
        sa.Column("scopes", sa.Text, nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_access_tokens_expires", "access_tokens", ["expires_at"])
    op.create_table(
        "spent_assertions",
        sa.Column("client_id", sa.String(64), primary_key=True),
        sa.Column("jti", sa.String(255), primary_key=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_spent_assertions_expires", "spent_assertions", ["expires_at"])
    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("recorded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_id", sa.String(64)),
        sa.Column("interaction", sa.String(32), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("resource_type", sa.String(64)),
        sa.Column("resource_ids", sa.Text),
        sa.Column("query", sa.Text),
        sa.Column("outcome", sa.Integer, nullable=False),
        sa.Column("address", sa.String(64)),
    )
    op.create_index("ix_audit_events_recorded", "audit_events", ["recorded_at"])
    op.create_index("ix_audit_events_client", "audit_events", ["client_id", "id"])
    if op.get_bind().dialect.name == "postgresql":
        op.execute(APPEND_ONLY_POSTGRESQL)
    else:
        op.execute(APPEND_ONLY_SQLITE.format(verb="UPDATE"))
        op.execute(APPEND_ONLY_SQLITE.format(verb="DELETE"))
    op.add_column("export_jobs", sa.Column("client_id", sa.String(64)))


def downgrade() -> None:
    op.drop_column("export_jobs", "client_id")
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER audit_events_append_only ON audit_events")
        op.execute("DROP FUNCTION audit_events_append_only()")
    op.drop_index("ix_audit_events_client", "audit_events")
    op.drop_index("ix_audit_events_recorded", "audit_events")
    op.drop_table("audit_events")
    op.drop_index("ix_spent_assertions_expires", "spent_assertions")
    op.drop_table("spent_assertions")
    op.drop_index("ix_access_tokens_expires", "access_tokens")
    op.drop_table("access_tokens")
    op.drop_table("api_clients")
