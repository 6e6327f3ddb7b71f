"""Reads for operating the adapter, from the tables the intake, mapping and sync write: counts
by state, what waits longest, the codes that wait for a row, the run streak without the EHR."""

import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, and_, func, select

from adapter.store.mapping_queue import UNCODED, WAITING
from adapter.store.tables import fhir_resources as resources
from adapter.store.tables import source_record_revisions as revisions
from adapter.store.tables import source_records as records
from adapter.store.tables import sync_outbox as outbox
from adapter.store.tables import sync_runs as runs

UNDELIVERED = ("pending", "waiting", "dead")
SAFETY_SOURCES = ("adverse_event", "protocol")
"""Records whose resources are safety facts: side effects, and the protocol's breaches."""
MOST_HELD = 10_000
OWN_SESSION = ("infusion_session", "protocol")
"""Sources whose id is their session's."""


@dataclass
class HeldCode:
    """A local code without a row in its table, and the records it holds (`waiting`) or that
    went out with it as text alone (`uncoded`)."""

    table: str
    """The table's name: `drugs` for mappings/codes/drugs.yaml."""
    field: str
    code: str
    state: str
    since: datetime
    records: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.table, self.code.casefold(), self.state)


@dataclass(frozen=True)
class LateFact:
    """A safety fact (a serious side effect, a protocol breach) whose resources are not all in
    the EHR, and since when the oldest of them waits."""

    source_type: str
    source_id: str
    since: datetime
    states: tuple[str, ...]


@dataclass(frozen=True)
class HeldItem:
    """A resource the sync holds back or the EHR refused, with the record it came from."""

    resource_id: str
    resource_type: str
    version_id: int
    state: str
    attempts: int
    detail: dict[str, Any]
    updated_at: datetime
    source_type: str
    source_id: str
    session_id: str | None
    site: str | None = None
    """The clinic site of a group whose sync holds it; None in a single-site deployment."""

    @property
    def reason(self) -> str:
        return str(self.detail.get("reason") or "no reason recorded")


