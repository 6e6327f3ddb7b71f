"""A clinic day's sessions and what became of each of their records and resources: read from the
records, the resources and the outbox, for the console."""

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import orjson
from sqlalchemy import Engine, and_, or_, select, tuple_

from adapter.store.tables import fhir_resources as resources
from adapter.store.tables import source_record_revisions as revisions
from adapter.store.tables import source_records as records
from adapter.store.tables import sync_outbox as outbox

SESSION = "infusion_session"
PROTOCOL = "protocol"
NEARBY = timedelta(days=30)
"""Sessions are looked for among the records received within this of the day (a session's
records arrive before, during and after it), and among the Procedures performed that day."""


@dataclass(frozen=True)
class RecordState:
    record_type: str
    source_id: str
    revision: int
    withdrawn: bool
    mapping_state: str
    detail: dict[str, Any]
    parsed: dict[str, Any]


@dataclass(frozen=True)
class ResourceState:
    resource_id: str
    resource_type: str
    version_id: int
    source_type: str
    source_id: str
    state: str | None
    """The outbox state (None: not queued for the EHR)."""
    detail: dict[str, Any]
    ehr_id: str | None
    content: dict[str, Any]


@dataclass
class SessionDay:
    """One session with its records and their resources."""

    session: RecordState
    records: list[RecordState] = field(default_factory=list)
    resources: list[ResourceState] = field(default_factory=list)

    @property
    def start(self) -> datetime | None:
        found = self.session.parsed.get("infusion_start") or self.session.parsed.get(
            "scheduled_start"
        )
        return datetime.fromisoformat(found) if found else None

    @property
    def mrn(self) -> str:
        return str(self.session.parsed.get("patient", {}).get("mrn", ""))

    @property
    def initials(self) -> str:
        patient = self.session.parsed.get("patient", {})
        names = [patient.get("given"), patient.get("family")]
        return "".join(f"{n.strip()[0].upper()}." for n in names if n and n.strip())

    def count(self, *states: str) -> int:
        return sum(1 for r in self.resources if r.state in states)


def _record(row: Any) -> RecordState:
    return RecordState(
        row.record_type,
        row.source_id,
        row.revision,
        row.withdrawn,
        row.mapping_state,
        orjson.loads(row.mapping_detail or "{}"),
        orjson.loads(row.parsed),
    )


_RECORD_COLUMNS = (
    records.c.record_type,
    records.c.source_id,
    records.c.revision,
    records.c.withdrawn,
    records.c.mapping_state,
    records.c.mapping_detail,
    revisions.c.parsed,
)
_CURRENT = and_(
    revisions.c.record_type == records.c.record_type,
    revisions.c.source_id == records.c.source_id,
    revisions.c.revision == records.c.revision,
)


class ClinicDay:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def sessions(self, day: date, zone: ZoneInfo) -> list[SessionDay]:
        """The sessions that start (or were scheduled to start) on `day` in the clinic's
        time zone, earliest first, each with its records and resources."""
        start = datetime.combine(day, time(), zone)
        end = start + timedelta(days=1)
        performed = select(resources.c.source_id).where(
            resources.c.resource_type == "Procedure",
            resources.c.source_type == SESSION,
            resources.c.date_start >= start - timedelta(days=1),
            resources.c.date_start < end + timedelta(days=1),
        )
        query = (
            select(*_RECORD_COLUMNS)
            .join(revisions, _CURRENT)
            .where(
                records.c.record_type == SESSION,
                or_(
                    and_(
                        records.c.updated_at >= start - NEARBY, records.c.updated_at < end + NEARBY
                    ),
                    records.c.source_id.in_(performed),
                ),
            )
        )
        with self.engine.connect() as connection:
            found = [_record(row) for row in connection.execute(query)]
        days = []
        for session in found:
            moment = session.parsed.get("infusion_start") or session.parsed.get("scheduled_start")
            if moment and start <= datetime.fromisoformat(moment) < end:
                days.append(SessionDay(session))
        self._fill(days)
        return sorted(days, key=lambda d: (d.start or start, d.session.source_id))

    def session(self, session_id: str) -> SessionDay | None:
        query = (
            select(*_RECORD_COLUMNS)
            .join(revisions, _CURRENT)
            .where(records.c.record_type == SESSION, records.c.source_id == session_id)
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        if row is None:
            return None
        found = SessionDay(_record(row))
        self._fill([found])
        return found

    def _fill(self, days: list[SessionDay]) -> None:
        """Each session's records (its own and those naming it) and their resources."""
        if not days:
            return
        by_id = {d.session.source_id: d for d in days}
        query = (
            select(*_RECORD_COLUMNS, records.c.session_id)
            .join(revisions, _CURRENT)
            .where(records.c.session_id.in_(sorted(by_id)))
            .order_by(records.c.record_type, records.c.source_id)
        )
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                by_id[row.session_id].records.append(_record(row))
            for found in days:
                found.records.insert(0, found.session)
            owners: dict[tuple[str, str], SessionDay] = {}
            for found in days:
                owners[(PROTOCOL, found.session.source_id)] = found
                for record in found.records:
                    owners[(record.record_type, record.source_id)] = found
            keys = sorted(owners)
            for begin in range(0, len(keys), 300):
                chunk = keys[begin : begin + 300]
                query = (
                    select(
                        resources.c.id,
                        resources.c.resource_type,
                        resources.c.version_id,
                        resources.c.source_type,
                        resources.c.source_id,
                        resources.c.content,
                        outbox.c.state,
                        outbox.c.detail,
                        outbox.c.ehr_id,
                    )
                    .outerjoin(outbox, outbox.c.resource_id == resources.c.id)
                    .where(tuple_(resources.c.source_type, resources.c.source_id).in_(chunk))
                    .order_by(resources.c.source_type, resources.c.id)
                )
                for row in connection.execute(query):
                    owners[(row.source_type, row.source_id)].resources.append(
                        ResourceState(
                            row.id,
                            row.resource_type,
                            row.version_id,
                            row.source_type,
                            row.source_id,
                            row.state,
                            orjson.loads(row.detail or "{}"),
                            row.ehr_id,
                            orjson.loads(row.content),
                        )
                    )


def by_source(found: list[ResourceState]) -> dict[tuple[str, str], list[ResourceState]]:
    grouped: dict[tuple[str, str], list[ResourceState]] = defaultdict(list)
    for resource in found:
        grouped[(resource.source_type, resource.source_id)].append(resource)
    return grouped
