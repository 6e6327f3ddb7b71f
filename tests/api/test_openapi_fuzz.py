"""schemathesis over the whole OpenAPI (the FHIR endpoint and the admin API), on SQLite and on
PostgreSQL, with every check it has, with credentials and without: no 5xx, no status, media
type or header the document does not state, every error an OperationOutcome (OAuth's error
object at the token endpoint), and nothing but the open routes answers 2xx without
credentials."""

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.core.result import Err
from schemathesis.pytest.lazy import get_all_tests
from schemathesis.specs.openapi.checks import positive_data_acceptance
from sqlalchemy import create_engine, text

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, POSTGRES_URL, ROOT, Credentials, grant

OPEN = {"/healthz", "/fhir/metadata", "/.well-known/smart-configuration"}
OPEN |= {"/fhir/.well-known/smart-configuration"}
WITH_CREDENTIALS = settings(
    max_examples=20, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
)
WITHOUT_CREDENTIALS = settings(WITH_CREDENTIALS, max_examples=8)


class Service:
    """The service with the example day in it, credentials to call it, and its OpenAPI as
    schemathesis reads it."""

    def __init__(self, database_url: str, folder: Path) -> None:
        self.app = create_app(
            Settings(
                database_url=database_url,
                mappings_dir=ROOT / "mappings",
                export_dir=folder / "exports",
            ),
            background=False,
        )
        runtime = self.app.state.runtime
        lines = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
        runtime.intake.submit(list(enumerate(lines)))
        runtime.mapping.run()
        self.credentials = grant(runtime)
        self.schema = schemathesis.openapi.from_asgi(
            "/openapi.json",
            self.app,
            headers={"Authorization": self.credentials.header("/openapi.json")},
        )

    def close(self) -> None:
        self.app.state.runtime.close()


@pytest.fixture(scope="module")
def sqlite_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    folder = tmp_path_factory.mktemp("fuzz")
    service = Service(f"sqlite:///{folder / 'fuzz.db'}", folder)
    yield service
    service.close()


@pytest.fixture(scope="module")
def postgresql_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    schema = f"fuzz_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL)
    with admin.begin() as connection:
        connection.execute(text(f"CREATE SCHEMA {schema}"))
    url = f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    service = Service(url, tmp_path_factory.mktemp("fuzz"))
    yield service
    service.close()
    with admin.begin() as connection:
        connection.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


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


def _fuzz(
    service: Service,
    check: Callable[[Case], None],
    examples: settings,
    subtests: pytest.Subtests,
) -> None:
    """Each operation of the OpenAPI through `check`, as a subtest: schemathesis's cases are
    made here, when the test runs, not at collection, where every process of a parallel run
    would make them for the one that runs it."""
    for result in get_all_tests(
        schema=service.schema, test_func=check, settings=examples, given_kwargs={}
    ):
        if isinstance(result, Err):
            raise result.err()
        operation, test = result.ok()
        with subtests.test(operation.label):
            test()


def test_sqlite_with_credentials(sqlite_service: Service, subtests: pytest.Subtests) -> None:
    def check(case: Case) -> None:
        _with_credentials(case, sqlite_service.credentials)

    _fuzz(sqlite_service, check, WITH_CREDENTIALS, subtests)


def test_sqlite_without_credentials(sqlite_service: Service, subtests: pytest.Subtests) -> None:
    _fuzz(sqlite_service, _without_credentials, WITHOUT_CREDENTIALS, subtests)


@pytest.mark.postgres
def test_postgresql_with_credentials(
    postgresql_service: Service, subtests: pytest.Subtests
) -> None:
    def check(case: Case) -> None:
        _with_credentials(case, postgresql_service.credentials)

    _fuzz(postgresql_service, check, WITH_CREDENTIALS, subtests)


@pytest.mark.postgres
def test_postgresql_without_credentials(
    postgresql_service: Service, subtests: pytest.Subtests
) -> None:
    _fuzz(postgresql_service, _without_credentials, WITHOUT_CREDENTIALS, subtests)
