"""Fixtures: a store on SQLite and on PostgreSQL, the mappings, the service and the example day."""

import contextlib
import gc
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
import uvicorn
from fastapi.testclient import TestClient
from joserfc.jwk import ECKey
from sqlalchemy.exc import OperationalError

from adapter.app import create_app
from adapter.runtime import Runtime, open_runtime
from adapter.security.clients import Client
from adapter.settings import Settings, get_settings
from tests.stores import POSTGRES_URL, PostgresSchemas, SqliteTemplate, create_worker_database

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DAY = ROOT / "tests" / "fixtures" / "clinic-export" / "day-2026-11-20.ndjson"


def pytest_configure(config: pytest.Config) -> None:
    # Without PostgreSQL the tests that need it fail, each saying so (see database_url).
    with contextlib.suppress(OperationalError):
        create_worker_database()


LONGEST_FIRST = (
    "tests/sync/test_site_outage.py",
    "tests/sync/test_processes.py::test_a_service_killed_while_events_deliver",
    "tests/sync/test_replicas.py",
    "tests/sync/test_faults.py",
    "tests/sync/test_processes.py",
    "tests/console/test_browser.py",
    "tests/sync/test_events.py",
    "tests/api/test_openapi_fuzz.py",
    "tests/sync/test_backoff.py",
    "tests/security/test_attack_inputs.py",
    "tests/test_replicas.py",
    "tests/sync/test_corrections.py",
    "tests/sync/test_quirks.py",
)
"""The tests that take longest (seconds each, `--durations`), longest first: they start first,
so that the processes of a parallel run end together rather than waiting on one."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        return next(
            (at for at, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)),
            len(LONGEST_FIRST),
        )

    items.sort(key=rank)


GC_THRESHOLDS = (10_000, 20, 20)
"""Allocations, and younger collections, between two collections of each generation (Python's
own: 700, 10, 10). The tests allocate much and keep little: with the defaults, collecting took
a sixth of a test process's CPU."""


def pytest_collection_finish(session: pytest.Session) -> None:
    # What collection made (modules, test items, parametrized values) lives as long as the
    # process: frozen, no collection walks it again.
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> SqliteTemplate:
    return SqliteTemplate(tmp_path_factory.mktemp("template"))


@pytest.fixture(scope="session")
def postgres_schemas() -> Iterator[PostgresSchemas]:
    schemas = PostgresSchemas()
    yield schemas
    schemas.close()


@pytest.fixture
def mappings_dir(tmp_path: Path) -> Path:
    """A copy of the shipped mapping files that a test may edit."""
    target = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", target)
    return target


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    sqlite_template: SqliteTemplate,
    postgres_schemas: PostgresSchemas,
) -> Iterator[str]:
    """A fresh database with the schema at its newest revision: a SQLite file copied from one
    migrated once, or a schema of its own on PostgreSQL. A test marked `empty_store` gets an
    empty one (a SQLite file not yet there, or an empty schema)."""
    empty = request.node.get_closest_marker("empty_store") is not None
    if request.param == "sqlite":
        path = tmp_path / "adapter.db"
        yield f"sqlite:///{path}" if empty else sqlite_template.copy(path)
        return
    try:
        schema = postgres_schemas.empty() if empty else postgres_schemas.take()
    except Exception as exc:  # the suite must not pass silently without PostgreSQL
        pytest.fail(f"PostgreSQL at {POSTGRES_URL} is not reachable: {type(exc).__name__}: {exc}")
    try:
        yield postgres_schemas.url(schema)
    finally:
        if empty:
            postgres_schemas.drop(schema)
        else:
            postgres_schemas.give_back(schema)


@pytest.fixture
def settings(database_url: str, mappings_dir: Path) -> Settings:
    return Settings(database_url=database_url, mappings_dir=mappings_dir)


@pytest.fixture
def settings_mappings(settings: Settings) -> Path:
    """The mapping folder the `client` and `runtime` fixtures read."""
    return settings.mappings_dir


