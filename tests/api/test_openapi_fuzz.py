"""schemathesis over the whole OpenAPI, with credentials and without: no 5xx, every error an
OperationOutcome (OAuth's error object at the token endpoint), and nothing but the open routes
answers 2xx to a caller without credentials."""

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, ROOT, grant

_FOLDER = Path(tempfile.mkdtemp(prefix="adapter-fuzz-"))
_APP = create_app(
    Settings(database_url=f"sqlite:///{_FOLDER / 'fuzz.db'}", mappings_dir=ROOT / "mappings"),
    background=False,
)
_RUNTIME = _APP.state.runtime
_RUNTIME.intake.submit(
    list(enumerate(line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()))
)
_RUNTIME.mapping.run()
_CREDENTIALS = grant(_RUNTIME)
OPEN = {"/healthz", "/fhir/metadata", "/.well-known/smart-configuration"}
OPEN |= {"/fhir/.well-known/smart-configuration"}

schema = schemathesis.openapi.from_asgi(
    "/openapi.json", _APP, headers={"Authorization": _CREDENTIALS.header("/openapi.json")}
)


def _error_shape(body: dict[str, object]) -> bool:
    return body.get("resourceType") == "OperationOutcome" or "error" in body or "results" in body


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_errors_are_operation_outcomes(case: Case) -> None:
    response = case.call(headers={"Authorization": _CREDENTIALS.header(case.formatted_path)})

    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code}"
    )
    if response.status_code >= 400:
        assert _error_shape(response.json()), response.json()


@schema.parametrize()
@settings(max_examples=10, deadline=None, suppress_health_check=list(HealthCheck))
def test_without_credentials_nothing_but_the_open_routes_answers(case: Case) -> None:
    response = case.call()

    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code}"
    )
    if case.path not in OPEN:
        assert response.status_code >= 400, f"{case.method} {case.formatted_path}"
        assert _error_shape(response.json()), response.json()
