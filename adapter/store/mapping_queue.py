"""Which source records wait to be mapped, and which wait for a mapping a person must add."""

import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Select,
    and_,
    case,
    func,
    or_,
    select,
    tuple_,
    update,
)

from adapter.store.engine import any_row
from adapter.store.state import read_state, write_state
from adapter.store.tables import source_record_revisions as revisions
from adapter.store.tables import source_records as records

PENDING, MAPPED, WAITING, FAILED = "pending", "mapped", "waiting", "failed"
UNCODED = "uncoded"
"""Mapped and sent on, with some local code as text alone for want of a row (listed for IT)."""
HELD_STATES = (WAITING, FAILED, UNCODED)
URGENT_RECORD = "adverse_event"
"""The record type mapped first among those that arrive while a run works through a backlog."""
MAPPING_VERSION = "mapping_version"
CLAIM_FOR = timedelta(seconds=30)
"""How long a mapping batch holds its records unless told (ADAPTER_MAPPING_CLAIM_SECONDS): far
longer than mapping and storing a batch of a few hundred takes, and short, because the records
of a process stopped mid-batch (a side effect among them) wait this long for another pass. A
batch that outlasts its claim still stores what it mapped unless another batch claimed some of
its records meanwhile (`hold`)."""
_CHUNK = 500


@dataclass(frozen=True)
class QueuedRecord:
    record_type: str
    source_id: str
    revision: int
    mapping_seq: int
    session_id: str | None
    first_received_at: datetime
    parsed: str
    received_at: datetime
    """When the current revision was received."""
    claim: str
    """The mapping batch that holds the record (MappingQueue.claim_batch)."""


@dataclass(frozen=True)
class MappingOutcome:
    """What mapping did with one queued record: `mapped`, `waiting` or `failed`, and why."""

    record: QueuedRecord
    state: str
    detail: dict[str, Any] | None
    version: str


@dataclass
class SessionRows:
    """The parsed current revisions a session's protocol checks read: the session (None until
    it arrives), the records that name it, and the other sessions of its series."""

    session: str | None = None
    records: list[str] = field(default_factory=list)
    series: list[str] = field(default_factory=list)
    series_id: str | None = None


@dataclass(frozen=True)
class HeldRecord:
    record_type: str
    source_id: str
    revision: int
    state: str
    detail: dict[str, Any]
    updated_at: datetime


def _current_revision() -> Any:
    return and_(
        revisions.c.record_type == records.c.record_type,
        revisions.c.source_id == records.c.source_id,
        revisions.c.revision == records.c.revision,
    )


def _keys(keys: Sequence[Any]) -> ColumnElement[bool]:
    """Records by (source_id, record_type)."""
    return tuple_(records.c.source_id, records.c.record_type).in_(
        [(key[0], key[1]) for key in keys]
    )


def _by_claim(batch: Sequence[QueuedRecord]) -> dict[str, list[tuple[str, str]]]:
    claims: dict[str, list[tuple[str, str]]] = {}
    for item in batch:
        claims.setdefault(item.claim, []).append((item.source_id, item.record_type))
    return claims


def _free(now: datetime) -> ColumnElement[bool]:
    """Pending, and held by no mapping batch (or by one whose claim ran out)."""
    return and_(
        records.c.mapping_state == PENDING,
        or_(records.c.mapping_claim.is_(None), records.c.mapping_claimed_until < now),
    )


