"""Malformed input against the running service, on SQLite and PostgreSQL: every input that
answered 500 (finding 7) now answers 4xx with an OperationOutcome (an OAuth error at the token
endpoint), or, for a date that is merely far off, a search that finds nothing; revisions are
bounded alike on both stores (8); and a property-based test sends values at and beyond each
type's limits through every parameter, header and body field, and never sees a 5xx."""

import time
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import httpx2 as httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from joserfc import jwt
from joserfc.jwk import ECKey

from adapter.intake.records import MAX_REVISION
from tests.conftest import EXAMPLE_DAY, adverse_event, fasting, session, vitals
from tests.security.conftest import RunningService, is_outcome

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
FAR = ["9999-12-31", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00+01:00"]
HUGE_COUNT = "9" * 5000


@pytest.fixture(scope="module")
def day(running: RunningService) -> RunningService:
    with running.signed_in() as client:
        answer = client.post(
            "/api/v1/records",
            content=EXAMPLE_DAY.read_bytes(),
            headers={"content-type": "application/x-ndjson"},
        )
    assert answer.status_code == 200
    running.runtime.mapping.run()
    return running


def _checked(answer: httpx.Response) -> httpx.Response:
    assert answer.status_code < 500, (answer.request.url, answer.status_code, answer.text)
    if answer.status_code >= 400:
        assert is_outcome(answer), answer.text
    return answer


@pytest.mark.parametrize("value", FAR)
def test_far_dates_find_nothing_and_break_nothing(day: RunningService, value: str) -> None:
    with day.signed_in() as client:
        answers = [
            client.get("/fhir/Observation", params={"date": value}),
            client.get("/fhir/Observation", params={"date": f"ge{value}"}),
            client.get("/fhir/Procedure", params={"_lastUpdated": f"le{value}"}),
            client.get("/fhir/MedicationAdministration", params={"effective-time": value}),
            client.get(
                "/fhir/Observation/_history",
                params={"_since": f"{value}T00:00:00Z" if len(value) == 10 else value},
            ),
            client.get(
                "/api/v1/audit", params={"since": value if "T" in value else f"{value}T00:00:00Z"}
            ),
        ]

    for answer in answers:
        assert _checked(answer).status_code in (200, 400)


def test_count_of_five_thousand_digits_is_the_largest_page(day: RunningService) -> None:
    with day.signed_in() as client:
        search = _checked(client.get("/fhir/Observation", params={"_count": HUGE_COUNT}))
        history = _checked(client.get("/fhir/Observation/_history", params={"_count": HUGE_COUNT}))

    assert search.status_code == 200 and history.status_code in (200, 400)


def test_a_cursor_taken_to_another_search_is_refused(day: RunningService) -> None:
    with day.signed_in() as client:
        first = client.get("/fhir/Procedure", params={"_sort": "_id", "_count": "1"}).json()
        following = next(link["url"] for link in first["link"] if link["relation"] == "next")
        cursor = dict(parse_qsl(urlsplit(following).query))["_cursor"]
        reused = client.get("/fhir/Procedure", params={"_cursor": cursor})
        kept = client.get(following.removeprefix(day.url))

    assert reused.status_code == 400 and "another search" in reused.text
    assert kept.status_code == 200


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Observation?code=a%00b",
        "/fhir/Observation?_id=a%00b",
        "/fhir/Observation/a%00b",
        "/fhir/$export-status/a%00b",
        "/fhir/Group/a%00b/$export",
        "/api/v1/audit?client_id=a%00b",
        "/api/v1/audit?interaction=a%00b",
        "/api/v1/records/vitals/a%00b",
    ],
)
def test_a_nul_anywhere_in_a_target_is_a_clear_400(day: RunningService, path: str) -> None:
    with day.signed_in() as client:
        answer = client.get(path, headers={"Prefer": "respond-async"})

    assert answer.status_code == 400 and "NUL" in answer.text and is_outcome(answer)


def test_a_nul_in_a_search_form_is_a_clear_400(day: RunningService) -> None:
    with day.signed_in() as client:
        answer = client.post("/fhir/Observation/_search", data={"code": "a\u0000b"})

    assert answer.status_code == 400 and "NUL" in answer.text


@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_claims_of_absurd_times_are_refused(running: RunningService, claim: str) -> None:
    key = ECKey.generate_key("P-384", parameters={"kid": "k1"})
    client = running.runtime.clients.add_smart_client(
        "EHR", "system/*.rs", datetime.now(UTC), jwks={"keys": [key.as_dict(private=False)]}
    )
    now = int(time.time())
    claims = {
        "iss": client.id,
        "sub": client.id,
        "aud": f"{running.url}/auth/token",
        "exp": now + 200,
        "jti": str(uuid.uuid4()),
        claim: 1e20,
    }
    assertion = jwt.encode({"alg": "ES384", "kid": "k1"}, claims, key, ["ES384"])

    with running.client(forwarded_for=f"198.51.100.{10 + ['exp', 'iat', 'nbf'].index(claim)}") as c:
        answer = c.post(
            "/auth/token",
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": assertion,
                "scope": "system/*.rs",
            },
        )

    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    assert claim in answer.json()["error_description"]


