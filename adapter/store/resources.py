"""The FHIR resources the adapter emits, versioned: a new version only when the content changes."""

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, delete, select, update

from adapter.fhir.indexing import SERIES_PARAM, index
from adapter.store import raw
from adapter.store.clock import take_turn
from adapter.store.outbox import Queued, delivery_kind, enqueue, is_urgent
from adapter.store.tables import fhir_resource_versions as versions
from adapter.store.tables import fhir_resources as resources
from adapter.store.tables import fhir_search_tokens as tokens

Json = dict[str, Any]
WITHDRAWN = "entered-in-error"
_WITHDRAWN_STATUS = {
    "Observation": WITHDRAWN,
    "Procedure": WITHDRAWN,
    "MedicationAdministration": WITHDRAWN,
    "DetectedIssue": WITHDRAWN,
    "DocumentReference": WITHDRAWN,
    "Encounter": WITHDRAWN,
    "CarePlan": WITHDRAWN,
}
"""The status that withdraws a resource of each type the store may have to withdraw itself
(a resource its record no longer maps to)."""
_AMENDABLE = frozenset({"Observation", "DetectedIssue"})
"""Types whose status says `amended` for a version that changed what a final one said
(http://hl7.org/fhir/R4/valueset-observation-status.html)."""
NOT_DELIVERED = frozenset({"Patient", "Organization", "Location"})
"""Types served on the FHIR endpoint and never queued for the EHR: the EHR owns its patients,
and keeps its own directory of the clinic's organization and premises (the references to the
adapter's are left out of what it gets)."""
MAPPING_TAG_PREFIX = "mapping-"
"""The code of the meta.tag that names the mapping version that made a resource."""


def content_hash(resource: Json) -> str:
    """A hash of what a resource says: everything but meta.versionId, meta.lastUpdated and the
    tag naming the mapping version (a new mapping that says the same makes no new version).
    Every other tag counts: a withdrawal carried in a tag is a change."""
    meta = {
        k: v
        for k, v in resource.get("meta", {}).items()
        if k not in ("tag", "versionId", "lastUpdated")
    }
    tags = [
        tag
        for tag in resource.get("meta", {}).get("tag", [])
        if not str(tag.get("code", "")).startswith(MAPPING_TAG_PREFIX)
    ]
    if tags:
        meta["tag"] = tags
    return hashlib.sha256(orjson.dumps({**resource, "meta": meta})).hexdigest()


def amended(resource: Json) -> Json:
    """A later version of a resource as stored: `final` becomes `amended` where the type
    has that status, since what the earlier version said has changed."""
    if resource["resourceType"] in _AMENDABLE and resource.get("status") == "final":
        return {**resource, "status": "amended"}
    return resource


@dataclass(frozen=True)
class MappedRecord:
    """The resources one source record maps to now."""

    source_type: str
    source_id: str
    resources: list[Json]
    received_at: datetime | None = None
    """When the revision mapped was received (None: the resources' journey starts as they are
    stored)."""
    site: str | None = None
    """The clinic site of a group the resources belong to; None in a single-site deployment."""


@dataclass
class SaveCounts:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    withdrawn: int = 0
    queued_sites: set[str | None] = field(default_factory=set)
    """The clinic sites whose resources were queued for the EHR (None: resources of no site)."""


@dataclass(frozen=True)
class StoredResource:
    resource_type: str
    id: str
    version_id: int
    last_updated: datetime
    content: str


_TOKEN_ROW = f"INSERT INTO {tokens.name} (resource_id, param, system, code) VALUES (?, ?, ?, ?)"


