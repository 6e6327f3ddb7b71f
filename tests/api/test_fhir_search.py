"""Search semantics on /fhir, with the boundary cases of dates, counts, paging and handling."""

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import EXAMPLE_DAY, ndjson, session, vitals

NDJSON = {"content-type": "application/x-ndjson"}
MRN = "https://ketamine-clinic.example.org/fhir/sid/mrn"


def _load(client: TestClient, body: bytes) -> None:
    client.post("/api/v1/records", content=body, headers=NDJSON)
    client.post("/api/v1/mapping/reload")


def _ids(bundle: dict[str, Any]) -> list[str]:
    return [
        e["resource"]["identifier"][0]["value"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "match"
    ]


@pytest.fixture
def month_edges(client: TestClient) -> TestClient:
    """Heart rates either side of November 2026 (UTC)."""
    moments = {
        "A": "2026-10-31T23:59:59Z",
        "B": "2026-11-01T00:00:00Z",
        "C": "2026-11-30T23:59:59Z",
        "D": "2026-12-01T00:00:00Z",
    }
    body = ndjson(
        *(
            vitals(id=name, taken_at=moment, systolic=None, diastolic=None, spo2=None)
            for name, moment in moments.items()
        )
    )
    _load(client, body)
    return client


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2026-11", ["B", "C"]),
        ("eq2026-11", ["B", "C"]),
        ("ne2026-11", ["A", "D"]),
        ("lt2026-11", ["A"]),
        ("gt2026-11", ["D"]),
        ("ge2026-11", ["B", "C", "D"]),
        ("le2026-11", ["A", "B", "C"]),
        ("sa2026-11", ["D"]),
        ("eb2026-11", ["A"]),
        ("ge2026-11-01T00:00:00+01:00", ["A", "B", "C", "D"]),
        ("lt2026-11-01T00:00:00-05:00", ["A", "B"]),
        ("2026-11-30T23:59:59Z", ["C"]),
        ("2026", ["A", "B", "C", "D"]),
    ],
)
def test_date_prefixes_at_the_edges_of_a_partial_date(
    month_edges: TestClient, value: str, expected: list[str]
) -> None:
    bundle = month_edges.get("/fhir/Observation", params={"date": value, "_sort": "date"}).json()

    assert [i.split("/")[0] for i in _ids(bundle)] == expected


def test_last_updated_prefixes(month_edges: TestClient) -> None:
    assert len(_ids(month_edges.get("/fhir/Observation?_lastUpdated=gt2000-01-01").json())) == 4
    assert _ids(month_edges.get("/fhir/Observation?_lastUpdated=lt2000-01-01").json()) == []


def test_a_bad_date_is_400(client: TestClient) -> None:
    response = client.get("/fhir/Observation?date=ge2026-13")
    approximately = client.get("/fhir/Observation?date=ap2026-11-20")

    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["date"]
    assert approximately.status_code == 400
    assert (
        "the ap (approximately) prefix is not supported"
        in (approximately.json()["issue"][0]["diagnostics"])
    )


@pytest.mark.parametrize("value", ["-1", "ten", "\u00b2", "1.5"])
def test_a_count_that_is_not_a_whole_number_is_400(client: TestClient, value: str) -> None:
    response = client.get("/fhir/Observation", params={"_count": value})

    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["_count"]


@pytest.fixture
def day(client: TestClient) -> TestClient:
    _load(client, EXAMPLE_DAY.read_bytes())
    return client


def test_patient_by_identifier_modifier_and_chain(day: TestClient) -> None:
    by_modifier = day.get(
        "/fhir/Observation", params={"patient:identifier": f"{MRN}|100871", "_count": "100"}
    ).json()
    by_chain = day.get(
        "/fhir/Observation", params={"patient.identifier": f"{MRN}|100871", "_count": "100"}
    ).json()
    other = day.get("/fhir/Observation", params={"patient:identifier": f"{MRN}|999999"}).json()

    # 11, and the Observation of the patient's side effect.
    assert len(_ids(by_modifier)) == 12 and _ids(by_modifier) == _ids(by_chain)
    assert _ids(other) == []


