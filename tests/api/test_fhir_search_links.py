"""Search by a patient's name and along every reference: the searches a client that starts
from a patient (US Core's Patient name search) and follows `_include` and `_revinclude` needs."""

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from adapter.settings import Settings
from adapter.store import migrate
from adapter.store.engine import make_engine
from tests.conftest import EXAMPLE_DAY, ndjson, session

NDJSON = {"content-type": "application/x-ndjson"}


@pytest.fixture
def day(client: TestClient) -> TestClient:
    client.post("/api/v1/records", content=EXAMPLE_DAY.read_bytes(), headers=NDJSON)
    client.post("/api/v1/mapping/reload")
    return client


def _matches(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle.get("entry", []) if e["search"]["mode"] == "match"]


def _included(bundle: dict[str, Any]) -> list[str]:
    return sorted(
        e["resource"]["resourceType"]
        for e in bundle.get("entry", [])
        if e["search"]["mode"] == "include"
    )


def _families(client: TestClient, **params: str) -> list[str]:
    bundle = client.get("/fhir/Patient", params=params).json()
    return sorted(p["name"][0].get("family", "") for p in _matches(bundle))


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"name": "riv"}, ["Rivera"]),
        ({"name": "RIVERA"}, ["Rivera"]),
        ({"name": "ana"}, ["Rivera"]),
        ({"name": "vera"}, []),
        ({"name:contains": "vera"}, ["Rivera"]),
        ({"name:exact": "Rivera"}, ["Rivera"]),
        ({"name:exact": "rivera"}, []),
        ({"family": "nov"}, ["Novak"]),
        ({"family": "peter"}, []),
        ({"given": "peter"}, ["Novak"]),
        ({"name": "riv,nov"}, ["Novak", "Rivera"]),
        ({"name": "Rivera\\,Novak"}, []),  # an escaped comma is in the value (search.html)
        ({"name": "Rivera\\,"}, []),
        ({"name": "Rivera,\\,"}, ["Rivera"]),
        ({"name": "%"}, []),
        ({"name": "_"}, []),
    ],
)
def test_patient_name_search(day: TestClient, params: dict[str, str], expected: list[str]) -> None:
    assert _families(day, **params) == expected


def test_name_search_ignores_accents(client: TestClient) -> None:
    record = session(id="SES-ACCENT", patient={"mrn": "300001", "family": "Núñez", "given": "Zoë"})
    client.post("/api/v1/records", content=ndjson(record), headers=NDJSON)
    client.post("/api/v1/mapping/reload")

    assert _families(client, name="nunez") == ["Núñez"]
    assert _families(client, given="ZOE") == ["Núñez"]
    assert _families(client, **{"name:exact": "Núñez"}) == ["Núñez"]


def test_a_string_modifier_not_supported_is_refused_by_name(day: TestClient) -> None:
    answer = day.get("/fhir/Patient", params={"name:missing": "true"})

    assert answer.status_code == 400
    assert "name:missing" in answer.json()["issue"][0]["diagnostics"]


def test_from_a_patient_to_everything_by_revinclude(day: TestClient) -> None:
    bundle = day.get(
        "/fhir/Patient",
        params=[
            ("family", "Rivera"),
            ("_revinclude", "Encounter:patient"),
            ("_revinclude", "CarePlan:patient"),
            ("_revinclude", "Procedure:patient"),
            ("_revinclude", "DetectedIssue:patient"),
        ],
    ).json()

    included = _included(bundle)
    assert len(_matches(bundle)) == 1
    assert included.count("Encounter") == included.count("Procedure") >= 1
    assert included.count("CarePlan") >= 1


def test_include_the_patient_the_visit_and_the_series(day: TestClient) -> None:
    bundle = day.get(
        "/fhir/Procedure",
        params=[
            ("identifier", "SES-2026-00412"),
            ("_include", "Procedure:patient:Patient"),
            ("_include", "Procedure:encounter"),
            ("_include", "Procedure:based-on"),
        ],
    ).json()

    assert _included(bundle) == ["CarePlan", "Encounter", "Patient"]


