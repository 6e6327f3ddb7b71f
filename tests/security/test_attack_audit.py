"""Attacks on the record of access, on SQLite and PostgreSQL: requests whose path, method or
type segment the store could not take stopped the audit log on PostgreSQL (finding 2); the
append-only rule could be bypassed with TRUNCATE or a replacing insert (4); the chain and
`infusion-adapter audit verify` find what was changed behind the adapter's back."""

import threading
from datetime import UTC, datetime

import pytest
from click.testing import CliRunner
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from adapter.cli import main
from adapter.runtime import Runtime
from adapter.security import audit
from adapter.security.audit import AuditEntry, AuditLog, AuditWriter
from adapter.settings import Settings
from tests.security.conftest import RunningService


def _entry(path: str, method: str = "GET") -> AuditEntry:
    return AuditEntry(
        recorded_at=datetime.now(UTC),
        client_id=None,
        interaction="read",
        method=method,
        path=path,
        resource_type="Observation",
        resource_ids=[path],
        query=None,
        outcome=200,
        address="127.0.0.1",
    )


def test_what_a_caller_sends_cannot_stop_the_audit(running: RunningService) -> None:
    long_type = "A" + "b" * 69
    with running.client() as client:
        answers = [
            client.get("/fhir/Observation/a%00b"),
            client.request("PROPPATCH", "/fhir/Observation"),
            client.request("MKCALENDAR", "/fhir/Observation"),
            client.get(f"/fhir/{long_type}/x"),
            client.get("/api/v1/audit", params={"client_id": "a\u0000b"}),
        ]
    with running.signed_in() as client:
        after = client.get("/fhir/Procedure?_count=1")

    entries = running.audit()
    paths = {entry.path for entry in entries}
    methods = {entry.method for entry in entries}
    assert all(answer.status_code < 500 for answer in answers), answers
    assert after.status_code == 200
    assert "/fhir/Observation/a\\x00b" in paths and f"/fhir/{long_type}/x" in paths
    assert {"PROPPATCH", "MKCALENDAR"} <= methods
    assert any(e.path == "/fhir/Procedure" and e.outcome == 200 for e in entries)


def test_any_value_fits_the_store(runtime: Runtime) -> None:
    hostile = "\u0000\ud800\x7f" + "é" * 5000
    entry = AuditEntry(
        recorded_at=datetime.now(UTC),
        client_id=hostile,
        interaction=hostile,
        method=hostile,
        path=hostile,
        resource_type=hostile,
        resource_ids=[hostile] * 3,
        query=hostile,
        outcome=200,
        address=hostile,
    )

    runtime.audit.append([entry])

    stored = runtime.audit.query(limit=1)[0]
    assert stored.path.startswith("\\x00\\ud800\\x7f") and stored.path.endswith("…")
    assert len(stored.method) == audit.LONGEST["method"]


class RefusingOne(AuditLog):
    """The store's audit log, refusing any batch that holds the entry at `refused` (as the
    database refused a NUL or an over-long method), and down once when `down_once` is set."""

    def __init__(self, engine: Engine, secret: str, refused: str) -> None:
        super().__init__(engine, secret)
        self.refused = refused
        self.down_once = threading.Event()

    def append(self, entries: list[AuditEntry]) -> None:
        if self.down_once.is_set():
            self.down_once.clear()
            raise ConnectionError("the store is down")
        if any(entry.path == self.refused for entry in entries):
            raise ValueError("the store refuses this entry")
        super().append(entries)


def test_one_refused_entry_holds_no_other(runtime: Runtime) -> None:
    log = RefusingOne(runtime.store.engine, runtime.settings.secret_key, refused="/bad")
    writer = AuditWriter(log)
    for number in range(40):
        writer.record(_entry("/bad" if number == 17 else f"/fhir/Observation/{number}"))

    writer.flush()
    writer.close()

    paths = [entry.path for entry in runtime.audit.query(limit=100)]
    assert len(paths) == 40
    assert "(not storable)" in paths  # the refused entry, kept without what was refused


def test_entries_queued_at_shutdown_are_written(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(audit, "FINAL_PAUSE", 0.0)
    log = RefusingOne(runtime.store.engine, runtime.settings.secret_key, refused="/never")
    writer = AuditWriter(log)
    writer.record(_entry("/fhir/Observation/1"))
    writer.flush()
    log.down_once.set()  # the store is down when the service stops
    writer.record(_entry("/fhir/Observation/2"))

    writer.close()

    assert sorted(e.path for e in runtime.audit.query(limit=10)) == [
        "/fhir/Observation/1",
        "/fhir/Observation/2",
    ]


def test_truncate_and_replacing_inserts_are_refused(runtime: Runtime) -> None:
    runtime.audit.append([_entry("/fhir/Observation/1"), _entry("/fhir/Observation/2")])
    engine = runtime.store.engine
    if engine.dialect.name == "postgresql":
        attempts = ["TRUNCATE audit_events"]
    else:
        columns = "(id, recorded_at, interaction, method, path, outcome)"
        values = "(1, '2026-01-01 00:00:00', 'read', 'GET', '/forged', 200)"
        attempts = [
            f"INSERT OR REPLACE INTO audit_events {columns} VALUES {values}",
            f"REPLACE INTO audit_events {columns} VALUES {values}",
        ]
    for statement in attempts:
        with (
            pytest.raises((DBAPIError, IntegrityError), match="append-only"),
            engine.begin() as connection,
        ):
            connection.execute(text(statement))

    assert [e.path for e in runtime.audit.query(limit=10)] == [
        "/fhir/Observation/2",
        "/fhir/Observation/1",
    ]


def _verify(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["audit", "verify", *arguments])
    return result.exit_code, result.output


def _behind_the_adapters_back(engine: Engine, statement: str) -> None:
    """What someone with the database's credentials could do: lift the triggers and edit."""
    with engine.begin() as connection:
        if engine.dialect.name == "postgresql":
            connection.execute(text("ALTER TABLE audit_events DISABLE TRIGGER USER"))
            connection.execute(text(statement))
            connection.execute(text("ALTER TABLE audit_events ENABLE TRIGGER USER"))
        else:
            for verb in ("update", "delete"):
                connection.execute(text(f"DROP TRIGGER audit_events_no_{verb}"))
            connection.execute(text(statement))


@pytest.mark.parametrize(
    ("statement", "found"),
    [
        ("UPDATE audit_events SET outcome = 204 WHERE id = 3", "entry 3 was changed"),
        ("DELETE FROM audit_events WHERE id = 3", "entries 3 to 3 were removed"),
        ("DELETE FROM audit_events WHERE id = 5", "entries at the end were removed"),
    ],
)
def test_audit_verify_finds_what_was_changed(
    runtime: Runtime, cli_environment: Settings, statement: str, found: str
) -> None:
    runtime.audit.append([_entry(f"/fhir/Observation/{n}") for n in range(1, 4)])
    runtime.audit.append([_entry(f"/fhir/Observation/{n}") for n in range(4, 6)])
    whole = _verify()

    _behind_the_adapters_back(runtime.store.engine, statement)
    broken = _verify()

    assert whole == (0, "the audit record is whole: 5 entries verified, through entry 5\n")
    assert broken[0] == 1 and found in broken[1], broken