def test_a_reference_may_be_given_as_this_servers_own_url(day: TestClient) -> None:
    """R4 search.html, reference: `[type]/[id]`, `[id]`, or the resource's absolute URL; the
    URL of a resource on another server matches nothing here."""
    found = day.get("/fhir/Observation", params={"patient:identifier": f"{MRN}|100871"}).json()
    patient = found["entry"][0]["resource"]["subject"]["reference"]
    base = found["entry"][0]["fullUrl"].rsplit("/", 2)[0]  # as this server names itself

    def ids(value: str) -> list[str]:
        return _ids(day.get("/fhir/Observation", params={"patient": value, "_count": "100"}).json())

    relative = ids(patient)
    assert len(relative) == 12
    assert ids(f"{base}/{patient}") == relative == ids(patient.split("/")[1])
    assert ids(f"https://ehr.example.org/fhir/{patient}") == []


def test_tokens_with_and_without_system(day: TestClient) -> None:
    with_system = day.get(
        "/fhir/Observation", params={"code": "http://loinc.org|8867-4", "_total": "accurate"}
    ).json()
    without = day.get("/fhir/Observation", params={"code": "8867-4", "_total": "accurate"}).json()
    wrong_system = day.get(
        "/fhir/Observation", params={"code": "http://snomed.info/sct|8867-4"}
    ).json()
    either = day.get(
        "/fhir/Observation", params={"code": "8867-4,9279-1", "_total": "accurate"}
    ).json()

    assert with_system["total"] == without["total"] == 9
    assert _ids(wrong_system) == []
    assert either["total"] == 17
    assert day.get("/fhir/Observation?category=survey&_total=accurate").json()["total"] == 24


def test_revinclude_returns_a_session_with_its_observations(day: TestClient) -> None:
    bundle = day.get(
        "/fhir/Procedure",
        params={"identifier": "SES-2026-00412", "_revinclude": "Observation:part-of"},
    ).json()

    modes = [(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]]
    assert modes[0] == ("Procedure", "match")
    assert modes.count(("Observation", "include")) == 56  # 54, and two side effects


def test_include_follows_part_of(day: TestClient) -> None:
    bundle = day.get(
        "/fhir/Observation", params={"code": "49541-6", "_include": "Observation:part-of"}
    ).json()

    assert sorted(
        e["resource"]["resourceType"] for e in bundle["entry"] if e["search"]["mode"] == "include"
    ) == ["Procedure", "Procedure"]


def test_count_zero_cap_and_summary(day: TestClient) -> None:
    zero = day.get("/fhir/Observation?_count=0").json()
    capped = day.get("/fhir/Observation?_count=100000").json()
    summary = day.get("/fhir/Observation?_summary=count").json()

    assert zero["total"] == summary["total"] == 68 and "entry" not in zero
    assert len(capped["entry"]) == 68 and [link["relation"] for link in capped["link"]] == ["self"]


@pytest.mark.parametrize("summary", ["true", "text", "data", "false"])
def test_a_summary_this_server_does_not_make_answers_whole_resources(
    day: TestClient, summary: str
) -> None:
    """R4 search.html, _summary: `false` is the default; a summary not made here answers the
    resources whole, says so in the Bundle (refused under strict handling); a value that is
    none of them is 400."""
    whole = day.get("/fhir/Observation", params={"_summary": summary}).json()
    strict = day.get(
        "/fhir/Observation", params={"_summary": summary}, headers={"Prefer": "handling=strict"}
    )
    wrong = day.get("/fhir/Observation", params={"_summary": "brief"})

    matches = [e for e in whole["entry"] if e["search"]["mode"] == "match"]
    outcomes = [e["resource"] for e in whole["entry"] if e["search"]["mode"] == "outcome"]
    plain = day.get("/fhir/Observation").json()
    assert [e["resource"] for e in matches] == [e["resource"] for e in plain["entry"]]
    if summary == "false":
        assert outcomes == [] and strict.status_code == 200
    else:
        assert f"_summary={summary}" in outcomes[0]["issue"][0]["diagnostics"]
        assert strict.status_code == 400
    assert wrong.status_code == 400


def test_default_page_size_is_fifty(day: TestClient) -> None:
    bundle = day.get("/fhir/Observation").json()

    assert len(bundle["entry"]) == 50
    assert [link["relation"] for link in bundle["link"]] == ["self", "next"]


