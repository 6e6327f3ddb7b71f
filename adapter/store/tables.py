"""The store's tables. The schema itself is created and upgraded by the Alembic migrations."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Dialect,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    TypeDecorator,
    false,
    text,
)


class UtcDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back with its offset, on SQLite too."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the store")
        return value.astimezone(UTC) if value is not None else None

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        moment: datetime = value
        return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


metadata = MetaData()
KEY_LENGTH = 100
"""Longest store key of a record: a source id of 64 characters, or a site of a group (32) and
`:` before it (adapter/site_keys.py)."""
SITE_LENGTH = 32

source_records = Table(
    "source_records",
    metadata,
    Column("source_id", String(KEY_LENGTH), primary_key=True),
    Column("record_type", String(32), primary_key=True),
    Column("revision", BigInteger, nullable=False),
    Column("withdrawn", Boolean, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("session_id", String(KEY_LENGTH)),
    Column("first_received_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("mapping_state", String(16), nullable=False, server_default="pending"),
    Column("mapping_seq", Integer, nullable=False, server_default="0"),
    Column("mapping_detail", Text),
    Column("mapped_version", String(32)),
    Column("series_id", String(KEY_LENGTH)),
    Column("mrn", String(KEY_LENGTH)),
    Column("mapping_claim", String(36)),
    Column("mapping_claimed_until", UtcDateTime()),
    Index("ix_source_records_session", "session_id"),
    Index("ix_source_records_mapping_state", "mapping_state"),
    Index("ix_source_records_series", "series_id"),
    Index("ix_source_records_mrn", "mrn"),
    Index("ix_source_records_arrival", "mapping_state", "updated_at"),
)
"""One row per record: its current revision (number and content hash), withdrawn or not, and
where its mapping stands (`mapping_claim`: the mapping batch that holds it, until
`mapping_claimed_until`, so that two mapping processes never map it at once).