@pytest.mark.parametrize(
    ("revision", "outcome"),
    [
        (2**31, "created"),
        (MAX_REVISION, "created"),
        (MAX_REVISION + 1, "rejected"),
        (2**63, "rejected"),
        (2**64, "rejected"),
    ],
)
def test_revisions_are_bounded_alike_on_both_stores(
    running: RunningService, revision: int, outcome: str
) -> None:
    record = vitals(id=f"VIT-R{revision}", revision=revision)
    with running.signed_in() as client:
        answer = _checked(client.post("/api/v1/records", json=record))

    result = answer.json()["results"][0]
    assert result["outcome"] == outcome
    if outcome == "rejected":
        assert result["errors"][0]["field"] == "revision"
        assert f"{MAX_REVISION}" in result["errors"][0]["reason"]


def test_a_record_high_in_its_revisions_can_still_be_amended(running: RunningService) -> None:
    with running.signed_in() as client:
        first = client.post("/api/v1/records", json=vitals(id="VIT-HIGH", revision=2**31 + 5))
        amended = client.post(
            "/api/v1/records", json=vitals(id="VIT-HIGH", revision=2**31 + 6, heart_rate=90)
        )

    assert first.json()["results"][0]["outcome"] == "created"
    assert amended.json()["results"][0]["outcome"] == "amended"


# The property: values at and beyond each type's limits, anywhere a caller can put a value.

INTS = [0, -1, 1, 2**31 - 1, 2**31, 2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64, -(2**63) - 1, 10**30]
FLOATS = [1e308, -1e308, 5e-324, 0.1, -0.0]
TEXTS = [
    "",
    " ",
    "\u0000",
    "a\u0000b",
    "x" * 5000,
    "é" * 300,
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+01:00",
    "2026-13-45",
    "1e20",
    "NaN",
    "-0",
    "'; DROP TABLE audit_events; --",
    "../../etc/passwd",
    "%00",
    "\u202e\ufeff",
    HUGE_COUNT,
]
JSON_VALUES = st.sampled_from(
    [*INTS, *FLOATS, *TEXTS, True, None, [], {}, ["x"] * 600, {"a": {"b": {"c": [1]}}}]
)
QUERY_VALUES = st.sampled_from([*map(str, INTS), *map(str, FLOATS), *TEXTS])
HEADER_VALUES = st.sampled_from(
    [
        t
        for t in [*map(str, INTS), *TEXTS]
        if t and t == t.strip() and t.isascii() and t.isprintable() and len(t) < 4096
    ]
)
HEADERS = ["Prefer", "If-None-Match", "Accept", "Content-Type", "X-Forwarded-For", "Authorization"]
RECORDS = [session, vitals, adverse_event, fasting]


@pytest.fixture(scope="module")
def operations(day: RunningService) -> list[tuple[str, str, list[str]]]:
    """Every operation of the OpenAPI: method, path, and its query parameters."""
    with day.signed_in() as client:
        document = client.get("/openapi.json").json()
    found = []
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            names = [p["name"] for p in operation.get("parameters", []) if p["in"] == "query"]
            found.append((method.upper(), path, names))
    return found


def _paths(record: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    found = []
    for key, value in record.items():
        found.append((*prefix, key))
        if isinstance(value, dict):
            found += _paths(value, (*prefix, key))
    return found


def _replaced(record: dict[str, Any], path: tuple[str, ...], value: Any) -> dict[str, Any]:
    target = record
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return record


def _request(
    service: RunningService, operations: list[tuple[str, str, list[str]]], data: st.DataObject
) -> httpx.Response:
    kind = data.draw(st.sampled_from(["operation", "record", "token", "search"]))
    headers = {
        name: data.draw(HEADER_VALUES)
        for name in data.draw(st.lists(st.sampled_from(HEADERS[:-1]), max_size=2, unique=True))
    }
    with service.signed_in() as client:
        if kind == "record":
            record = data.draw(st.sampled_from(RECORDS))()
            path = data.draw(st.sampled_from([*_paths(record), ("unknown_field",)]))
            body = _replaced(record, path, data.draw(JSON_VALUES))
            return client.post("/api/v1/records", json=body)
        if kind == "token":
            claims = {name: data.draw(JSON_VALUES) for name in ("iss", "aud", "exp", "jti")}
            key = ECKey.generate_key("P-384", parameters={"kid": "k1"})
            form = {
                "grant_type": data.draw(st.sampled_from(["client_credentials", *TEXTS])),
                "client_assertion_type": JWT_BEARER,
                "client_assertion": jwt.encode({"alg": "ES384"}, claims, key, ["ES384"]),
                "scope": data.draw(st.sampled_from(["system/*.rs", *TEXTS])),
            }
            return client.post("/auth/token", data=form)
        if kind == "search":
            form = {
                data.draw(st.sampled_from(["code", "date", "_id", "patient", "_count"])): data.draw(
                    QUERY_VALUES
                )
            }
            return client.post("/fhir/Observation/_search", data=form, headers=headers)
        method, template, names = data.draw(st.sampled_from(operations))
        path = template
        while "{" in path:
            start, end = path.index("{"), path.index("}")
            path = path[:start] + quote(data.draw(QUERY_VALUES), safe="") + path[end + 1 :]
        params = {name: data.draw(QUERY_VALUES) for name in names if data.draw(st.booleans())}
        if data.draw(st.booleans()):
            headers["Authorization"] = data.draw(
                st.sampled_from(["Bearer", "Bearer iak_x", "Basic abc", "Bearer " + "x" * 3000])
            )
        content = None
        if method in ("POST", "PUT", "PATCH"):
            content = str(data.draw(JSON_VALUES)).encode()
        return client.request(method, path, params=params, headers=headers, content=content)


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_values_at_and_beyond_every_limit_never_answer_5xx(
    day: RunningService, operations: list[tuple[str, str, list[str]]], data: st.DataObject
) -> None:
    _checked(_request(day, operations, data))
