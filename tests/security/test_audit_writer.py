"""The audit writer: entries kept by requests are written in batches by one thread, within
half a second, at once when a batch is full, on flush and on close; a failed write keeps them."""

import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine

from adapter.security import audit
from adapter.security.audit import BATCH, FLUSH_SECONDS, AuditEntry, AuditLog, AuditWriter
from adapter.settings import DEVELOPMENT_SECRET
from adapter.store import migrate
from adapter.store.engine import make_engine


def _entry(number: int) -> AuditEntry:
    return AuditEntry(
        recorded_at=datetime.now(UTC),
        client_id=None,
        interaction="read",
        method="GET",
        path=f"/fhir/Observation/{number}",
        resource_type="Observation",
        resource_ids=[f"Observation/{number}"],
        query=None,
        outcome=200,
        address="127.0.0.1",
    )


class FailingOnce(AuditLog):
    """The store's audit log, whose first write fails as a store that is down would."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine, DEVELOPMENT_SECRET)
        self.failed = threading.Event()

    def append(self, entries: list[AuditEntry]) -> None:
        if not self.failed.is_set():
            self.failed.set()
            raise ConnectionError("the store is down")
        super().append(entries)


def _log(tmp_path: Path) -> AuditLog:
    engine = make_engine(f"sqlite:///{tmp_path}/audit.db")
    migrate.upgrade(engine)
    return AuditLog(engine, DEVELOPMENT_SECRET)


def _paths(log: AuditLog) -> list[str]:
    return sorted(entry.path for entry in log.query(limit=10 * BATCH))


def test_entries_are_written_within_the_interval_without_a_flush(tmp_path: Path) -> None:
    log = _log(tmp_path)
    writer = AuditWriter(log)
    writer.record(_entry(1))
    writer.record(_entry(2))

    deadline = time.monotonic() + 10 * FLUSH_SECONDS
    while len(_paths(log)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    writer.close()

    assert _paths(log) == ["/fhir/Observation/1", "/fhir/Observation/2"]


def test_a_full_batch_is_written_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An interval far longer than any stall of a busy machine: a batch written before it ends
    # was written because it was full.
    interval = 60.0
    monkeypatch.setattr(audit, "FLUSH_SECONDS", interval)
    log = _log(tmp_path)
    writer = AuditWriter(log)
    writer.record(_entry(0))
    began = time.monotonic()
    for number in range(1, BATCH + 1):
        writer.record(_entry(number))

    while len(_paths(log)) < BATCH and time.monotonic() - began < interval:
        time.sleep(0.01)
    waited = time.monotonic() - began
    written = len(_paths(log))
    writer.close()

    assert waited < interval / 4
    assert written >= BATCH
    assert len(_paths(log)) == BATCH + 1


def test_flush_and_close_write_what_is_kept(tmp_path: Path) -> None:
    log = _log(tmp_path)
    writer = AuditWriter(log)
    writer.record(_entry(1))
    writer.flush()
    assert _paths(log) == ["/fhir/Observation/1"]

    writer.record(_entry(2))
    writer.close()
    assert _paths(log) == ["/fhir/Observation/1", "/fhir/Observation/2"]


def test_a_failed_write_keeps_the_entries_for_the_next(tmp_path: Path) -> None:
    log = _log(tmp_path)
    failing = FailingOnce(log.engine)
    writer = AuditWriter(failing)
    writer.record(_entry(1))
    writer.flush()
    assert failing.failed.is_set()
    assert _paths(log) == []

    writer.record(_entry(2))
    writer.flush()
    writer.close()

    assert _paths(log) == ["/fhir/Observation/1", "/fhir/Observation/2"]


def test_a_closed_writer_starts_again_for_the_next_entry(tmp_path: Path) -> None:
    log = _log(tmp_path)
    writer = AuditWriter(log)
    writer.record(_entry(1))
    writer.close()

    began = time.monotonic()
    for number in (2, 3):
        writer.record(_entry(number))
        writer.flush()
    flushed_in = time.monotonic() - began
    writer.close()

    assert flushed_in < FLUSH_SECONDS * 2
    assert _paths(log) == [f"/fhir/Observation/{n}" for n in (1, 2, 3)]
