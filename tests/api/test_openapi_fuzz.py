"""schemathesis over the whole OpenAPI: no 5xx, and every error an OperationOutcome."""

import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, ROOT

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

schema = schemathesis.openapi.from_asgi("/openapi.json", _APP)


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_error_and_errors_are_operation_outcomes(case: Case) -> None:
    response = case.call()

    assert response.status_code < 500, (
        f"{case.method} {case.formatted_path}: {response.status_code}"
    )
    if response.status_code >= 400:
        body = response.json()
        assert body.get("resourceType") == "OperationOutcome" or "results" in body, body
