"""The record of access: one entry per request (who, what interaction, on what, the outcome),
kept in the store, append-only, written in batches off the request path."""

import logging
import threading
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, insert, select

from adapter.store.tables import audit_events

log = logging.getLogger(__name__)
_Item = TypeVar("_Item")
FLUSH_SECONDS = 0.5
BATCH = 500
MOST_IDS = 100
"""Ids kept per entry; an intake of more records keeps the first ones and says how many."""

INTERACTIONS = {
    "read": "read",
    "vread": "vread",
    "instance_history": "history-instance",
    "type_history": "history-type",
    "search_get": "search-type",
    "search_post": "search-type",
    "export_system": "export",
    "export_patients": "export",
    "export_group": "export",
    "export_status": "export-status",
    "export_cancel": "export-cancel",
    "export_file": "export-file",
    "refuse_write": "write",
    "submit_records": "intake",
    "get_record": "record-read",
    "get_revision": "record-read",
    "token": "token",
}
"""Route names and the interaction they are; any other route is an admin action."""
UNAUDITED = {"health", "metadata", "smart_configuration", "fhir_smart_configuration"}
"""Open routes that show nothing of any patient."""


@dataclass(frozen=True)
class AuditEntry:
    recorded_at: datetime
    client_id: str | None
    interaction: str
    method: str
    path: str
    resource_type: str | None
    resource_ids: list[str] | None
    query: str | None
    outcome: int
    address: str | None
    id: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "recorded_at": self.recorded_at.isoformat(),
            "client_id": self.client_id,
            "interaction": self.interaction,
            "method": self.method,
            "path": self.path,
            "resource_type": self.resource_type,
            "resource_ids": self.resource_ids,
            "query": self.query,
            "outcome": self.outcome,
            "address": self.address,
        }


def _row(entry: AuditEntry) -> dict[str, Any]:
    values = entry.as_dict()
    values.pop("id")
    values["recorded_at"] = entry.recorded_at
    values["resource_ids"] = (
        orjson.dumps(entry.resource_ids).decode() if entry.resource_ids else None
    )
    return values


class AuditLog:
    """Appends and queries; nothing here updates or deletes (the store refuses it as well)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def append(self, entries: list[AuditEntry]) -> None:
        if entries:
            with self.engine.begin() as connection:
                connection.execute(insert(audit_events), [_row(e) for e in entries])

    def query(
        self,
        limit: int,
        before: int | None = None,
        since: datetime | None = None,
        client_id: str | None = None,
        interaction: str | None = None,
        until: datetime | None = None,
        outcomes: tuple[int, int] | None = None,
    ) -> list[AuditEntry]:
        """Newest first; `before` is the id of the last entry of the previous page; `until`
        excludes entries from that instant on; `outcomes` keeps statuses from the first to the
        second, inclusive."""
        query = select(audit_events).order_by(audit_events.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(audit_events.c.id < before)
        if since is not None:
            query = query.where(audit_events.c.recorded_at >= since)
        if client_id is not None:
            query = query.where(audit_events.c.client_id == client_id)
        if interaction is not None:
            query = query.where(audit_events.c.interaction == interaction)
        if until is not None:
            query = query.where(audit_events.c.recorded_at < until)
        if outcomes is not None:
            query = query.where(audit_events.c.outcome.between(*outcomes))
        with self.engine.connect() as connection:
            rows = [dict(row._mapping) for row in connection.execute(query)]
        for row in rows:
            row["resource_ids"] = orjson.loads(row["resource_ids"] or "null")
        return [AuditEntry(**row) for row in rows]


class AuditWriter:
    """Entries are kept by requests and written by one thread, every half second or once 500
    are waiting; `flush` writes what is kept now (reading the record flushes first, and so
    does stopping the service). A request only appends to a deque: the thread is woken by a
    full batch or a flush, not by every request (each wake-up would take the GIL from the
    request path)."""

    def __init__(self, log_: AuditLog) -> None:
        self.audit = log_
        self.entries: deque[AuditEntry] = deque()
        self.flushes: deque[threading.Event] = deque()
        self.wake = threading.Event()
        self.stopping = False
        self.thread: threading.Thread | None = None
        self.lock = threading.Lock()

    def record(self, entry: AuditEntry) -> None:
        if self.thread is None:
            with self.lock:
                if self.thread is None:
                    self.thread = threading.Thread(target=self._run, name="audit", daemon=True)
                    self.thread.start()
        self.entries.append(entry)
        if len(self.entries) >= BATCH:
            self.wake.set()

    def flush(self) -> None:
        if self.thread is None:
            return
        done = threading.Event()
        self.flushes.append(done)
        self.wake.set()
        done.wait(timeout=30)

    def close(self) -> None:
        """Write what is kept and stop the thread; a later entry starts it again (an app can
        be started and stopped more than once, as tests do)."""
        with self.lock:
            if self.thread is not None:
                self.stopping = True
                self.wake.set()
                self.thread.join(timeout=30)
                self.thread = None
                self.stopping = False

    def _run(self) -> None:
        unwritten: list[AuditEntry] = []
        while True:
            self.wake.wait(FLUSH_SECONDS)
            self.wake.clear()
            stopping = self.stopping
            flushes = _taken(self.flushes)
            unwritten.extend(_taken(self.entries))
            if unwritten and self._write(unwritten):
                unwritten = []
            for done in flushes:
                done.set()
            if stopping:
                return

    def _write(self, entries: list[AuditEntry]) -> bool:
        try:
            self.audit.append(entries)
        except Exception as exc:  # the store is down: the entries wait for the next write
            log.error("could not write %d audit entries: %s", len(entries), type(exc).__name__)
            return False
        return True


def _taken(items: deque[_Item]) -> list[_Item]:
    """What the deque holds now, taken out of it (others may append meanwhile)."""
    return [items.popleft() for _ in range(len(items))]
