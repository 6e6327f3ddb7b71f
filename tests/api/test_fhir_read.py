"""/fhir: metadata, read, vread, history, and how errors and formats are answered."""

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from adapter.runtime import Runtime
from tests.conftest import EXAMPLE_DAY, FhirValidator, grant, ndjson, vitals

NDJSON = {"content-type": "application/x-ndjson"}


@pytest.fixture
def day(client: TestClient) -> Iterator[TestClient]:
    client.post("/api/v1/records", content=EXAMPLE_DAY.read_bytes(), headers=NDJSON)
    client.post("/api/v1/mapping/reload")
    yield client


def _first_id(client: TestClient, query: str) -> str:
    return str(client.get(f"/fhir/{query}").json()["entry"][0]["resource"]["id"])


def test_metadata_lists_what_is_served(
    client: TestClient,
    fhir_validator: FhirValidator,  # type: ignore[type-arg]
) -> None:
    response = client.get("/fhir/metadata", headers={"Authorization": ""})

    statement = response.json()
    assert response.headers["content-type"].startswith("application/fhir+json")
    assert statement["fhirVersion"] == "4.0.1"
    served = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert set(served) == {
        "Observation",
        "Procedure",
        "MedicationAdministration",
        "AdverseEvent",
        "DetectedIssue",
        "DocumentReference",
        "Patient",
        "Encounter",
        "CarePlan",
        "Organization",
        "Location",
    }
    observation = {p["name"] for p in served["Observation"]["searchParam"]}
    assert {
        "_id",
        "_lastUpdated",
        "patient",
        "date",
        "code",
        "category",
        "status",
        "part-of",
    } <= observation
    assert served["Procedure"]["searchRevInclude"] == [
        "Observation:part-of",
        "DetectedIssue:implicated",
    ]
    assert [i["code"] for i in served["Observation"]["interaction"]] == [
        "read",
        "vread",
        "history-instance",
        "history-type",
        "search-type",
    ]
    security = statement["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    assert security["extension"][0]["extension"][0]["valueUri"] == "http://testserver/auth/token"
    assert fhir_validator.problems(statement) == []


def test_read_answers_stored_bytes_with_etag_and_304(day: TestClient) -> None:
    resource_id = _first_id(day, "Observation?code=8867-4")

    first = day.get(f"/fhir/Observation/{resource_id}")
    again = day.get(
        f"/fhir/Observation/{resource_id}", headers={"If-None-Match": first.headers["etag"]}
    )

    assert first.status_code == 200
    assert first.headers["etag"] == 'W/"1"'
    assert first.headers["last-modified"].endswith("GMT")
    assert first.json()["id"] == resource_id
    assert again.status_code == 304 and again.content == b""


LAST_MODIFIED = "the resource's own Last-Modified"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"If-None-Match": 'W/"0", W/"1"'}, 304),
        ({"If-None-Match": '"1"'}, 304),
        ({"If-None-Match": "*"}, 304),
        ({"If-None-Match": 'W/"2"'}, 200),
        ({"If-Modified-Since": LAST_MODIFIED}, 304),
        ({"If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, 304),
        ({"If-Modified-Since": "Sat, 01 Jan 2000 00:00:00 GMT"}, 200),
        # If-None-Match decides where both are sent (RFC 9110 section 13.2.2).
        ({"If-None-Match": 'W/"2"', "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"}, 200),
    ],
)
def test_a_conditional_read_answers_304_as_http_says(
    day: TestClient, headers: dict[str, str], status: int
) -> None:
    resource_id = _first_id(day, "Observation?code=8867-4")
    first = day.get(f"/fhir/Observation/{resource_id}")
    if headers.get("If-Modified-Since") == LAST_MODIFIED:
        headers = {"If-Modified-Since": first.headers["last-modified"]}

    answer = day.get(f"/fhir/Observation/{resource_id}", headers=headers)

    assert answer.status_code == status
    assert answer.headers["etag"] == first.headers["etag"]
    statement = day.get("/fhir/metadata").json()
    assert statement["rest"][0]["resource"][0]["conditionalRead"] == "full-support"


