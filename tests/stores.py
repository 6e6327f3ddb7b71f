"""The tests' stores: a PostgreSQL database of each test process's own, and SQLite stores copied
from one that the migrations built once per process."""

import os
import shutil
import sqlite3
import uuid
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from adapter.store import migrate
from adapter.store.engine import make_engine

BASE_POSTGRES_URL = os.environ.get(
    "ADAPTER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
WORKER = os.environ.get("PYTEST_XDIST_WORKER", "")
"""The pytest-xdist worker this process is (gw0, gw1, ...); empty in a run of one process."""


def _with_database(url: str, database: str) -> str:
    return make_url(url).set(database=database).render_as_string(hide_password=False)


def _worker_url() -> str:
    if not WORKER:
        return BASE_POSTGRES_URL
    base = make_url(BASE_POSTGRES_URL).database or "test"
    return _with_database(BASE_POSTGRES_URL, f"{base}_{WORKER}")


POSTGRES_URL = _worker_url()
"""The database this test process works in: ADAPTER_TEST_POSTGRES_URL's in a run of one
process, and beside it one of each worker's own (test_gw0, ...) when the suite runs in
parallel, so that no two processes share a database."""


def create_worker_database() -> None:
    """Create this worker's database unless it is there (a run of one process uses the base)."""
    if not WORKER:
        return
    name = make_url(POSTGRES_URL).database
    admin = create_engine(BASE_POSTGRES_URL, isolation_level="AUTOCOMMIT")  # CREATE DATABASE
    try:
        with admin.connect() as connection:
            exists = connection.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first()
            if not exists:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
    finally:
        admin.dispose()


class SqliteTemplate:
    """A SQLite store at the schema's newest revision, migrated on first use; each test gets a
    copy of the file, which is what it would have after `infusion-adapter db upgrade`.
    (PostgreSQL's stores are migrated one by one: a database copied from a template costs the
    server more than the migrations do.)"""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._template: Path | None = None

    def copy(self, target: Path) -> str:
        """The URL of a migrated SQLite store at `target`."""
        if self._template is None:
            template = self.folder / "template.db"
            engine = make_engine(f"sqlite:///{template}")
            migrate.upgrade(engine)
            engine.dispose()
            with sqlite3.connect(template) as connection:  # one file, no write-ahead log beside it
                connection.execute("PRAGMA journal_mode=DELETE")
            connection.close()
            self._template = template
        shutil.copyfile(self._template, target)
        return f"sqlite:///{target}"


class PostgresSchemas:
    """Migrated PostgreSQL schemas that the tests of a process take in turn. A schema handed
    back is emptied for the next test as a new one would be (every row deleted with the
    triggers off, the migrations' own rows put back, the sequences restarted); one whose tables
    a test changed, or that cannot be emptied, is dropped instead."""

    def __init__(self) -> None:
        self.admin = create_engine(POSTGRES_URL)
        self.free: list[str] = []
        self._shape: set[str] | None = None
        self._seeds: dict[str, list[dict[str, Any]]] = {}

    @staticmethod
    def url(schema: str) -> str:
        """The schema's URL. Its commits do not wait for the server's disk (what the tests read
        back is the same; only a crash of the server could lose it)."""
        return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}%20-csynchronous_commit%3Doff"

    def empty(self) -> str:
        """A new schema with nothing in it."""
        schema = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin.begin() as connection:
            connection.execute(text(f"CREATE SCHEMA {schema}"))
        return schema

    def take(self) -> str:
        """A schema at the newest revision, as the migrations leave it."""
        if self.free:
            return self.free.pop()
        schema = self.empty()
        engine = make_engine(self.url(schema))
        try:
            migrate.upgrade(engine)
        finally:
            engine.dispose()
        if self._shape is None:
            self._shape, self._seeds = self._read(schema)
        return schema

    def give_back(self, schema: str) -> None:
        try:
            if self._read_shape(schema) != self._shape:
                raise LookupError("a test changed the tables")
            self._empty_out(schema)
        except Exception:
            self.drop(schema)
        else:
            self.free.append(schema)

    def drop(self, schema: str) -> None:
        with self.admin.begin() as connection:
            connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))

    def close(self) -> None:
        for schema in self.free:
            self.drop(schema)
        self.admin.dispose()

    def _read_shape(self, schema: str) -> set[str]:
        """The schema's tables and the revision it is at."""
        with self.admin.connect() as connection:
            tables = connection.execute(
                text("SELECT tablename FROM pg_tables WHERE schemaname = :schema"),
                {"schema": schema},
            ).scalars()
            revision = connection.execute(
                text(f"SELECT version_num FROM {schema}.alembic_version")
            ).scalars()
            return {*tables, *(f"revision {found}" for found in revision)}

    def _read(self, schema: str) -> tuple[set[str], dict[str, list[dict[str, Any]]]]:
        shape = self._read_shape(schema)
        seeds: dict[str, list[dict[str, Any]]] = {}
        with self.admin.connect() as connection:
            for table in sorted(name for name in shape if not name.startswith("revision ")):
                if table != "alembic_version":
                    rows = connection.execute(text(f"SELECT * FROM {schema}.{table}"))
                    seeds[table] = [dict(row) for row in rows.mappings()]
        return shape, seeds

    def _empty_out(self, schema: str) -> None:
        """Delete the rows of the tables that have any, put the migrations' own rows back and
        restart the sequences that were used, in four round trips."""
        written = " UNION ALL ".join(
            f"SELECT '{table}' FROM {schema}.{table} HAVING count(*) > 0" for table in self._seeds
        )
        with self.admin.begin() as connection:
            connection.execute(text("SET LOCAL lock_timeout = '5s'"))
            connection.execute(text("SET LOCAL session_replication_role = replica"))
            tables = list(connection.execute(text(written)).scalars())
            sequences = connection.execute(
                text(
                    "SELECT sequencename FROM pg_sequences "
                    "WHERE schemaname = :schema AND last_value IS NOT NULL"
                ),
                {"schema": schema},
            ).scalars()
            statements = [f"DELETE FROM {schema}.{table}" for table in tables]
            statements += [f"ALTER SEQUENCE {schema}.{name} RESTART" for name in sequences]
            if statements:
                connection.exec_driver_sql(";\n".join(statements))
            for table in tables:
                rows = self._seeds[table]
                if rows:
                    names = list(rows[0])
                    connection.execute(
                        text(
                            f"INSERT INTO {schema}.{table} ({', '.join(names)}) "
                            f"VALUES ({', '.join(':' + name for name in names)})"
                        ),
                        rows,
                    )