class OperationsReadings:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def records_by_state(self) -> dict[tuple[str, str], int]:
        query = select(records.c.record_type, records.c.mapping_state, func.count()).group_by(
            records.c.record_type, records.c.mapping_state
        )
        with self.engine.connect() as connection:
            return {(row[0], row[1]): row[2] for row in connection.execute(query)}

    def resources_by_state(self) -> dict[tuple[str, str], int]:
        query = select(outbox.c.resource_type, outbox.c.state, func.count()).group_by(
            outbox.c.resource_type, outbox.c.state
        )
        with self.engine.connect() as connection:
            return {(row[0], row[1]): row[2] for row in connection.execute(query)}

    def oldest_undelivered(self) -> datetime | None:
        """When the oldest version still not in the EHR was stored."""
        query = (
            select(func.min(resources.c.last_updated))
            .select_from(outbox.join(resources, resources.c.id == outbox.c.resource_id))
            .where(outbox.c.state.in_(UNDELIVERED))
        )
        with self.engine.connect() as connection:
            found: datetime | None = connection.execute(query).scalar_one_or_none()
        return found

    def held_codes(self) -> list[HeldCode]:
        """Every code that waits for its row, with its records, oldest first."""
        query = (
            select(
                records.c.record_type,
                records.c.source_id,
                records.c.mapping_state,
                records.c.mapping_detail,
                records.c.updated_at,
            )
            .where(records.c.mapping_state.in_((WAITING, UNCODED)))
            .order_by(records.c.updated_at)
            .limit(MOST_HELD)
        )
        found: dict[tuple[str, str, str], HeldCode] = {}
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                detail: dict[str, Any] = orjson.loads(row.mapping_detail or "{}")
                listed = detail.get("missing") or detail.get("uncoded") or []
                for code in listed:
                    table = str(code["table"]).removeprefix("codes/").removesuffix(".yaml")
                    held = HeldCode(table, code["field"], code["code"], row[2], row[4])
                    kept = found.setdefault(held.key, held)
                    if (row[0], row[1]) not in kept.records:
                        kept.records.append((row[0], row[1]))
        return sorted(found.values(), key=lambda h: (h.state != WAITING, h.since))

    def held_items(self, states: tuple[str, ...], limit: int = 1000) -> list[HeldItem]:
        """Outbox items in `states` with their source record and its session, oldest first."""
        query = (
            select(
                outbox.c.resource_id,
                outbox.c.resource_type,
                outbox.c.version_id,
                outbox.c.state,
                outbox.c.attempts,
                outbox.c.detail,
                outbox.c.updated_at,
                resources.c.source_type,
                resources.c.source_id,
                records.c.session_id,
                outbox.c.site,
            )
            .select_from(
                outbox.join(resources, resources.c.id == outbox.c.resource_id).outerjoin(
                    records,
                    and_(
                        records.c.record_type == resources.c.source_type,
                        records.c.source_id == resources.c.source_id,
                    ),
                )
            )
            .where(outbox.c.state.in_(states))
            .order_by(outbox.c.updated_at, outbox.c.resource_id)
            .limit(limit)
        )
        with self.engine.connect() as connection:
            return [
                HeldItem(
                    row.resource_id,
                    row.resource_type,
                    row.version_id,
                    row.state,
                    row.attempts,
                    orjson.loads(row.detail or "{}"),
                    row.updated_at,
                    row.source_type,
                    row.source_id,
                    row.session_id or (row.source_id if row.source_type in OWN_SESSION else None),
                    row.site,
                )
                for row in connection.execute(query)
            ]

    def run_streak(self) -> tuple[datetime | None, str | None]:
        """Since when the runs have not reached the EHR (every run since then failed, or left
        resources to retry and delivered nothing), and the last reason; (None, None) when the
        latest run reached it."""
        query = select(
            runs.c.started_at, runs.c.status, runs.c.counts, runs.c.error, runs.c.last_error
        ).order_by(runs.c.id.desc())
        since: datetime | None = None
        reason: str | None = None
        with self.engine.connect() as connection:
            for row in connection.execute(query.limit(1000)):
                counts: dict[str, int] = orjson.loads(row.counts)
                reached = row.status == "completed" and (
                    counts.get("delivered", 0) > 0 or counts.get("retry_later", 0) == 0
                )
                if reached or row.status == "running":
                    if reached:
                        break
                    continue
                since = row.started_at
                reason = reason or row.error or row.last_error
        return since, reason

    def last_success(self) -> datetime | None:
        query = select(func.max(runs.c.ended_at)).where(runs.c.status == "completed")
        with self.engine.connect() as connection:
            found: datetime | None = connection.execute(query).scalar_one_or_none()
        return found

    def late_safety_facts(self) -> list[LateFact]:
        """Serious side effects and protocol breaches with resources not in the EHR, by record,
        with when the oldest such version was stored (skipped types have their stand-ins)."""
        query = (
            select(
                resources.c.source_type,
                resources.c.source_id,
                func.min(resources.c.last_updated),
                outbox.c.state,
            )
            .select_from(outbox.join(resources, resources.c.id == outbox.c.resource_id))
            .where(
                outbox.c.state.in_(UNDELIVERED),
                resources.c.source_type.in_(SAFETY_SOURCES),
            )
            .group_by(resources.c.source_type, resources.c.source_id, outbox.c.state)
        )
        by_record: dict[tuple[str, str], list[tuple[datetime, str]]] = defaultdict(list)
        with self.engine.connect() as connection:
            for row in connection.execute(query):
                by_record[(row[0], row[1])].append((row[2], row[3]))
            serious = self._serious({sid for kind, sid in by_record if kind == "adverse_event"})
        return [
            LateFact(
                kind, source_id, min(a for a, _ in found), tuple(sorted({s for _, s in found}))
            )
            for (kind, source_id), found in sorted(by_record.items())
            if kind == "protocol" or source_id in serious
        ]

    def _serious(self, ids: set[str]) -> set[str]:
        """The adverse events among `ids` whose current revision says serious."""
        if not ids:
            return set()
        query = (
            select(records.c.source_id, revisions.c.parsed)
            .join(
                revisions,
                and_(
                    revisions.c.record_type == records.c.record_type,
                    revisions.c.source_id == records.c.source_id,
                    revisions.c.revision == records.c.revision,
                ),
            )
            .where(records.c.record_type == "adverse_event", records.c.source_id.in_(sorted(ids)))
        )
        with self.engine.connect() as connection:
            return {
                row.source_id
                for row in connection.execute(query)
                if orjson.loads(row.parsed).get("serious") is True
            }