def test_a_visit_with_what_happened_in_it(day: TestClient) -> None:
    procedure = _matches(
        day.get("/fhir/Procedure", params={"identifier": "SES-2026-00412"}).json()
    )[0]
    encounter_id = procedure["encounter"]["reference"].split("/")[1]

    bundle = day.get(
        "/fhir/Encounter",
        params=[
            ("_id", encounter_id),
            ("_revinclude", "Observation:encounter"),
            ("_revinclude", "MedicationAdministration:context"),
            ("_revinclude", "DocumentReference:encounter"),
        ],
    ).json()
    by_visit = {
        kind: day.get(
            f"/fhir/{kind}", params={param: f"Encounter/{encounter_id}", "_count": "1000"}
        ).json()
        for kind, param in [
            ("Observation", "encounter"),
            ("MedicationAdministration", "context"),
            ("DocumentReference", "encounter"),
        ]
    }

    included = _included(bundle)
    for kind, found in by_visit.items():
        assert included.count(kind) == len(_matches(found)) > 0, kind


@pytest.mark.parametrize(
    "value", ["Procedure:patient:Encounter", "Observation:code", "Observation:part-of:Patient"]
)
def test_an_include_that_is_not_a_reference_here_is_refused(day: TestClient, value: str) -> None:
    answer = day.get("/fhir/Procedure", params={"_include": value})

    assert answer.status_code == 400
    assert "_include" in answer.json()["issue"][0]["diagnostics"]


def test_visits_and_series_by_date(day: TestClient) -> None:
    def count(resource_type: str, value: str) -> int:
        bundle = day.get(f"/fhir/{resource_type}", params={"date": value}).json()
        return len(_matches(bundle))

    # Two visits ended that day; the no-show's has no end, and each series runs on.
    assert count("Encounter", "2026-11-20") == 2
    assert count("Encounter", "ge2026-11-20") == 3
    assert count("Encounter", "lt2026-11-20") == 0
    assert count("CarePlan", "2026-11-20") == 0
    assert count("CarePlan", "ge2026-11-20") == 3
    assert count("CarePlan", "gt2026-12-31") == 3


def test_an_upgrade_indexes_what_was_stored_before(day: TestClient, settings: Settings) -> None:
    """Resources stored before names and periods were indexed are found once migrated."""
    engine = make_engine(settings.database_url)
    with engine.begin() as connection:
        connection.execute(
            text("DELETE FROM fhir_search_tokens WHERE param IN ('name', 'family', 'given')")
        )
        connection.execute(
            text(
                "UPDATE fhir_resources SET date_start = NULL, date_end = NULL "
                "WHERE resource_type IN ('Encounter', 'CarePlan')"
            )
        )
    assert _families(day, name="riv") == []

    migrate.downgrade(engine, "0011")
    migrate.upgrade(engine)
    engine.dispose()

    assert _families(day, name="riv") == ["Rivera"]
    assert len(_matches(day.get("/fhir/Encounter", params={"date": "2026-11-20"}).json())) == 2


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("DetectedIssue:implicated", {"Encounter", "Procedure", "MedicationAdministration"}),
        ("DetectedIssue:implicated:Procedure", {"Procedure"}),
        ("DetectedIssue:implicated:Encounter", {"Encounter"}),
    ],
)
def test_an_include_of_a_reference_to_several_types_takes_the_type_it_names(
    day: TestClient, value: str, expected: set[str]
) -> None:
    """A protocol breach implicates its session's Procedure and visit (and other sessions):
    the type named after the parameter is the one type included (R4 search.html, _include)."""
    bundle = day.get("/fhir/DetectedIssue", params={"_include": value}).json()
    implicated = {
        reference["reference"]
        for issue in _matches(bundle)
        for reference in issue.get("implicated", [])
        if reference["reference"].split("/")[0] in expected
    }
    included = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle["entry"]
        if e["search"]["mode"] == "include"
    }

    assert implicated and included == implicated