class MappingQueue:
    def __init__(self, engine: Engine, claim_for: timedelta = CLAIM_FOR) -> None:
        self.engine = engine
        self.claim_for = claim_for

    def any_to_map(self, now: datetime) -> bool:
        """Whether any record is pending and held by no batch: one read, no write."""
        return any_row(self.engine, records.c.source_id, _free(now))

    def claim_batch(
        self, limit: int, now: datetime, after: tuple[str, str] | None = None
    ) -> list[QueuedRecord]:
        """Pending records that no other mapping batch holds, in key order after `after` (so a
        run passes over each once), claimed for a new batch until `now` + `claim_for`."""
        candidates = (
            select(records.c.source_id, records.c.record_type)
            .where(_free(now))
            .order_by(records.c.source_id, records.c.record_type)
            .limit(limit)
        )
        if after is not None:
            candidates = candidates.where(
                (records.c.source_id > after[1])
                | and_(records.c.source_id == after[1], records.c.record_type > after[0])
            )
        found = self._claim(candidates, now)
        return sorted(found, key=lambda item: (item.source_id, item.record_type))

    def claim_arrivals(self, since: datetime, limit: int, now: datetime) -> list[QueuedRecord]:
        """Pending records received since `since` (while a run works through a backlog) that no
        other batch holds, side effects first, then in the order they came; claimed as
        `claim_batch` claims."""
        urgent_first = case((records.c.record_type == URGENT_RECORD, 0), else_=1)
        candidates = (
            select(records.c.source_id, records.c.record_type)
            .where(_free(now), records.c.updated_at >= since)
            .order_by(urgent_first, records.c.updated_at, records.c.source_id)
            .limit(limit)
        )
        found = self._claim(candidates, now)
        return sorted(
            found,
            key=lambda item: (item.record_type != URGENT_RECORD, item.received_at, item.source_id),
        )

    def _claim(self, candidates: Select[Any], now: datetime) -> list[QueuedRecord]:
        """Claim the candidate records for a new batch. Two mapping processes never get the
        same record: on PostgreSQL a claim passes over the rows another is claiming (SKIP
        LOCKED), on SQLite it has the store to itself."""
        # Materialized, the candidates are chosen once: PostgreSQL may otherwise run a LIMIT
        # subquery again for the UPDATE and claim more rows than asked for.
        chosen = (
            candidates.with_for_update(skip_locked=True).cte("chosen").prefix_with("MATERIALIZED")
        )
        claim = str(uuid.uuid4())
        with self.engine.begin() as connection:
            keys = connection.execute(
                update(records)
                .where(
                    tuple_(records.c.source_id, records.c.record_type).in_(
                        select(chosen.c.source_id, chosen.c.record_type)
                    ),
                    _free(now),
                )
                .values(mapping_claim=claim, mapping_claimed_until=now + self.claim_for)
                .returning(records.c.source_id, records.c.record_type)
            ).all()
            found: list[QueuedRecord] = []
            for start in range(0, len(keys), _CHUNK):
                query = (
                    select(
                        records.c.record_type,
                        records.c.source_id,
                        records.c.revision,
                        records.c.mapping_seq,
                        records.c.session_id,
                        records.c.first_received_at,
                        revisions.c.parsed,
                        records.c.updated_at,
                        records.c.mapping_claim,
                    )
                    .join(revisions, _current_revision())
                    .where(_keys(keys[start : start + _CHUNK]))
                )
                found += [QueuedRecord(*row) for row in connection.execute(query)]
        return found

    def hold(self, connection: Connection, batch: Sequence[QueuedRecord]) -> bool:
        """In the transaction that stores a batch's resources: whether the batch still holds
        every record it claimed (none was claimed again after its claim ran out). Their rows
        are then the transaction's until it ends: no other batch can claim them meanwhile."""
        held = 0
        for claim, keys in _by_claim(batch).items():
            for start in range(0, len(keys), _CHUNK):
                result = connection.execute(
                    update(records)
                    .where(records.c.mapping_claim == claim, _keys(keys[start : start + _CHUNK]))
                    .values(mapping_claimed_until=records.c.mapping_claimed_until)
                )
                held += int(result.rowcount or 0)
        return held == len(batch)

    def release(self, connection: Connection, batch: Sequence[QueuedRecord]) -> None:
        """Let go of the records a batch still holds (their state stays as it is)."""
        for claim, keys in _by_claim(batch).items():
            for start in range(0, len(keys), _CHUNK):
                connection.execute(
                    update(records)
                    .where(records.c.mapping_claim == claim, _keys(keys[start : start + _CHUNK]))
                    .values(mapping_claim=None, mapping_claimed_until=None)
                )

    def sessions(self, session_ids: set[str]) -> dict[str, str]:
        """The parsed current revision of each of these sessions that has arrived."""
        if not session_ids:
            return {}
        query = (
            select(records.c.source_id, revisions.c.parsed)
            .join(revisions, _current_revision())
            .where(
                records.c.record_type == "infusion_session",
                records.c.source_id.in_(sorted(session_ids)),
            )
        )
        with self.engine.connect() as connection:
            return {row.source_id: row.parsed for row in connection.execute(query)}

    def session_rows(self, session_ids: set[str]) -> dict[str, SessionRows]:
        """What the protocol checks of these sessions read, in three statements per 500."""
        found = {session_id: SessionRows() for session_id in session_ids}
        ids = sorted(session_ids)
        series: dict[str, set[str]] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(ids), 500):
                chunk = ids[start : start + 500]
                query = (
                    select(records.c.source_id, records.c.series_id, revisions.c.parsed)
                    .join(revisions, _current_revision())
                    .where(
                        records.c.record_type == "infusion_session",
                        records.c.source_id.in_(chunk),
                    )
                )
                for row in connection.execute(query):
                    found[row.source_id].session = row.parsed
                    found[row.source_id].series_id = row.series_id
                    if row.series_id:
                        series.setdefault(row.series_id, set()).add(row.source_id)
                query = (
                    select(records.c.session_id, revisions.c.parsed)
                    .join(revisions, _current_revision())
                    .where(records.c.session_id.in_(chunk))
                    .order_by(records.c.session_id, records.c.record_type, records.c.source_id)
                )
                for row in connection.execute(query):
                    found[row.session_id].records.append(row.parsed)
            names = sorted(series)
            for start in range(0, len(names), 500):
                query = (
                    select(records.c.series_id, records.c.source_id, revisions.c.parsed)
                    .join(revisions, _current_revision())
                    .where(
                        records.c.record_type == "infusion_session",
                        records.c.series_id.in_(names[start : start + 500]),
                    )
                    .order_by(records.c.source_id)
                )
                for row in connection.execute(query):
                    for member in series[row.series_id]:
                        if member != row.source_id:
                            found[member].series.append(row.parsed)
        return found

    def patient_records(self, mrn: str, chunk: int = 100) -> Iterator[str]:
        """The parsed current revisions of an MRN's records, newest first, read a chunk at a
        time: a patient's demographics are usually in the newest few."""
        offset = 0
        while True:
            query = (
                select(revisions.c.parsed)
                .join(records, _current_revision())
                .where(records.c.mrn == mrn)
                .order_by(records.c.updated_at.desc(), records.c.source_id, records.c.record_type)
                .limit(chunk)
                .offset(offset)
            )
            with self.engine.connect() as connection:
                rows = [row.parsed for row in connection.execute(query)]
            yield from rows
            if len(rows) < chunk:
                return
            offset += chunk

    def series_members(self, series_ids: set[str]) -> set[str]:
        """The sessions of these series."""
        if not series_ids:
            return set()
        query = select(records.c.source_id).where(
            records.c.record_type == "infusion_session",
            records.c.series_id.in_(sorted(series_ids)),
        )
        with self.engine.connect() as connection:
            return {row.source_id for row in connection.execute(query)}

    def finish(self, connection: Connection, outcomes: Sequence[MappingOutcome]) -> None:
        """Record each outcome, unless the record was queued again while it was being mapped,
        and let go of the batch's claims."""
        for outcome in outcomes:
            record = outcome.record
            connection.execute(
                update(records)
                .where(
                    records.c.record_type == record.record_type,
                    records.c.source_id == record.source_id,
                    records.c.mapping_seq == record.mapping_seq,
                    records.c.mapping_claim == record.claim,
                )
                .values(
                    mapping_claim=None,
                    mapping_claimed_until=None,
                    mapping_state=outcome.state,
                    mapping_detail=orjson.dumps(outcome.detail).decode()
                    if outcome.detail
                    else None,
                    mapped_version=outcome.version,
                )
            )
        self.release(connection, [outcome.record for outcome in outcomes])

    def held(self, limit: int = 1000) -> list[HeldRecord]:
        """Records waiting for a mapping (or that failed to map), with the reason, oldest first."""
        query = (
            select(
                records.c.record_type,
                records.c.source_id,
                records.c.revision,
                records.c.mapping_state,
                records.c.mapping_detail,
                records.c.updated_at,
            )
            .where(records.c.mapping_state.in_(HELD_STATES))
            .order_by(records.c.updated_at, records.c.source_id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [
                HeldRecord(row[0], row[1], row[2], row[3], orjson.loads(row[4] or "{}"), row[5])
                for row in connection.execute(query)
            ]

    def state(self, record_type: str, source_id: str) -> dict[str, Any]:
        """A record's mapping state, the reason it is held, and the mapping version it used."""
        query = select(
            records.c.mapping_state, records.c.mapping_detail, records.c.mapped_version
        ).where(records.c.record_type == record_type, records.c.source_id == source_id)
        with self.engine.connect() as connection:
            row = connection.execute(query).one()
        body: dict[str, Any] = {"state": row[0]}
        if row[1]:
            body.update(orjson.loads(row[1]))
        if row[2]:
            body["version"] = row[2]
        return body

    def counts(self) -> dict[str, int]:
        query = select(records.c.mapping_state, func.count()).group_by(records.c.mapping_state)
        with self.engine.connect() as connection:
            return {row[0]: row[1] for row in connection.execute(query)}

    def requeue(self, connection: Connection, states: Sequence[str]) -> int:
        result = connection.execute(
            update(records)
            .where(records.c.mapping_state.in_(list(states)))
            .values(mapping_state=PENDING, mapping_seq=records.c.mapping_seq + 1)
        )
        return int(result.rowcount or 0)

    def stored_version(self) -> str | None:
        with self.engine.connect() as connection:
            return read_state(connection, MAPPING_VERSION)

    def locked_version(self, connection: Connection) -> str | None:
        """The mapping version, its row share-locked until the transaction ends: a process
        adopting another version (`set_version`) waits for the transaction."""
        return read_state(connection, MAPPING_VERSION, share_lock=True)

    def set_version(self, connection: Connection, version: str) -> None:
        write_state(connection, MAPPING_VERSION, version)
