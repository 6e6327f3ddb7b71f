"""Reads and writes source records and their revisions; the revision rules live in intake."""

import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import (
    ARRAY,
    Column,
    ColumnElement,
    Connection,
    Engine,
    String,
    and_,
    any_,
    bindparam,
    func,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from adapter.store import notices, raw
from adapter.store.engine import any_row
from adapter.store.tables import UtcDateTime
from adapter.store.tables import source_record_revisions as revisions
from adapter.store.tables import source_records as records

Key = tuple[str, str]
REVISION_COLUMNS = (
    "source_id",
    "record_type",
    "revision",
    "withdrawn",
    "content_hash",
    "raw",
    "parsed",
    "received_at",
)
RECORD_COLUMNS = (
    "source_id",
    "record_type",
    "revision",
    "withdrawn",
    "content_hash",
    "session_id",
    "first_received_at",
    "updated_at",
    "series_id",
    "mrn",
)


_CURRENT_REVISION = and_(
    revisions.c.record_type == records.c.record_type,
    revisions.c.source_id == records.c.source_id,
    revisions.c.revision == records.c.revision,
)
"""Joins a record to its current revision."""
_PARSED_CURRENT = (
    "SELECT r.record_type, r.source_id, v.parsed FROM source_records r "
    "JOIN source_record_revisions v ON v.record_type = r.record_type AND v.source_id = r.source_id "
    "AND v.revision = r.revision WHERE r.source_id IN ({})"
)


class WriteConflict(Exception):
    """Another writer stored one of the batch's records first; the batch is to be redone."""


@dataclass(frozen=True)
class CurrentRevision:
    revision: int
    content_hash: str
    session_id: str | None = None


@dataclass(frozen=True)
class RevisionRow:
    """One accepted revision, ready to be written."""

    record_type: str
    source_id: str
    revision: int
    withdrawn: bool
    session_id: str | None
    content_hash: str
    raw: str
    parsed: str
    series_id: str | None = None
    mrn: str | None = None


@dataclass(frozen=True)
class StoredRecord:
    """A record's current revision as the store holds it."""

    record_type: str
    source_id: str
    revision: int
    withdrawn: bool
    session_id: str | None
    first_received_at: datetime
    updated_at: datetime
    raw: str
    parsed: str


@dataclass(frozen=True)
class StoredRevision:
    revision: int
    withdrawn: bool
    received_at: datetime
    raw: str
    parsed: str


class RecordWriter:
    """The writes of one intake batch, inside one database transaction."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    def current(self, keys: Iterable[Key]) -> dict[Key, CurrentRevision]:
        """The current revision of each of these records that the store holds."""
        ids_by_type: dict[str, set[str]] = {}
        for record_type, source_id in keys:
            ids_by_type.setdefault(record_type, set()).add(source_id)
        found: dict[Key, CurrentRevision] = {}
        for record_type, ids in ids_by_type.items():
            query = select(
                records.c.source_id,
                records.c.revision,
                records.c.content_hash,
                records.c.session_id,
            ).where(records.c.record_type == record_type, self._one_of(records.c.source_id, ids))
            for row in self._connection.execute(query):
                found[(record_type, row.source_id)] = CurrentRevision(
                    row.revision, row.content_hash, row.session_id
                )
        return found

    def _one_of(self, column: Column[str], values: set[str]) -> ColumnElement[bool]:
        """`column IN values`; on PostgreSQL one array parameter instead of one per value."""
        if self._connection.dialect.name == "postgresql":
            return column == any_(bindparam("values", list(values), type_=ARRAY(String)))
        return column.in_(values)

    def stored_revision_hash(self, key: Key, revision: int) -> str | None:
        query = select(revisions.c.content_hash).where(
            revisions.c.record_type == key[0],
            revisions.c.source_id == key[1],
            revisions.c.revision == revision,
        )
        return self._connection.execute(query).scalar_one_or_none()

    def _insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Insert many rows: COPY on PostgreSQL, one executemany elsewhere. Intake's hot path."""
        if self._connection.dialect.name == "postgresql":
            import psycopg  # PostgreSQL's driver, loaded by its engine already

            driver = self._connection.connection.driver_connection
            assert driver is not None
            try:
                with (
                    driver.cursor() as cursor,
                    cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy,
                ):
                    for row in rows:
                        copy.write_row(row)
            except psycopg.errors.UniqueViolation:
                raise WriteConflict(table) from None
            return
        placeholders = ", ".join("?" for _ in columns)
        self._executemany(
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({placeholders})", rows
        )

    def requeue_sessions(self, session_ids: set[str]) -> None:
        """Sessions a record has left (an amendment named another session): mapped again, so
        that their protocol checks see the record gone."""
        self._requeue("infusion_session", records.c.source_id, session_ids)

    def requeue_dependants(self, session_ids: set[str]) -> None:
        """Attestations are mapped with their session's times: a new session re-maps them."""
        self._requeue("attestation", records.c.session_id, session_ids)

    def _requeue(self, record_type: str, column: Column[str], values: set[str]) -> None:
        """Records of a type whose `column` is one of `values`, pending again."""
        ordered = sorted(values)
        for start in range(0, len(ordered), 500):
            self._connection.execute(
                update(records)
                .where(
                    records.c.record_type == record_type,
                    self._one_of(column, set(ordered[start : start + 500])),
                )
                .values(mapping_state="pending", mapping_seq=records.c.mapping_seq + 1)
            )

    def _executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement for many rows straight through the driver."""
        placeholder = "?" if self._connection.dialect.paramstyle == "qmark" else "%s"
        try:
            self._connection.exec_driver_sql(sql.replace("?", placeholder), rows)
        except IntegrityError:
            raise WriteConflict(sql.split("(", 1)[0]) from None

    def _timestamp(self, moment: datetime) -> Any:
        """`moment` as the driver takes it for a UtcDateTime column, computed once per batch."""
        dialect = self._connection.dialect
        value = UtcDateTime().process_bind_param(moment, dialect)
        process = UtcDateTime().dialect_impl(dialect).bind_processor(dialect)
        return process(value) if process else value

    def write(
        self,
        new_revisions: Sequence[RevisionRow],
        created: Sequence[RevisionRow],
        amended: Sequence[RevisionRow],
        received_at: datetime,
    ) -> None:
        """Store revisions, create new records, and move amended records to a newer revision;
        the processes listening hear of it at commit."""
        at = self._timestamp(received_at)
        if new_revisions:
            self._insert(
                "source_record_revisions",
                REVISION_COLUMNS,
                [
                    (
                        r.source_id,
                        r.record_type,
                        r.revision,
                        r.withdrawn,
                        r.content_hash,
                        r.raw,
                        r.parsed,
                        at,
                    )
                    for r in new_revisions
                ],
            )
        if created:
            self._insert(
                "source_records",
                RECORD_COLUMNS,
                [
                    (
                        r.source_id,
                        r.record_type,
                        r.revision,
                        r.withdrawn,
                        r.content_hash,
                        r.session_id,
                        at,
                        at,
                        r.series_id,
                        r.mrn,
                    )
                    for r in created
                ],
            )
        if amended:
            self._executemany(
                "UPDATE source_records SET revision = ?, withdrawn = ?, content_hash = ?, "
                "session_id = ?, series_id = ?, mrn = ?, updated_at = ?, "
                "mapping_state = 'pending', mapping_seq = mapping_seq + 1 "
                "WHERE record_type = ? AND source_id = ? AND revision < ?",
                [
                    (
                        r.revision,
                        r.withdrawn,
                        r.content_hash,
                        r.session_id,
                        r.series_id,
                        r.mrn,
                        at,
                        r.record_type,
                        r.source_id,
                        r.revision,
                    )
                    for r in amended
                ],
            )
        if created or amended:
            notices.announce(self._connection, notices.RECORDS)


WRITE_WAIT_SECONDS = 30.0
"""How long intake waits for its turn to write to a SQLite file before it answers 503."""
_SQLITE_WRITERS: dict[str, threading.Lock] = {}
_SQLITE_WRITERS_GUARD = threading.Lock()


def _turn(engine: Engine) -> "threading.Lock | None":
    """The lock that gives this process's intake writes to a SQLite file their turns (None
    on PostgreSQL). SQLite takes one writer at a time: without it, concurrent requests each
    held a pooled connection while they waited on the file, emptied the pool, and met
    `database is locked` where a reader's transaction could not become a writer's."""
    if engine.dialect.name != "sqlite":
        return None
    with _SQLITE_WRITERS_GUARD:
        return _SQLITE_WRITERS.setdefault(str(engine.url.database), threading.Lock())


class RecordStore:
    """The source records: written by intake, read by the API and by mapping."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self._turn = _turn(engine)

    @contextmanager
    def writer(self) -> Iterator[RecordWriter]:
        """One transaction: everything written through the writer commits together or not at
        all; on SQLite, one of this process's at a time (`_turn`). Raises TimeoutError when
        the turn does not come within WRITE_WAIT_SECONDS."""
        turn = self._turn
        if turn is not None and not turn.acquire(timeout=WRITE_WAIT_SECONDS):
            raise TimeoutError("no turn to write to the store")
        try:
            with self.engine.begin() as connection:
                yield RecordWriter(connection)
        finally:
            if turn is not None:
                turn.release()

    def get(self, record_type: str, source_id: str) -> StoredRecord | None:
        query = (
            select(
                records.c.record_type,
                records.c.source_id,
                records.c.revision,
                records.c.withdrawn,
                records.c.session_id,
                records.c.first_received_at,
                records.c.updated_at,
                revisions.c.raw,
                revisions.c.parsed,
            )
            .join(revisions, _CURRENT_REVISION)
            .where(records.c.record_type == record_type, records.c.source_id == source_id)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return StoredRecord(**row._mapping) if row else None

    def parsed_current(self, keys: Iterable[Key]) -> dict[Key, dict[str, Any]]:
        """The parsed current revision of each record named (record_type, source_id): read for
        every batch the sync sends, so as one DBAPI statement per 500."""
        wanted = sorted(set(keys))
        found: dict[Key, dict[str, Any]] = {}
        if not wanted:
            return found
        with raw.reading(self.engine) as cursor:
            for start in range(0, len(wanted), 500):
                chunk = set(wanted[start : start + 500])
                ids = sorted({source_id for _, source_id in chunk})
                cursor.execute(
                    raw.statement(self.engine, _PARSED_CURRENT.format(raw.placeholders(len(ids)))),
                    ids,
                )
                for record_type, source_id, parsed in cursor.fetchall():
                    if (record_type, source_id) in chunk:
                        found[(record_type, source_id)] = orjson.loads(parsed)
        return found

    def revision_history(self, record_type: str, source_id: str) -> list[StoredRevision]:
        query = (
            select(
                revisions.c.revision,
                revisions.c.withdrawn,
                revisions.c.received_at,
                revisions.c.raw,
                revisions.c.parsed,
            )
            .where(revisions.c.record_type == record_type, revisions.c.source_id == source_id)
            .order_by(revisions.c.revision)
        )
        with self.engine.connect() as connection:
            return [StoredRevision(**row._mapping) for row in connection.execute(query)]

    def linked_counts(self, session_id: str) -> dict[str, int]:
        """How many records of each type name this session, whether or not it has arrived."""
        query = (
            select(records.c.record_type, func.count())
            .where(records.c.session_id == session_id)
            .group_by(records.c.record_type)
        )
        with self.engine.connect() as connection:
            return {row[0]: row[1] for row in connection.execute(query)}

    def exists(self, record_type: str, source_id: str) -> bool:
        return any_row(
            self.engine,
            records.c.revision,
            records.c.record_type == record_type,
            records.c.source_id == source_id,
        )

    def counts(self) -> dict[str, Any]:
        query = select(records.c.record_type, func.count()).group_by(records.c.record_type)
        with self.engine.connect() as connection:
            return {row[0]: row[1] for row in connection.execute(query)}
