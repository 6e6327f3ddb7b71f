"""FHIR as stock clients expect it: errors as application/fhir+json, history that pages to the
end with each version once, a create's history entry on the type."""

from fastapi.testclient import TestClient

from tests.conftest import EXAMPLE_DAY, ndjson, vitals

NDJSON = {"content-type": "application/x-ndjson"}


def _day(client: TestClient) -> None:
    client.post("/api/v1/records", content=EXAMPLE_DAY.read_bytes(), headers=NDJSON)
    client.post("/api/v1/mapping/reload")


def test_every_fhir_error_is_fhir_json(client: TestClient) -> None:
    unknown = client.get("/fhir/Observation/nothing-here")
    bad_parameter = client.get("/fhir/Observation?date=tomorrow")
    not_served = client.get("/fhir/Basic")
    admin = client.get("/api/v1/records/vitals/nothing-here")

    for response in (unknown, bad_parameter, not_served, admin):
        assert response.status_code in (400, 404)
        assert response.headers["content-type"].startswith("application/fhir+json")
        assert response.json()["resourceType"] == "OperationOutcome"


def test_type_history_pages_to_the_end_with_each_version_once(client: TestClient) -> None:
    _day(client)
    client.post(
        "/api/v1/records",
        content=ndjson(
            vitals(id="VIT-77001", session_id="SES-2026-00412", revision=2, heart_rate=88)
        ),
        headers=NDJSON,
    )
    client.post("/api/v1/mapping/reload")

    seen: list[tuple[str, str]] = []
    totals = set()
    page = client.get("/fhir/Observation/_history", params={"_count": "20"}).json()
    while True:
        totals.add(page["total"])
        seen += [
            (e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in page.get("entry", [])
        ]
        following = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not following:
            break
        page = client.get(following[0]).json()

    # 68 Observations, and a second version of VIT-77001's seven: the three it keeps changed
    # (another patient, no device), the four it dropped are withdrawn.
    assert totals == {75}
    assert len(seen) == len(set(seen)) == 75
    assert len({resource_id for resource_id, _ in seen}) == 68


def test_type_history_refuses_a_cursor_it_did_not_issue(client: TestClient) -> None:
    _day(client)
    search = client.get("/fhir/Observation", params={"_count": "5"}).json()
    cursor = next(link["url"] for link in search["link"] if link["relation"] == "next")
    token = cursor.split("_cursor=")[1].split("&")[0]

    response = client.get("/fhir/Observation/_history", params={"_cursor": token})

    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["_cursor"]


def test_a_first_versions_history_entry_is_a_create_on_the_type(client: TestClient) -> None:
    _day(client)
    resource_id = client.get("/fhir/Procedure").json()["entry"][0]["resource"]["id"]

    history = client.get(f"/fhir/Procedure/{resource_id}/_history").json()

    assert history["entry"][-1]["request"] == {"method": "POST", "url": "Procedure"}
