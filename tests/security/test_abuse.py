"""Bad input and abuse: oversized and deeply nested bodies, too many exports at once, and the
usual injection payloads through every path segment and header-building parameter."""

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from adapter.app import create_app
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, sign_in

INJECTIONS = [
    "' OR '1'='1",
    "1; DROP TABLE fhir_resources; --",
    'x" UNION SELECT * FROM api_clients --',
    "%27%20OR%201%3D1",
    "..%2F..%2Fetc%2Fpasswd",
    "x%0d%0aSet-Cookie:%20stolen=1",
]


@pytest.fixture
def small(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    limited = settings.model_copy(
        update={"max_body_bytes": 4096, "json_max_depth": 8, "export_dir": tmp_path / "exports"}
    )
    with TestClient(create_app(limited, background=False)) as test_client:
        sign_in(test_client)
        yield test_client


@pytest.mark.parametrize("path", ["/api/v1/records", "/fhir/Observation/_search", "/auth/token"])
def test_a_body_over_the_limit_is_413(small: TestClient, path: str) -> None:
    declared = small.post(path, content=b"x" * 5000, headers={"content-type": "application/json"})
    streamed = small.post(
        path,
        content=iter([b"x" * 3000, b"x" * 3000]),
        headers={"content-type": "application/json"},
    )

    assert declared.status_code == 413 and streamed.status_code == 413
    if path == "/auth/token":  # the token endpoint answers as OAuth does
        assert declared.json()["error"] == "invalid_request"
    else:
        assert declared.json()["issue"][0]["code"] == "too-long"


@pytest.mark.parametrize("path", ["/api/v1/records", "/api/v1/sync/replay"])
def test_json_nested_too_deep_is_400(small: TestClient, path: str) -> None:
    body = b'{"a":' * 9 + b"1" + b"}" * 9
    shallow_in_strings = b'{"record_type": "' + b"[" * 200 + b'"}'

    deep = small.post(path, content=body, headers={"content-type": "application/json"})
    not_deep = small.post(
        path, content=shallow_in_strings, headers={"content-type": "application/json"}
    )

    assert deep.status_code == 400 and "nested deeper" in deep.json()["issue"][0]["diagnostics"]
    assert "nested deeper" not in not_deep.text


@pytest.mark.parametrize(
    "first",
    [b'{"a":1}', b"]" * 20, b'"'],
    ids=["a record", "closing brackets opened nowhere", "a quote left open"],
)
def test_an_ndjson_body_nested_too_deep_names_the_line(small: TestClient, first: bytes) -> None:
    """Each line is measured as its record is read: what one line leaves open or closes
    gives the next no depth to spare."""
    lines = [first, b'{"a":' * 9 + b"1" + b"}" * 9, b'{"a":1}']

    response = small.post(
        "/api/v1/records",
        content=b"\n".join(lines),
        headers={"content-type": "application/x-ndjson"},
    )

    assert response.status_code == 400
    assert response.json()["issue"][0]["diagnostics"].startswith("line 2: JSON nested deeper")


def test_a_client_may_run_only_so_many_exports_at_once(small: TestClient) -> None:
    asked = [
        small.get("/fhir/$export?_type=Procedure", headers={"Prefer": "respond-async"})
        for _ in range(3)
    ]

    assert [a.status_code for a in asked] == [202, 202, 429]
    assert int(asked[2].headers["retry-after"]) > 0
    sign_in(small)  # another client is not held back by the first one's exports
    again = small.get("/fhir/$export?_type=Procedure", headers={"Prefer": "respond-async"})
    assert again.status_code == 202


@pytest.fixture
def day(client: TestClient) -> TestClient:
    client.post(
        "/api/v1/records",
        content=EXAMPLE_DAY.read_bytes(),
        headers={"content-type": "application/x-ndjson"},
    )
    client.app.state.runtime.mapping.run()  # type: ignore[attr-defined]
    return client


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_through_path_segments_is_harmless(day: TestClient, payload: str) -> None:
    paths = [
        f"/fhir/Observation/{payload}",
        f"/fhir/Observation/{payload}/_history",
        f"/fhir/Observation/x/_history/{payload}",
        f"/fhir/{payload}",
        f"/fhir/$export-status/{payload}",
        f"/fhir/$export-file/{payload}/{payload}",
        f"/fhir/Group/{payload}/$export",
        f"/api/v1/records/vitals/{payload}",
        f"/api/v1/records/{payload}/VIT-1",
    ]

    statuses = {path: day.get(path, headers={"Prefer": "respond-async"}) for path in paths}

    assert {p: a.status_code for p, a in statuses.items() if a.status_code >= 500} == {}
    assert all("set-cookie" not in a.headers for a in statuses.values())
    engine = day.app.state.runtime.store.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM fhir_resources")).scalar_one() == 99


@pytest.mark.parametrize("payload", INJECTIONS)
def test_injection_through_parameters_that_shape_headers_is_harmless(
    day: TestClient, payload: str
) -> None:
    answers = [
        day.get("/fhir/$export", params={"_type": payload}, headers={"Prefer": "respond-async"}),
        day.get("/fhir/Observation", params={"_format": payload}),
        day.get("/fhir/Observation", params={"_count": "2", "code": payload}),
        day.get("/api/v1/sync/dead-letters", params={"after": payload}),
        day.get("/api/v1/audit", params={"client_id": payload[:64]}),
    ]

    for answer in answers:
        assert answer.status_code < 500
        assert "set-cookie" not in answer.headers
        assert all("\r" not in value and "\n" not in value for value in answer.headers.values())
