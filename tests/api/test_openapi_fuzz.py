"""schemathesis over the whole OpenAPI (the FHIR endpoint and the admin API), on SQLite and on
PostgreSQL, with every check it has, with credentials and without: no 5xx, no status, media
type or header the document does not state, every error an OperationOutcome (OAuth's error
object at the token endpoint), and nothing but the open routes answers 2xx without
credentials."""

import json
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import create_engine, text

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, POSTGRES_URL, ROOT, Credentials, grant

OPEN = {"/healthz", "/fhir/metadata", "/.well-known/smart-configuration"}
OPEN |= {"/fhir/.well-known/smart-configuration"}
_FOLDER = Path(tempfile.mkdtemp(prefix="adapter-fuzz-"))
_SCHEMA = f"fuzz_{uuid.uuid4().hex[:12]}"


def _service(database_url: str) -> tuple[FastAPI, Credentials]:
    """The service with the example day in it, and credentials to call it."""
    app = create_app(
        Settings(
            database_url=database_url,
            mappings_dir=ROOT / "mappings",
            export_dir=_FOLDER / f"exports-{uuid.uuid4().hex[:6]}",
        ),
        background=False,
    )
    runtime = app.state.runtime
    lines = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
    runtime.intake.submit(list(enumerate(lines)))
    runtime.mapping.run()
    return app, grant(runtime)


with create_engine(POSTGRES_URL).begin() as _connection:
    _connection.execute(text(f"CREATE SCHEMA {_SCHEMA}"))
_SQLITE = _service(f"sqlite:///{_FOLDER / 'fuzz.db'}")
_POSTGRESQL = _service(f"{POSTGRES_URL}?options=-csearch_path%3D{_SCHEMA}")


@schemathesis.serializer("application/x-ndjson")
def _ndjson(_context: Any, value: Any) -> dict[str, bytes]:
    """An NDJSON body as schemathesis made it: a string of lines, or (a schema-violating case)
    any JSON value, sent as its text."""
    if isinstance(value, bytes):
        return {"data": value}
    if isinstance(value, str):
        return {"data": value.encode()}
    try:
        return {"data": orjson.dumps(value)}
    except TypeError:  # an integer beyond 64 bits, which orjson does not write
        return {"data": json.dumps(value).encode()}


def _schema(service: tuple[FastAPI, Credentials]) -> Any:
    app, credentials = service
    return schemathesis.openapi.from_asgi(
        "/openapi.json", app, headers={"Authorization": credentials.header("/openapi.json")}
    )


sqlite_schema = _schema(_SQLITE)
postgresql_schema = _schema(_POSTGRESQL)


@pytest.fixture(scope="session", autouse=True)
def _drop_the_schema() -> Iterator[None]:
    """At the end of the run: a process of a parallel run may come back to this module's tests
    after others, and finds the services as they were."""
    yield
    for app, _ in (_SQLITE, _POSTGRESQL):
        app.state.runtime.close()
    with create_engine(POSTGRES_URL).begin() as connection:
        connection.execute(text(f"DROP SCHEMA {_SCHEMA} CASCADE"))


def _error_shape(body: dict[str, object]) -> bool:
    return body.get("resourceType") == "OperationOutcome" or "error" in body or "results" in body


def _with_credentials(case: Case, credentials: Credentials) -> None:
    # Intake checks each record beyond what a schema can say (plausibility), and answers 422
    # when it rejects them all: a schema-valid body is not a valid record.
    excluded = [positive_data_acceptance] if case.path == "/api/v1/records" else []
    response = case.call_and_validate(
        headers={"Authorization": credentials.header(case.formatted_path)},
        excluded_checks=excluded,
    )
    if response.status_code >= 400:
        assert _error_shape(response.json()), response.json()


def _without_credentials(case: Case) -> None:
    response = case.call_and_validate()
    if case.path not in OPEN:
        assert response.status_code >= 400, f"{case.method} {case.formatted_path}"
        assert _error_shape(response.json()), response.json()


@sqlite_schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_sqlite_with_credentials(case: Case) -> None:
    _with_credentials(case, _SQLITE[1])


@sqlite_schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_sqlite_without_credentials(case: Case) -> None:
    _without_credentials(case)


@pytest.mark.postgres
@postgresql_schema.parametrize()
@settings(max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_postgresql_with_credentials(case: Case) -> None:
    _with_credentials(case, _POSTGRESQL[1])


@pytest.mark.postgres
@postgresql_schema.parametrize()
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
def test_postgresql_without_credentials(case: Case) -> None:
    _without_credentials(case)
