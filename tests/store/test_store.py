"""The store on SQLite and PostgreSQL: migrations, durability of accepted records, concurrency."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC

import pytest
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import inspect, text

from adapter.runtime import Runtime
from adapter.store import migrate
from adapter.store.engine import make_engine, normalise_url
from tests.conftest import ndjson, session, vitals


@pytest.mark.empty_store
def test_migrations_create_the_schema_and_are_idempotent(database_url: str) -> None:
    engine = make_engine(database_url)
    assert migrate.pending(engine)

    migrate.upgrade(engine)
    migrate.upgrade(engine)

    assert not migrate.pending(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"source_records", "source_record_revisions", "alembic_version"} <= tables
    engine.dispose()


@pytest.mark.empty_store
def test_migrations_downgrade_to_nothing_and_back(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine)

    migrate.downgrade(engine, "base")
    assert "source_records" not in inspect(engine).get_table_names()

    migrate.upgrade(engine)
    assert "source_records" in inspect(engine).get_table_names()
    engine.dispose()


def test_the_newest_revision_read_from_the_files_is_alembics_head() -> None:
    assert migrate.newest() == ScriptDirectory.from_config(migrate._config()).get_current_head()


@pytest.mark.empty_store
def test_the_revision_of_a_store_is_read_as_alembic_reads_it(database_url: str) -> None:
    engine = make_engine(database_url)

    def alembics() -> str | None:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    seen = [migrate.current(engine)]
    for target in ("0001", "0009", "head"):
        migrate.upgrade(engine, target)
        seen.append(migrate.current(engine))
        assert seen[-1] == alembics()
    migrate.downgrade(engine, "base")
    seen.append(migrate.current(engine))
    assert seen == [None, "0001", "0009", migrate.newest(), None]
    assert alembics() is None
    engine.dispose()


@pytest.mark.empty_store
def test_the_outbox_kept_in_key_order_keeps_every_item_both_ways(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine, "0007")
    row = (
        "INSERT INTO sync_outbox (resource_id, resource_type, rank, version_id, state, attempts, "
        "next_attempt_at, detail, ehr_id, ehr_version, delivered_version, updated_at, sent_at) "
        "VALUES (:id, 'Observation', 3, 2, :state, 1, :at, :detail, :ehr, '7', 1, :at, :sent)"
    )
    at = "2026-11-26 10:00:00"
    items = [
        {"id": "b-1", "state": "delivered", "at": at, "detail": None, "ehr": "9", "sent": at},
        {
            "id": "a-2",
            "state": "dead",
            "at": at,
            "detail": '{"reason": "422"}',
            "ehr": None,
            "sent": None,
        },
    ]
    with engine.begin() as connection:
        connection.execute(text(row), items)
    query = text(
        "SELECT resource_id, state, attempts, detail, ehr_id, ehr_version, version_id, "
        "delivered_version, sent_at IS NULL FROM sync_outbox ORDER BY resource_id"
    )

    def stored() -> list[tuple[object, ...]]:
        with engine.connect() as connection:
            return [tuple(r) for r in connection.execute(query)]

    before = stored()
    migrate.upgrade(engine)
    assert stored() == before
    sqlite = engine.dialect.name == "sqlite"
    with engine.connect() as connection:
        if sqlite:  # a WITHOUT ROWID table has no rowid to select
            ddl = connection.execute(
                text("SELECT sql FROM sqlite_master WHERE name = 'sync_outbox'")
            ).scalar_one()
            assert "WITHOUT ROWID" in ddl
        indexes = {i["name"] for i in inspect(connection).get_indexes("sync_outbox")}
    assert "ix_sync_outbox_queue" in indexes

    migrate.downgrade(engine, "0007")
    assert stored() == before
    if sqlite:
        with engine.connect() as connection:
            assert connection.execute(text("SELECT count(rowid) FROM sync_outbox")).scalar() == 2
    engine.dispose()


def test_accepted_records_survive_a_new_connection(runtime: Runtime) -> None:
    runtime.intake.submit([(0, ndjson(session())), (1, ndjson(vitals()))])
    runtime.close()

    reopened = make_engine(str(runtime.store.engine.url.render_as_string(hide_password=False)))
    with reopened.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM source_record_revisions")).scalar()
    reopened.dispose()
    assert count == 2


def test_timestamps_come_back_in_utc(runtime: Runtime) -> None:
    runtime.intake.submit([(0, ndjson(vitals()).strip())])

    stored = runtime.store.get("vitals", "VIT-1")

    assert stored is not None
    assert stored.updated_at.tzinfo == UTC
    assert stored.raw == ndjson(vitals()).decode().strip()


def test_concurrent_intake_of_the_same_records_creates_each_once(runtime: Runtime) -> None:
    batch = [(n, ndjson(vitals(id=f"VIT-{n}")).strip()) for n in range(200)]

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(runtime.intake.submit, [batch] * 4))

    outcomes = [o.outcome for outcomes in results for o in outcomes]
    assert outcomes.count("created") == 200
    assert outcomes.count("unchanged") == 600
    assert runtime.store.counts() == {"vitals": 200}


def test_postgres_urls_in_the_usual_spellings_use_psycopg() -> None:
    assert normalise_url("postgres://u@h/db").startswith("postgresql+psycopg://u@h/db")
    assert normalise_url("postgresql://u:p@h:5433/db") == "postgresql+psycopg://u:p@h:5433/db"
    assert normalise_url("sqlite:///var/adapter.db") == "sqlite:///var/adapter.db"


def test_statistics_can_be_refreshed_after_a_large_load(runtime: Runtime) -> None:
    runtime.intake.submit([(0, ndjson(vitals()).strip())])
    runtime.mapping.run()

    runtime.resources.refresh_statistics()

    assert len(runtime.resources.all_current()) == 4  # 3 Observations and the Patient
    # The sync's queue too: a planner that takes it for empty sorts all of it for each batch.
    with runtime.store.engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            analysed = connection.execute(
                text("SELECT tbl FROM sqlite_stat1 WHERE tbl IN ('sync_outbox', 'fhir_resources')")
            )
        else:
            analysed = connection.execute(
                text(
                    "SELECT relname FROM pg_stat_user_tables WHERE schemaname = current_schema() "
                    "AND relname IN ('sync_outbox', 'fhir_resources') AND last_analyze IS NOT NULL"
                )
            )
        assert {row[0] for row in analysed} == {"sync_outbox", "fhir_resources"}