@pytest.fixture
def cli_environment(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The settings as ADAPTER_ environment variables, for a command run in-process."""
    monkeypatch.setenv("ADAPTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ADAPTER_MAPPINGS_DIR", str(settings.mappings_dir))
    get_settings.cache_clear()
    yield settings
    get_settings.cache_clear()


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    opened = open_runtime(settings)
    yield opened
    opened.close()


@dataclass(frozen=True)
class Credentials:
    """An admin API key and a FHIR access token (a SMART client with `scopes`)."""

    api_key: str
    token: str
    smart: Client
    private_key: ECKey

    def header(self, path: str) -> str:
        return f"Bearer {self.token if path.startswith('/fhir') else self.api_key}"


def grant(runtime: Runtime, scopes: str = "system/*.rs", role: str = "admin") -> Credentials:
    """Register an API-key client and a SMART client, and issue the latter a token."""
    now = datetime.now(UTC)
    _, key = runtime.clients.add_key_client(f"test {role}", role, now)
    private = ECKey.generate_key("P-384", parameters={"kid": "test-1"})
    smart = runtime.clients.add_smart_client(
        "test FHIR client", scopes, now, jwks={"keys": [private.as_dict(private=False)]}
    )
    token = runtime.clients.issue_token(smart, smart.grant, now, 3600)
    return Credentials(key, token, smart, private)


def day_posted(service: TestClient) -> dict[str, str]:
    """The example day posted to the service's intake and mapped: an admin's headers to call
    the service with."""
    runtime: Runtime = service.app.state.runtime  # type: ignore[attr-defined]
    admin = {"Authorization": f"Bearer {grant(runtime).api_key}"}
    service.post(
        "/api/v1/records",
        content=EXAMPLE_DAY.read_bytes(),
        headers={**admin, "Content-Type": "application/x-ndjson"},
    )
    runtime.mapping.run()
    return admin


class CredentialAuth(httpx.Auth):
    """Adds the right credential for the path: the token on /fhir, the API key elsewhere
    (a request that sets its own Authorization keeps it)."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    def auth_flow(self, request: httpx.Request) -> Iterator[httpx.Request]:
        if "authorization" not in request.headers:
            request.headers["Authorization"] = self.credentials.header(request.url.path)
        yield request


def sign_in(test_client: TestClient, credentials: Credentials | None = None) -> Credentials:
    """Send the credentials (new ones by default) with every request of the test client."""
    credentials = credentials or grant(test_client.app.state.runtime)  # type: ignore[attr-defined]
    test_client.auth = CredentialAuth(credentials)
    return credentials


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The service in-process, with an admin key and a `system/*.rs` token on every request."""
    app = create_app(settings, background=False)
    with TestClient(app) as test_client:
        sign_in(test_client)
        yield test_client


@dataclass
class LiveServer:
    """The service on a loopback port, for clients that speak real HTTP."""

    url: str
    runtime: Runtime
    credentials: Credentials


@pytest.fixture
def live_server(settings: Settings) -> Iterator[LiveServer]:
    app = create_app(settings, background=False)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline:
            pytest.fail("the service did not start on loopback")
        time.sleep(0.02)
    runtime = app.state.runtime
    yield LiveServer(f"http://127.0.0.1:{port}", runtime, grant(runtime))
    server.should_exit = True
    thread.join(timeout=10)


@pytest.fixture
def example_lines() -> list[bytes]:
    return [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]


def vitals(**fields: Any) -> dict[str, Any]:
    """A valid vitals record; keyword arguments replace or add fields (None removes one)."""
    record: dict[str, Any] = {
        "record_type": "vitals",
        "id": "VIT-1",
        "revision": 1,
        "session_id": "SES-1",
        "patient": {"mrn": "900001"},
        "taken_at": "2026-11-20T09:20:00-05:00",
        "phase": "intra",
        "heart_rate": 84,
        "systolic": 146,
        "diastolic": 90,
        "spo2": 97,
    }
    return _apply(record, fields)


def session(**fields: Any) -> dict[str, Any]:
    """A valid infusion_session record; keyword arguments replace or add fields."""
    record: dict[str, Any] = {
        "record_type": "infusion_session",
        "id": "SES-1",
        "revision": 1,
        "patient": {"mrn": "900001"},
        "indication": "CRPS_UPPER",
        "status": "completed",
        "scheduled_start": "2026-11-20T09:00:00-05:00",
        "infusion_start": "2026-11-20T09:05:00-05:00",
        "infusion_end": "2026-11-20T13:05:00-05:00",
        "drug": "KETAMINE",
        "route": "IV",
        "dose": {"weight_kg": 68.5, "rate_mg_per_kg_per_hr": 0.5, "total_mg": 118.0},
    }
    return _apply(record, fields)


def fasting(**fields: Any) -> dict[str, Any]:
    """A valid fasting attestation for SES-1; keyword arguments replace or add fields."""
    record: dict[str, Any] = {
        "record_type": "attestation",
        "id": "ATT-1",
        "revision": 1,
        "session_id": "SES-1",
        "patient": {"mrn": "900001"},
        "kind": "fasting",
        "attested_at": "2026-11-20T08:40:00-05:00",
        "last_solid_food_at": "2026-11-19T21:30:00-05:00",
    }
    return _apply(record, fields)


def transport(**fields: Any) -> dict[str, Any]:
    """A valid transport attestation for SES-1 (a ride with an escort, the patient will not
    drive); keyword arguments replace or add fields (None removes one)."""
    record: dict[str, Any] = {
        "record_type": "attestation",
        "id": "ATT-2",
        "revision": 1,
        "session_id": "SES-1",
        "patient": {"mrn": "900001"},
        "kind": "transport",
        "attested_at": "2026-11-20T08:41:00-05:00",
        "mode": "escort_private_vehicle",
        "patient_will_not_drive": True,
    }
    return _apply(record, fields)


def adverse_event(**fields: Any) -> dict[str, Any]:
    """A valid adverse event of SES-1 (nausea, ondansetron given); keyword arguments replace."""
    record: dict[str, Any] = {
        "record_type": "adverse_event",
        "id": "AE-1",
        "revision": 1,
        "session_id": "SES-1",
        "patient": {"mrn": "900001"},
        "event": "NAUSEA",
        "onset_at": "2026-11-20T13:20:00-05:00",
        "severity": "mild",
        "serious": False,
        "actions": ["MED_GIVEN"],
        "medications_given": [
            {
                "drug": "Ondansetron",
                "dose": "4 mg",
                "route": "IV",
                "at": "2026-11-20T13:22:00-05:00",
            }
        ],
        "outcome": "resolved",
    }
    return _apply(record, fields)


def _apply(record: dict[str, Any], fields: dict[str, Any]) -> dict[str, Any]:
    for key, value in fields.items():
        if value is None:
            record.pop(key, None)
        else:
            record[key] = value
    return record


def ndjson(*records: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(record) + b"\n" for record in records)


VALIDATOR = ROOT / "tests" / "fhir-validator"


class FhirValidator:
    """@medplum/core's validateResource in a Node process: an R4 validator no one here wrote."""

    def __init__(self) -> None:
        if not (VALIDATOR / "node_modules" / "@medplum" / "core").exists():
            pytest.fail("the FHIR validator is not installed: npm ci --prefix tests/fhir-validator")
        self._process = subprocess.Popen(
            ["node", str(VALIDATOR / "validate.mjs")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def problems(self, resource: dict[str, Any]) -> list[Any]:
        assert self._process.stdin and self._process.stdout
        self._process.stdin.write(orjson.dumps(resource).decode() + "\n")
        self._process.stdin.flush()
        result = orjson.loads(self._process.stdout.readline())
        return [] if result["ok"] else list(result["issues"])

    def close(self) -> None:
        if self._process.stdin:
            self._process.stdin.close()
        self._process.wait(timeout=10)


@pytest.fixture(scope="session")
def fhir_validator() -> Iterator[FhirValidator]:
    validator = FhirValidator()
    yield validator
    validator.close()
