"""The record of access: one entry per request (who, what interaction, on what, the outcome),
kept in the store, append-only and chained, written in batches off the request path.

What a caller controls (path, query, ids, method) is stored escaped and cut to its column, so
that any value fits; a batch the store refuses is split until the entry it refuses is found,
and that entry is kept without what the store could not take."""

import dataclasses
import logging
import re
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

import orjson
from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError

from adapter.security.audit_chain import chain_key, link
from adapter.store.tables import audit_chain_head, audit_events

log = logging.getLogger(__name__)
_Item = TypeVar("_Item")
FLUSH_SECONDS = 0.5
BATCH = 500
MOST_IDS = 100
"""Ids kept per entry; an intake of more records keeps the first ones and says how many."""
LONGEST: dict[str, int] = {
    "client_id": 64,
    "interaction": 32,
    "method": 32,
    "path": 2000,
    "resource_type": 64,
    "query": 8000,
    "address": 64,
}
"""The longest value kept of each text field; what is longer is cut and ends in `…`."""
LONGEST_ID = 200
FINAL_ATTEMPTS = 5
FINAL_PAUSE = 0.5
"""Writes tried when the service stops and the store does not answer, and the pause between."""
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")
UNAVAILABLE = (OperationalError, InterfaceError, DisconnectionError, ConnectionError, TimeoutError)
"""Failures of the store rather than of an entry: the entries wait for the next write."""


def _escaped(found: re.Match[str]) -> str:
    code = ord(found.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def fit(value: str | None, longest: int) -> str | None:
    """A caller's text as the store can keep it: control characters (NUL included) and lone
    surrogates escaped as \\xNN or \\uNNNN, then cut to `longest` characters."""
    if value is None:
        return None
    escaped = _UNPRINTABLE.sub(_escaped, value)
    return escaped if len(escaped) <= longest else escaped[: longest - 1] + "…"


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

    def reduced(self) -> "AuditEntry":
        """The entry without the caller's path, query and ids: kept when the store refuses
        the whole of it."""
        return dataclasses.replace(
            self, path="(not storable)", query=None, resource_ids=None, resource_type=None
        )


def _row(entry: AuditEntry, entry_id: int) -> dict[str, Any]:
    """The stored row of an entry: every text fitted to its column."""
    values = entry.as_dict()
    for name, longest in LONGEST.items():
        values[name] = fit(values[name], longest)
    values["path"] = values["path"] or ""
    values["id"] = entry_id
    values["recorded_at"] = entry.recorded_at.astimezone(UTC)
    ids = [fit(str(one), LONGEST_ID) for one in entry.resource_ids or []]
    values["resource_ids"] = orjson.dumps(ids).decode() if ids else None
    return values


class AuditLog:
    """Appends and queries; nothing here updates or deletes (the store refuses it as well)."""

    def __init__(self, engine: Engine, secret: str) -> None:
        self.engine = engine
        self.key = chain_key(secret)

    def append(self, entries: list[AuditEntry]) -> None:
        """Write the entries at the end of the chain, in one transaction. The head's update
        comes first: it takes the write lock (SQLite) or the row's lock (PostgreSQL), so that
        writers in several processes chain in turn."""
        if not entries:
            return
        with self.engine.begin() as connection:
            connection.execute(update(audit_chain_head).values(last_id=audit_chain_head.c.last_id))
            previous = connection.execute(select(audit_chain_head.c.last_chain)).scalar() or ""
            last_id = connection.execute(select(func.max(audit_events.c.id))).scalar() or 0
            rows = []
            for entry in entries:
                last_id += 1
                row = _row(entry, last_id)
                row["chain"] = previous = link(self.key, previous, row)
                rows.append(row)
            connection.execute(insert(audit_events), rows)
            connection.execute(
                update(audit_chain_head).values(last_id=last_id, last_chain=previous)
            )

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
            row.pop("chain")
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
            if unwritten:
                unwritten = self._write(unwritten)
            for done in flushes:
                done.set()
            if stopping:
                self._last_writes(unwritten)
                return

    def _last_writes(self, unwritten: list[AuditEntry]) -> None:
        """The service stops: what the store did not take yet is tried again a few times."""
        for _ in range(FINAL_ATTEMPTS):
            if not unwritten:
                return
            time.sleep(FINAL_PAUSE)
            unwritten = self._write(unwritten + _taken(self.entries))
        if unwritten:
            log.error("%d audit entries were not written: the store did not answer", len(unwritten))

    def _write(self, entries: list[AuditEntry]) -> list[AuditEntry]:
        """Write the entries; those left when the store is unavailable are returned. A batch
        the store refuses for its content is split, so that one entry cannot hold the rest."""
        try:
            self.audit.append(entries)
        except UNAVAILABLE as exc:
            log.error("could not write %d audit entries: %s", len(entries), type(exc).__name__)
            return entries
        except Exception as exc:
            if len(entries) > 1:
                half = len(entries) // 2
                return self._write(entries[:half]) + self._write(entries[half:])
            reduced = entries[0].reduced()
            if reduced == entries[0]:
                log.error("the store refused an audit entry: %s", type(exc).__name__)
                return []
            log.error(
                "the store refused an audit entry (%s); kept without its path, query and ids",
                type(exc).__name__,
            )
            return self._write([reduced])
        return []


def _taken(items: deque[_Item]) -> list[_Item]:
    """What the deque holds now, taken out of it (others may append meanwhile)."""
    return [items.popleft() for _ in range(len(items))]
