"""Every route of the app, taken from its route list (a route added later is walked too):
401 without credentials, 403 with the wrong role or scope, and an app with a route that states
no access is refused at build."""

import re

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from adapter.runtime import Runtime
from adapter.security.access import OPEN, all_routes, check_routes, route_access
from tests.conftest import grant

SAMPLE_PARAMS = {
    "resource_type": "Observation",
    "resource_id": "x",
    "version_id": "1",
    "job_id": "x",
    "name": "Observation.ndjson",
    "group_id": "all-patients",
    "record_type": "vitals",
    "source_id": "VIT-1",
    "revision": "1",
    "session_id": "SES-1",
    "mrn": "100234",
}
CONSOLE = "console:admin"


def _requests(app: FastAPI) -> list[tuple[str, str, list[str]]]:
    found = []
    for path, route in all_routes(app.routes):
        concrete = re.sub(r"{(\w+)(?::\w+)?}", lambda m: SAMPLE_PARAMS[m.group(1)], path)
        for method in sorted(route.methods or []):
            found.append((method, concrete, route_access(route)))
    return found


def _call(client: TestClient, method: str, path: str, token: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if method in ("POST", "PUT", "PATCH"):
        headers["Content-Type"] = "application/json"
        return client.request(method, path, content=b"{}", headers=headers).status_code
    return client.request(method, path, headers=headers).status_code


def test_every_route_but_the_open_ones_needs_credentials(bare: TestClient) -> None:
    walked = _requests(bare.app)  # type: ignore[arg-type]
    closed = [(m, p) for m, p, access in walked if OPEN not in access and CONSOLE not in access]

    answers = {(m, p): bare.request(m, p) for m, p in closed}

    assert len(closed) >= 25
    refused = {key: a.status_code for key, a in answers.items() if a.status_code != 401}
    assert refused == {}
    for answer in answers.values():
        assert answer.headers["www-authenticate"].startswith("Bearer")
        assert answer.json()["resourceType"] == "OperationOutcome"
    open_paths = {p for m, p, access in walked if OPEN in access}
    assert open_paths == {
        "/healthz",
        "/fhir/metadata",
        "/.well-known/smart-configuration",
        "/fhir/.well-known/smart-configuration",
        "/auth/token",
        "/console/sign-in",
    }


def test_every_console_page_sends_a_caller_without_a_sign_in_to_sign_in(bare: TestClient) -> None:
    console = [(m, p) for m, p, access in _requests(bare.app) if CONSOLE in access]  # type: ignore[arg-type]

    answers = {(m, p): bare.request(m, p, follow_redirects=False) for m, p in console}

    assert len(console) >= 9
    assert {key: a.status_code for key, a in answers.items() if a.status_code != 303} == {}
    assert {a.headers["location"] for a in answers.values()} == {"/console/sign-in"}


def test_the_wrong_role_or_scope_is_403(bare: TestClient, service_runtime: Runtime) -> None:
    intake = grant(service_runtime, scopes="system/Procedure.rs", role="intake")
    wrong: list[tuple[str, str, str]] = []
    for method, path, access in _requests(bare.app):  # type: ignore[arg-type]
        if "role:admin" in access:
            wrong.append((method, path, intake.api_key))
        elif any(a.startswith("scope:") for a in access):
            wrong.append((method, path, intake.token))

    answers = {(m, p): _call(bare, m, p, credential) for m, p, credential in wrong}

    assert len(wrong) >= 20
    assert {key: status for key, status in answers.items() if status != 403} == {}


def test_an_api_key_does_not_open_fhir_nor_a_token_the_api(
    bare: TestClient, service_runtime: Runtime
) -> None:
    credentials = grant(service_runtime)

    assert _call(bare, "GET", "/fhir/Observation", credentials.api_key) == 401
    assert _call(bare, "GET", "/api/v1/sync/status", credentials.token) == 401
    assert _call(bare, "GET", "/fhir/Observation", credentials.token) == 200
    assert _call(bare, "GET", "/api/v1/sync/status", credentials.api_key) == 200
    assert _call(bare, "GET", "/fhir/Observation", "iat_forged") == 401
    assert bare.get("/fhir/Observation", headers={"Authorization": "Basic eDp5"}).status_code == 401


def test_an_intake_key_submits_records_but_sees_no_admin_api(
    bare: TestClient, service_runtime: Runtime
) -> None:
    intake = grant(service_runtime, role="intake")
    headers = {"Authorization": f"Bearer {intake.api_key}"}

    submitted = bare.post("/api/v1/records", json={"record_type": "vitals"}, headers=headers)

    assert submitted.status_code == 422
    assert bare.get("/api/v1/audit", headers=headers).status_code == 403
    assert bare.get("/openapi.json", headers=headers).status_code == 200


def test_an_app_with_an_unguarded_route_is_refused(bare: TestClient) -> None:
    app: FastAPI = bare.app  # type: ignore[assignment]

    @app.get("/api/v1/forgotten")
    def forgotten() -> dict[str, str]:
        return {"left": "open"}

    with pytest.raises(RuntimeError, match="/api/v1/forgotten"):
        check_routes(app)