def test_versions_and_history_follow_an_amendment(client: TestClient) -> None:
    client.post("/api/v1/records", content=ndjson(vitals()), headers=NDJSON)
    client.post("/api/v1/mapping/reload")
    resource_id = _first_id(client, "Observation?code=8867-4")
    client.post(
        "/api/v1/records", content=ndjson(vitals(revision=2, heart_rate=99)), headers=NDJSON
    )
    client.post("/api/v1/mapping/reload")

    current = client.get(f"/fhir/Observation/{resource_id}")
    first = client.get(f"/fhir/Observation/{resource_id}/_history/1")
    history = client.get(f"/fhir/Observation/{resource_id}/_history").json()
    since = client.get("/fhir/Observation/_history?_since=2000-01-01T00:00:00Z").json()

    assert current.headers["etag"] == 'W/"2"' and current.json()["valueQuantity"]["value"] == 99
    assert first.json()["valueQuantity"]["value"] == 84 and first.headers["etag"] == 'W/"1"'
    assert history["type"] == "history"
    assert [e["response"]["etag"] for e in history["entry"]] == ['W/"2"', 'W/"1"']
    # Only the heart rate changed: its two versions, and the first of blood pressure and SpO2.
    assert since["total"] == 4


def test_an_instance_history_pages_and_reads_since_as_a_type_history_does(
    client: TestClient,
) -> None:
    """R4 http.html#history: `_count` and `_since` on one resource's history; `_at`, which
    this server does not support, is refused rather than answered with every version."""
    client.post("/api/v1/records", content=ndjson(vitals()), headers=NDJSON)
    client.post("/api/v1/mapping/reload")
    resource_id = _first_id(client, "Observation?code=8867-4")
    for revision, rate in ((2, 99), (3, 101)):
        amended = vitals(revision=revision, heart_rate=rate)
        client.post("/api/v1/records", content=ndjson(amended), headers=NDJSON)
        client.post("/api/v1/mapping/reload")
    path = f"/fhir/Observation/{resource_id}/_history"

    first = client.get(path, params={"_count": "2"}).json()
    rest = client.get(next(x["url"] for x in first["link"] if x["relation"] == "next")).json()
    second = client.get(f"{path}/2").json()
    since = client.get(path, params={"_since": second["meta"]["lastUpdated"]}).json()
    refused = [
        client.get(path, params={"_since": "bogus"}),
        client.get(path, params={"_at": "2026-11-20"}),
        client.get("/fhir/Observation/_history", params={"_at": "2026-11-20"}),
    ]

    etags = [e["response"]["etag"] for e in first["entry"] + rest["entry"]]
    assert etags == ['W/"3"', 'W/"2"', 'W/"1"'] and first["total"] == 3
    assert all(x["relation"] != "next" for x in rest["link"])
    assert [e["response"]["etag"] for e in since["entry"]] == ['W/"3"']
    assert [r.status_code for r in refused] == [400, 400, 400]
    assert refused[2].json()["issue"][0]["expression"] == ["_at"]


def test_a_withdrawn_resource_stays_readable_with_its_status(day: TestClient) -> None:
    resource_id = _first_id(day, "Observation?status=entered-in-error")

    response = day.get(f"/fhir/Observation/{resource_id}")

    assert response.status_code == 200
    assert response.json()["status"] == "entered-in-error"


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Observation/unknown-id",
        "/fhir/Observation/unknown-id/_history/1",
        "/fhir/Observation/unknown-id/_history/99999999999999999999",
        "/fhir/Observation/unknown-id/_history/\u00b2",
        "/fhir/Patient/1",
        "/fhir/Observation/not_a_fhir_id",  # no route takes it: still an OperationOutcome
        "/fhir/Observation/" + "a" * 65,
        "/fhir/observation/unknown-id",
    ],
)
def test_unknown_is_404_operation_outcome(client: TestClient, path: str) -> None:
    response = client.get(path)

    assert response.status_code == 404
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize("method", ["post", "put", "delete", "patch"])
def test_writes_are_405(client: TestClient, method: str) -> None:
    path = "/fhir/Observation" if method == "post" else "/fhir/Observation/x"
    writer = grant(client.app.state.runtime, scopes="system/*.cruds")  # type: ignore[attr-defined]
    body = {"resourceType": "Observation"}

    refused = client.request(method.upper(), path, json=body)
    response = client.request(
        method.upper(), path, json=body, headers={"Authorization": writer.header(path)}
    )

    assert refused.status_code == 403
    assert response.status_code == 405
    assert response.json()["issue"][0]["code"] == "not-supported"
    assert response.headers["allow"] == "GET, HEAD"  # RFC 9110 section 15.5.6