def test_paging_is_stable_while_records_arrive(client: TestClient) -> None:
    _load(
        client,
        ndjson(
            *(vitals(id=f"V-{n:02d}", systolic=None, diastolic=None, spo2=None) for n in range(12))
        ),
    )
    first = client.get("/fhir/Observation?_count=5").json()
    _load(
        client,
        ndjson(
            *(vitals(id=f"W-{n:02d}", systolic=None, diastolic=None, spo2=None) for n in range(7))
        ),
    )

    seen = _ids(first)
    url = next(link["url"] for link in first["link"] if link["relation"] == "next")
    while url:
        page = client.get(url).json()
        seen += _ids(page)
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)

    assert len(seen) == len(set(seen)) == 19
    assert {i for i in seen if i.startswith("V-")} == {f"V-{n:02d}/heart_rate" for n in range(12)}


def test_previous_link_returns_the_page_before(day: TestClient) -> None:
    first = day.get("/fhir/Observation?_count=10&_sort=-date").json()
    second = day.get(
        next(link["url"] for link in first["link"] if link["relation"] == "next")
    ).json()
    back = day.get(
        next(link["url"] for link in second["link"] if link["relation"] == "previous")
    ).json()

    assert _ids(back) == _ids(first)
    assert not set(_ids(first)) & set(_ids(second))


def test_a_forged_cursor_is_400(day: TestClient) -> None:
    assert day.get("/fhir/Observation?_cursor=eyJ2IjoxfQ").status_code == 400


def test_unknown_parameters_lenient_and_strict(day: TestClient) -> None:
    lenient = day.get("/fhir/Observation?code=8867-4&flavour=mint").json()
    strict = day.get(
        "/fhir/Observation?code=8867-4&flavour=mint", headers={"Prefer": "handling=strict"}
    )

    outcome = lenient["entry"][-1]
    assert outcome["search"]["mode"] == "outcome"
    assert "flavour" in outcome["resource"]["issue"][0]["diagnostics"]
    assert len(_ids(lenient)) == 9
    assert strict.status_code == 400
    assert strict.json()["issue"][0]["expression"] == ["flavour"]


def test_post_search_equals_get(day: TestClient) -> None:
    posted = day.post(
        "/fhir/Observation/_search",
        content="code=8867-4&_count=100",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ).json()

    assert _ids(posted) == _ids(day.get("/fhir/Observation?code=8867-4&_count=100").json())


@pytest.mark.parametrize(
    ("body", "kind"),
    [('{"code":"8867-4"}', "application/json"), ("code=8867-4", "text/plain"), ("code=1", "")],
)
def test_a_posted_search_in_another_form_is_415(day: TestClient, body: str, kind: str) -> None:
    """R4 http.html#search: a POSTed search's parameters are a form's; another body would be
    read as one, or ignored, and answer every resource."""
    headers = {"content-type": kind} if kind else {}
    answer = day.post("/fhir/Observation/_search", content=body, headers=headers)

    assert answer.status_code == 415
    assert "application/x-www-form-urlencoded" in answer.json()["issue"][0]["diagnostics"]


def test_status_and_id(client: TestClient) -> None:
    _load(client, ndjson(session(status="cancelled", infusion_start=None, infusion_end=None)))
    procedure = client.get("/fhir/Procedure?status=not-done").json()["entry"][0]["resource"]

    assert (
        client.get(f"/fhir/Procedure?_id={procedure['id']}").json()["entry"][0]["resource"]["id"]
        == procedure["id"]
    )
    assert _ids(client.get("/fhir/Procedure?status=completed").json()) == []


@pytest.mark.parametrize(
    "payload", ["' OR '1'='1", "1; DROP TABLE fhir_resources; --", "%27%20OR%201=1", "\\u0000"]
)
def test_injection_attempts_are_plain_values(day: TestClient, payload: str) -> None:
    for name in ("code", "_id", "patient:identifier", "date", "_lastUpdated", "part-of"):
        response = day.get("/fhir/Observation", params={name: payload})
        assert response.status_code in (200, 400)
        if response.status_code == 200:
            assert _ids(response.json()) == []
    assert day.get("/fhir/Observation?_summary=count").json()["total"] == 68