class ResourceWriter:
    """Writes resource versions inside the caller's transaction, and queues each new version
    for the EHR in that same transaction. The transaction takes its turn on the version clock
    first (adapter/store/clock.py): writers on the store commit one after another, each with
    a lastUpdated later than the last one committed."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        self._moment: datetime | None = None

    def turn(self, now: datetime) -> datetime:
        """This transaction's lastUpdated, its turn taken on the first call: after it, what the
        transaction reads includes every version committed before its own."""
        if self._moment is None:
            self._moment = take_turn(self._connection, now)
        return self._moment

    def save(self, mapped: Sequence[MappedRecord], now: datetime) -> SaveCounts:
        """Store what the records map to now; every version written has the turn's time."""
        now = self.turn(now)
        counts = SaveCounts()
        outputs = {
            resource["id"]: (record, resource) for record in mapped for resource in record.resources
        }
        current = self._current(outputs)
        sources = {(record.source_type, record.source_id) for record in mapped}
        source_types = {
            resource_id: record.source_type for resource_id, (record, _) in outputs.items()
        }
        received = {resource_id: record.received_at for resource_id, (record, _) in outputs.items()}
        sites = {resource_id: record.site for resource_id, (record, _) in outputs.items()}
        inserts: list[Json] = []
        changes: list[Json] = []
        history: list[Json] = []
        for resource_id, (record, resource) in outputs.items():
            digest = content_hash(resource)
            found = current.get(resource_id)
            if found is not None and found[1] == digest:
                counts.unchanged += 1
                continue
            version = 1 if found is None else found[0] + 1
            # The hash is of the resource as mapped, so that mapping it again is `unchanged`.
            stored = resource if found is None else amended(resource)
            row = self._row(stored, version, digest, now)
            history.append(
                {
                    k: row[k]
                    for k in ("id", "version_id", "resource_type", "last_updated", "content")
                }
            )
            if found is None:
                inserts.append(
                    {
                        **row,
                        "source_type": record.source_type,
                        "source_id": record.source_id,
                        "site": record.site,
                    }
                )
                counts.created += 1
            else:
                changes.append(row)
                counts.updated += 1
        source_sites = {record.source_id: record.site for record in mapped}
        for orphan, source_type, orphan_source in self._orphans(sources, set(outputs)):
            withdrawn = _withdraw(orjson.loads(orphan.content))
            if withdrawn is None:
                continue
            source_types[orphan.id] = source_type
            sites[orphan.id] = source_sites.get(orphan_source)
            row = self._row(withdrawn, orphan.version_id + 1, content_hash(withdrawn), now)
            changes.append(row)
            history.append(
                {
                    k: row[k]
                    for k in ("id", "version_id", "resource_type", "last_updated", "content")
                }
            )
            counts.withdrawn += 1
        self._index(inserts, changes)
        if inserts:
            self._connection.execute(resources.insert(), inserts)
        if changes:
            self._connection.execute(
                update(resources)
                .where(resources.c.id == bindparam("key"))
                .values(
                    version_id=bindparam("new_version_id"),
                    last_updated=bindparam("new_last_updated"),
                    content_hash=bindparam("new_content_hash"),
                    content=bindparam("new_content"),
                    date_start=bindparam("new_date_start"),
                    date_end=bindparam("new_date_end"),
                ),
                [
                    {
                        "key": row["id"],
                        "new_version_id": row["version_id"],
                        "new_last_updated": row["last_updated"],
                        "new_content_hash": row["content_hash"],
                        "new_content": row["content"],
                        "new_date_start": row["date_start"],
                        "new_date_end": row["date_end"],
                    }
                    for row in changes
                ],
            )
        if history:
            self._connection.execute(versions.insert(), history)
            history = [row for row in history if row["resource_type"] not in NOT_DELIVERED]
            queued = []
            for row in history:
                kind = delivery_kind(source_types[row["id"]], row["resource_type"])
                queued.append(
                    Queued(
                        row["id"],
                        row["resource_type"],
                        row["version_id"],
                        kind,
                        is_urgent(kind, row["content"]),
                        received.get(row["id"]),
                        sites.get(row["id"]),
                    )
                )
            enqueue(self._connection, queued, now)
            counts.queued_sites = {q.site for q in queued}
        return counts

    def _index(self, new: list[Json], changed: list[Json]) -> None:
        """Write the search index rows of new resources, and replace those of changed ones."""
        ids = [row["id"] for row in changed]
        for start in range(0, len(ids), 500):
            self._connection.execute(
                delete(tokens).where(tokens.c.resource_id.in_(ids[start : start + 500]))
            )
        values = [
            (row["id"], param, system, code)
            for row in (*new, *changed)
            for param, system, code in row.pop("_tokens")
        ]
        if values:
            # Many rows of plain strings: straight to the driver (a Core insert costs more in
            # SQLAlchemy's work for each row than the database spends on it).
            self._connection.exec_driver_sql(
                raw.statement(self._connection.engine, _TOKEN_ROW), values
            )

    def _row(self, resource: Json, version: int, digest: str, now: datetime) -> Json:
        meta = {
            "versionId": str(version),
            "lastUpdated": now.isoformat(),
            **{
                k: v
                for k, v in resource.get("meta", {}).items()
                if k not in ("versionId", "lastUpdated")
            },
        }
        content = orjson.dumps({**resource, "meta": meta}).decode()
        search = index(resource)
        return {
            "_tokens": search.tokens,
            "date_start": search.date_start,
            "date_end": search.date_end,
            "id": resource["id"],
            "resource_type": resource["resourceType"],
            "version_id": version,
            "last_updated": now,
            "content_hash": digest,
            "content": content,
        }

    def _current(self, ids: Iterable[str]) -> dict[str, tuple[int, str]]:
        wanted = list(ids)
        found: dict[str, tuple[int, str]] = {}
        for start in range(0, len(wanted), 500):
            query = select(resources.c.id, resources.c.version_id, resources.c.content_hash).where(
                resources.c.id.in_(wanted[start : start + 500])
            )
            for row in self._connection.execute(query):
                found[row.id] = (row.version_id, row.content_hash)
        return found

    def _orphans(
        self, sources: set[tuple[str, str]], keep: set[str]
    ) -> list[tuple[StoredResource, str, str]]:
        """Resources a record mapped to before and maps to no longer, with their source type
        and id."""
        source_ids = sorted({source_id for _, source_id in sources})
        orphans = []
        for start in range(0, len(source_ids), 500):
            query = select(
                resources.c.resource_type,
                resources.c.id,
                resources.c.version_id,
                resources.c.last_updated,
                resources.c.content,
                resources.c.source_type,
                resources.c.source_id,
            ).where(resources.c.source_id.in_(source_ids[start : start + 500]))
            for row in self._connection.execute(query):
                if (row.source_type, row.source_id) in sources and row.id not in keep:
                    stored = StoredResource(
                        row.resource_type, row.id, row.version_id, row.last_updated, row.content
                    )
                    orphans.append((stored, row.source_type, row.source_id))
        return orphans