def test_head_answers_the_headers_of_get_without_the_body(day: TestClient) -> None:
    """RFC 9110 section 9.3.2: a client may ask whether a resource is there, or its version,
    without reading it."""
    resource_id = _first_id(day, "Observation?code=8867-4")
    for path in (f"/fhir/Observation/{resource_id}", "/fhir/metadata", "/fhir/Observation"):
        got = day.get(path)
        head = day.head(path)

        assert head.status_code == got.status_code == 200, path
        assert head.content == b""
        for header in ("content-type", "etag", "last-modified"):
            assert head.headers.get(header) == got.headers.get(header), (path, header)
    assert day.head("/fhir/Observation/no-such-id").status_code == 404
    options = day.options("/fhir/Patient")
    assert options.status_code == 405 and options.headers["allow"] == "GET, HEAD"


@pytest.mark.parametrize(
    ("query", "headers"),
    [
        ("?_format=xml", {}),
        ("?_format=application/fhir+xml", {}),
        ("", {"Accept": "application/fhir+xml"}),
    ],
)
def test_xml_is_406(client: TestClient, query: str, headers: dict[str, str]) -> None:
    response = client.get(f"/fhir/Observation{query}", headers=headers)

    assert response.status_code == 406
    assert response.json()["resourceType"] == "OperationOutcome"


@pytest.mark.parametrize(
    ("accept", "status"),
    [
        ("application/fhir+json; fhirVersion=3.0", 406),
        ("application/fhir+json; fhirVersion=5.0", 406),
        ("application/fhir+json; fhirVersion=4.0", 200),
        ('application/fhir+json;fhirVersion="4.0", */*', 200),
    ],
)
def test_a_fhir_version_asked_for_is_served_or_406(
    client: TestClient, accept: str, status: int
) -> None:
    """R4 versioning.html: the version a client names in Accept is the one it reads."""
    assert client.get("/fhir/Observation", headers={"Accept": accept}).status_code == status


@pytest.mark.parametrize("fmt", ["json", "application/fhir+json", "application/json"])
def test_json_formats_are_served(client: TestClient, fmt: str) -> None:
    assert client.get(f"/fhir/Observation?_format={fmt}").status_code == 200
    # _format overrides Accept (R4 http.html, content types): JSON asked for is JSON.
    xml = {"Accept": "application/fhir+xml"}
    assert client.get(f"/fhir/Observation?_format={fmt}", headers=xml).status_code == 200


def _terminate(runtime: Runtime, pids: list[int]) -> None:
    with runtime.store.engine.connect() as connection:
        for pid in pids:
            dropped = connection.execute(
                text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}
            ).scalar_one()
            assert dropped is True


def _drop_the_pooled_read_connection(runtime: Runtime) -> None:
    reads = runtime.fhir_reads.engine
    pooled = reads.raw_connection()  # the connection the last search used, back in the pool after
    cursor = pooled.cursor()
    cursor.execute("SELECT pg_backend_pid()")
    pid = cursor.fetchone()[0]
    pooled.close()
    _terminate(runtime, [pid])


def _drop_the_read_connections_of_the_loop(runtime: Runtime) -> None:
    pool = runtime.fhir_reads.loop_reads.pool
    assert pool is not None and pool.idle  # the connection the last read used, kept
    _terminate(runtime, [connection.info.backend_pid for connection in pool.idle])


def test_reads_and_searches_survive_the_store_dropping_their_connection(day: TestClient) -> None:
    runtime = day.app.state.runtime  # type: ignore[attr-defined]
    engine = runtime.store.engine
    if engine.dialect.name != "postgresql":
        pytest.skip("a server that drops connections is PostgreSQL's case")
    resource = day.get("/fhir/Observation?_count=1").json()["entry"][0]["resource"]
    assert day.get(f"/fhir/Observation/{resource['id']}").status_code == 200

    _drop_the_read_connections_of_the_loop(runtime)
    assert day.get(f"/fhir/Observation/{resource['id']}").status_code == 200
    _drop_the_pooled_read_connection(runtime)
    searched = day.get("/fhir/Observation?_count=2&_total=accurate")
    assert searched.status_code == 200
    assert searched.json()["total"] >= 2


def test_the_openapi_states_the_parameters_read_from_the_request(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]

    def names(path: str, method: str = "get") -> set[str]:
        return {p["name"] for p in paths[path][method].get("parameters", [])}

    assert {"_format", "If-None-Match"} <= names("/fhir/{resource_type}/{resource_id}")
    assert "_format" in names("/fhir/{resource_type}")
    assert "_format" in names("/fhir/{resource_type}/_search", "post")
    assert "_format" in names("/fhir/metadata")
    assert "_format" not in names("/fhir/$export")