source_id leads the key so that a batch's look-up by ids uses it even before PostgreSQL has
gathered statistics on a freshly loaded table."""

source_record_revisions = Table(
    "source_record_revisions",
    metadata,
    Column("source_id", String(KEY_LENGTH), primary_key=True),
    Column("record_type", String(32), primary_key=True),
    Column("revision", BigInteger, primary_key=True),
    Column("withdrawn", Boolean, nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("raw", Text, nullable=False),
    Column("parsed", Text, nullable=False),
    Column("received_at", UtcDateTime(), nullable=False),
)
"""Every revision ever accepted, as received (raw) and as validated (parsed)."""

fhir_resources = Table(
    "fhir_resources",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("last_updated", UtcDateTime(), nullable=False),
    Column("content_hash", String(64), nullable=False),
    Column("content", Text, nullable=False),
    Column("source_type", String(32), nullable=False),
    Column("source_id", String(KEY_LENGTH), nullable=False),
    Column("date_start", UtcDateTime()),
    Column("date_end", UtcDateTime()),
    Column("site", String(SITE_LENGTH)),
    Index("ix_fhir_resources_source", "source_id", "source_type"),
    Index("ix_fhir_resources_site", "site", "resource_type"),
    Index("ix_fhir_resources_type_updated", "resource_type", "last_updated", "id"),
    Index("ix_fhir_resources_type_date", "resource_type", "date_start", "id"),
)
"""The current version of every resource, as the JSON bytes that are served."""

fhir_resource_versions = Table(
    "fhir_resource_versions",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("version_id", Integer, primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("last_updated", UtcDateTime(), nullable=False),
    Column("content", Text, nullable=False),
    Index("ix_fhir_resource_versions_type_updated", "resource_type", "last_updated", "id"),
)
"""Every version of every resource."""

version_clock = Table(
    "version_clock",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("turns", BigInteger, nullable=False),
    Column("last_updated", UtcDateTime(), nullable=False),
)
"""One row: the lastUpdated of the last transaction that wrote resource versions (or fixed an
export's transactionTime), and how many have. A writer updates the row first, and its lock,
held to commit, makes writers commit in the order of their times (adapter/store/clock.py)."""

adapter_state = Table(
    "adapter_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)
"""Small named facts, such as the mapping version the stored resources were made with."""

fhir_search_tokens = Table(
    "fhir_search_tokens",
    metadata,
    Column("resource_id", String(64), nullable=False),
    Column("param", String(64), nullable=False),
    Column("system", String(255)),
    Column("code", String(255), nullable=False),
    Index("ix_fhir_search_tokens_lookup", "param", "code", "resource_id"),
    Index("ix_fhir_search_tokens_resource", "resource_id"),
)
"""Token and reference search values of the current version of each resource."""

export_jobs = Table(
    "export_jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("status", String(16), nullable=False),
    Column("level", String(16), nullable=False),
    Column("group_id", String(128)),
    Column("types", Text, nullable=False),
    Column("since", UtcDateTime()),
    Column("request_url", Text, nullable=False),
    Column("progress", Text),
    Column("manifest", Text),
    Column("error", Text),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime()),
    Column("client_id", String(64)),
    Column("sites", Text),
    Index("ix_export_jobs_status", "status"),
)
"""Bulk Data $export jobs: kept in the store, so that a restart resumes them."""

sync_outbox = Table(
    "sync_outbox",
    metadata,
    Column("resource_id", String(64), primary_key=True),
    Column("resource_type", String(64), nullable=False),
    Column("rank", Integer, nullable=False),
    Column("version_id", Integer, nullable=False),
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False, server_default="0"),
    Column("next_attempt_at", UtcDateTime(), nullable=False),
    Column("detail", Text),
    Column("ehr_id", String(128)),
    Column("ehr_version", String(128)),
    Column("delivered_version", Integer),
    Column("updated_at", UtcDateTime(), nullable=False),
    Column("sent_at", UtcDateTime()),
    Column("urgent", Boolean, nullable=False, server_default=false()),
    Column("received_at", UtcDateTime()),
    Column("mapped_at", UtcDateTime()),
    Column("requested_at", UtcDateTime()),
    Column("answered_at", UtcDateTime()),
    Column("site", String(SITE_LENGTH)),
    Index("ix_sync_outbox_queue", "state", "rank", "resource_id"),
    # Partial (0018): a deployment of one site has no site rows, and few items are urgent. A
    # query of the urgent items must say `urgent` bare, as the index does (`_URGENT` in
    # outbox.py): SQLAlchemy writes `urgent = 1` or `urgent IS 1` on SQLite, which does not
    # use it, and PostgreSQL does not for `urgent = $1` or `urgent IS TRUE`.
    Index(
        "ix_sync_outbox_site",
        "site",
        "state",
        "rank",
        "resource_id",
        sqlite_where=text("site IS NOT NULL"),
        postgresql_where=text("site IS NOT NULL"),
    ),
    Index(
        "ix_sync_outbox_urgent",
        "state",
        "received_at",
        sqlite_where=text("urgent"),
        postgresql_where=text("urgent"),
    ),
    sqlite_with_rowid=False,
)
"""One row per resource: the version the EHR should hold, where delivery stands, the EHR's id
and version for it once delivered, and the version's journey: when its record was received, when
it was mapped (queued), sent to the EHR and answered (0015). `urgent`: a side effect, a protocol
breach or a vital sign outside its thresholds, delivered ahead of a backlog. Written in the
transaction that stores each version. On
SQLite the rows are kept in resource_id order, so that a run's writes share pages (0008)."""

sync_runs = Table(
    "sync_runs",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("trigger", String(16), nullable=False),
    Column("holder", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    Column("started_at", UtcDateTime(), nullable=False),
    Column("ended_at", UtcDateTime()),
    Column("counts", Text, nullable=False),
    Column("error", Text),
    Column("last_error", Text),
    Column("site", String(SITE_LENGTH)),
    Index("ix_sync_runs_started", "started_at"),
)
"""Every sync and reconciliation run: when, what it delivered, what failed (`error`: why the
run stopped; `last_error`: the last reason an item of the run was not delivered)."""

sync_patients = Table(
    "sync_patients",
    metadata,
    Column("mrn", String(KEY_LENGTH), primary_key=True),
    Column("state", String(16), nullable=False),
    Column("ehr_id", String(128)),
    Column("detail", Text),
    Column("checked_at", UtcDateTime(), nullable=False),
)
"""The EHR's Patient for each MRN, as last resolved (or why it could not be)."""

sync_patient_confirmations = Table(
    "sync_patient_confirmations",
    metadata,
    Column("mrn", String(KEY_LENGTH), primary_key=True),
    Column("ehr_id", String(128), nullable=False),
    Column("differs", Text, nullable=False),
    Column("confirmed_by", String(64), nullable=False),
    Column("confirmed_at", UtcDateTime(), nullable=False),
)
"""An admin's word that the EHR's Patient `ehr_id`, found by the MRN, is the clinic's patient
although the facts in `differs` (family name, birth date) disagree; it holds for that Patient
alone."""

sync_leases = Table(
    "sync_leases",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("holder", String(64)),
    Column("expires_at", UtcDateTime()),
)
"""Who runs the sync now, until when: one run at a time across every process on the store."""

api_clients = Table(
    "api_clients",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("name", String(128), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("role", String(16)),
    Column("scopes", Text),
    Column("jwks", Text),
    Column("jwks_url", Text),
    Column("key_hash", String(64), unique=True),
    Column("development", Boolean, nullable=False, server_default="0"),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("revoked_at", UtcDateTime()),
    Column("sites", Text),
)
"""Who may call the adapter: API-key clients (a role) and SMART backend clients (a JWKS and the
scopes they may be granted). Keys are stored as SHA-256 digests only."""

access_tokens = Table(
    "access_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("scopes", Text, nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_access_tokens_expires", "expires_at"),
)
"""Access tokens issued at /auth/token, as SHA-256 digests, with their granted scopes."""

spent_assertions = Table(
    "spent_assertions",
    metadata,
    Column("client_id", String(64), primary_key=True),
    Column("jti", String(255), primary_key=True),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_spent_assertions_expires", "expires_at"),
)
"""The jti of every client assertion accepted, kept until it expires: none is accepted twice."""

audit_events = Table(
    "audit_events",
    metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("recorded_at", UtcDateTime(), nullable=False),
    Column("client_id", String(64)),
    Column("interaction", String(32), nullable=False),
    Column("method", String(32), nullable=False),
    Column("path", Text, nullable=False),
    Column("resource_type", String(64)),
    Column("resource_ids", Text),
    Column("query", Text),
    Column("outcome", Integer, nullable=False),
    Column("address", String(64)),
    Column("chain", String(64)),
    Index("ix_audit_events_recorded", "recorded_at"),
    Index("ix_audit_events_client", "client_id", "id"),
)
"""Every access: when, who, what interaction on what, and the HTTP outcome. Append-only: the
migrations add triggers that refuse UPDATE, DELETE, TRUNCATE and replacing inserts. `chain` is
an HMAC over the previous entry's chain and this entry (adapter/security/audit.py)."""

audit_chain_head = Table(
    "audit_chain_head",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("last_id", BigInteger, nullable=False),
    Column("last_chain", String(64)),
)
"""One row: the last chained audit entry, so that entries cut from the end are noticed; its
update is also the lock that keeps writers of the chain in turn."""

console_sessions = Table(
    "console_sessions",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("client_id", String(64), nullable=False),
    Column("csrf", String(64), nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("expires_at", UtcDateTime(), nullable=False),
    Index("ix_console_sessions_expires", "expires_at"),
)
"""Console sign-ins: the SHA-256 digest of the cookie, the admin client it was exchanged for,
the CSRF token of its forms, until when it lasts. Signing out deletes the row."""

alerts = Table(
    "alerts",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("kind", String(32), nullable=False),
    Column("subject", String(255), nullable=False),
    Column("summary", Text, nullable=False),
    Column("detail", Text),
    Column("opened_at", UtcDateTime(), nullable=False),
    Column("closed_at", UtcDateTime()),
    Column("opened_sent_at", UtcDateTime()),
    Column("closed_sent_at", UtcDateTime()),
    Index("ix_alerts_open", "closed_at", "kind", "subject"),
)
"""One row per incident: what (kind and subject), when it fired and ended, and when the webhook
was told of each (None: not yet, tried again on the next check)."""

job_ticks = Table(
    "job_ticks",
    metadata,
    Column("job", String(64), primary_key=True),
    Column("slot", UtcDateTime(), primary_key=True),
    Column("holder", String(64), nullable=False),
    Column("claimed_at", UtcDateTime(), nullable=False),
)
"""The ticks of the scheduled jobs that run once per tick across the processes on the store:
the first process to insert a job's row for a tick runs it; the others skip that tick."""