WITHDRAWN_NOTE = "Entered in error: what this note said was withdrawn."


def _withdraw(resource: Json) -> Json | None:
    """The resource marked entered-in-error, or None when it already is (or cannot be). A
    note (DocumentReference) says so in its own words too: no reader of its text alone takes
    it for a current one."""
    status = _WITHDRAWN_STATUS.get(resource["resourceType"])
    if status is None or resource.get("status") == status:
        return None
    withdrawn = {**resource, "status": status}
    if resource["resourceType"] == "DocumentReference":
        withdrawn["description"] = WITHDRAWN_NOTE
        withdrawn["content"] = [
            {
                **item,
                "attachment": {
                    **item.get("attachment", {}),
                    "data": base64.b64encode(WITHDRAWN_NOTE.encode() + b"\n").decode(),
                },
            }
            for item in resource.get("content", [])
        ]
    return withdrawn


STORED_COLUMNS = (
    resources.c.resource_type,
    resources.c.id,
    resources.c.version_id,
    resources.c.last_updated,
    resources.c.content,
)


class ResourceStore:
    """Reads the stored resources: by id, by version, by the record they came from."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def refresh_statistics(self) -> None:
        """Let the query planner see the tables as they are now, after a large load: without
        statistics both SQLite and PostgreSQL may scan instead of using the search index, and
        PostgreSQL, taking the sync's queue for nearly empty, sorts all of it for each batch
        (100 ms a batch at 30,000 queued, 0.7 ms by the queue's index)."""
        with self.engine.begin() as connection:
            connection.exec_driver_sql(
                "ANALYZE"
                if connection.dialect.name == "sqlite"
                else "ANALYZE fhir_resources, fhir_search_tokens, source_records, sync_outbox"
            )

    def get(self, resource_type: str, resource_id: str) -> StoredResource | None:
        query = select(*STORED_COLUMNS).where(
            resources.c.resource_type == resource_type, resources.c.id == resource_id
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).one_or_none()
        return StoredResource(*row) if row else None

    def history(self, resource_id: str) -> list[StoredResource]:
        query = (
            select(
                versions.c.resource_type,
                versions.c.id,
                versions.c.version_id,
                versions.c.last_updated,
                versions.c.content,
            )
            .where(versions.c.id == resource_id)
            .order_by(versions.c.version_id)
        )
        with self.engine.connect() as connection:
            return [StoredResource(*row) for row in connection.execute(query)]

    def for_source(self, source_type: str, source_id: str) -> list[StoredResource]:
        query = (
            select(*STORED_COLUMNS)
            .where(resources.c.source_id == source_id, resources.c.source_type == source_type)
            .order_by(resources.c.resource_type, resources.c.id)
        )
        with self.engine.connect() as connection:
            return [StoredResource(*row) for row in connection.execute(query)]

    def series_of_procedures(self, references: set[str]) -> set[str]:
        """The infusion series these stored Procedures (`Procedure/id`) name."""
        ids = sorted(reference.split("/", 1)[1] for reference in references)
        if not ids:
            return set()
        query = select(tokens.c.code).where(
            tokens.c.param == SERIES_PARAM, tokens.c.resource_id.in_(ids)
        )
        with self.engine.connect() as connection:
            return {row.code for row in connection.execute(query)}

    def all_current(self) -> list[StoredResource]:
        query = select(*STORED_COLUMNS).order_by(resources.c.resource_type, resources.c.id)
        with self.engine.connect() as connection:
            return [StoredResource(*row) for row in connection.execute(query)]
