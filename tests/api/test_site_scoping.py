"""What a client bound to one site of a clinic group can learn of the other site, tried as an
outsider would: every route answers as if the other site did not exist."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings
from tests.conftest import ndjson, session
from tests.sites import NORTH, SOUTH, add_sites, group_client, site_token

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def group(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    records = [
        session(clinic_site=NORTH, id="SES-N", patient={"mrn": "111111"}),
        session(clinic_site=SOUTH, id="SES-S", patient={"mrn": "222222"}),
    ]
    with group_client(settings, tmp_path, records) as client:
        yield client


def _runtime(client: TestClient) -> Runtime:
    return client.app.state.runtime  # type: ignore[attr-defined]


_token = site_token


def _key(client: TestClient, role: str, sites: list[str] | None) -> dict[str, str]:
    _, key = _runtime(client).clients.add_key_client(
        f"{role} key", role, datetime.now(UTC), sites=sites
    )
    return {"Authorization": f"Bearer {key}"}


def _south(client: TestClient, everyone: dict[str, str], resource_type: str) -> dict[str, Any]:
    bundle = client.get(f"/fhir/{resource_type}", headers=everyone).json()
    for entry in bundle["entry"]:
        tags = entry["resource"]["meta"].get("tag", [])
        if any(t["system"].endswith("/site") and t["code"] == SOUTH for t in tags):
            resource: dict[str, Any] = entry["resource"]
            return resource
    raise AssertionError(f"no {resource_type} of {SOUTH}")


def test_searches_counts_and_cursors_never_reveal_the_other_site(group: TestClient) -> None:
    everyone, north = _token(group, None), _token(group, [NORTH])
    south_patient = _south(group, everyone, "Patient")
    south_mrn = south_patient["identifier"][0]
    token = f"{south_mrn['system']}|{south_mrn['value']}"

    by_identifier = group.get("/fhir/Patient", params={"identifier": token}, headers=north)
    by_chain = group.get("/fhir/Procedure", params={"patient:identifier": token}, headers=north)
    count = group.get("/fhir/Procedure", params={"_summary": "count"}, headers=north)
    total = group.get(
        "/fhir/Procedure", params={"_total": "accurate", "_count": "1"}, headers=north
    )
    # A cursor an unbound client was given, replayed by the bound one.
    unbound = group.get("/fhir/Procedure", params={"_count": "1"}, headers=everyone).json()
    nexts = [link["url"] for link in unbound["link"] if link["relation"] == "next"]
    replayed = [group.get(url, headers=north) for url in nexts]

    assert by_identifier.json().get("entry", []) == []
    assert by_chain.json().get("entry", []) == []
    assert count.json()["total"] == 1 and total.json()["total"] == 1
    assert nexts  # the unbound client does have a second page
    assert [answer.status_code for answer in replayed] == [200] * len(replayed)
    assert any(answer.json().get("entry") for answer in replayed)  # the tags below are read
    for answer in replayed:
        for entry in answer.json().get("entry", []):
            tags = {t["code"] for t in entry["resource"]["meta"]["tag"] if "site" in t["system"]}
            assert tags == {NORTH}


def test_another_sites_resource_is_absent_whatever_the_route(group: TestClient) -> None:
    everyone, north = _token(group, None), _token(group, [NORTH])
    south = _south(group, everyone, "Procedure")
    path = f"/fhir/Procedure/{south['id']}"
    etag = group.get(path, headers=everyone).headers["etag"]

    answers = {
        "read": group.get(path, headers=north),
        "if-none-match": group.get(path, headers={**north, "If-None-Match": etag}),
        "vread": group.get(f"{path}/_history/1", headers=north),
        "history": group.get(f"{path}/_history", headers=north),
    }
    never_issued = "/fhir/Procedure/no-such-id"
    unknown = {
        "read": group.get(never_issued, headers=north),
        "if-none-match": group.get(never_issued, headers={**north, "If-None-Match": etag}),
        "vread": group.get(f"{never_issued}/_history/1", headers=north),
        "history": group.get(f"{never_issued}/_history", headers=north),
    }
    since = group.get(
        "/fhir/Procedure/_history", params={"_since": "2000-01-01T00:00:00Z"}, headers=north
    ).json()

    assert {name: a.status_code for name, a in answers.items()} == dict.fromkeys(answers, 404)

    def words(answer: Any, resource_id: str) -> str:
        return str(answer.json()["issue"][0]["diagnostics"]).replace(resource_id, "X")

    # Each route says the same words as for an id never issued.
    assert {name: words(a, south["id"]) for name, a in answers.items()} == {
        name: words(a, "no-such-id") for name, a in unknown.items()
    }
    assert since["total"] == 1


def test_another_clients_export_is_not_found(group: TestClient) -> None:
    everyone, north = _token(group, None), _token(group, [NORTH])
    runtime = _runtime(group)
    kicked = group.get("/fhir/$export", headers={**everyone, **ASYNC})
    location = kicked.headers["content-location"]
    runtime.exports.run()
    manifest = group.get(location, headers=everyone).json()
    file_url = manifest["output"][0]["url"]

    assert group.get(location, headers=north).status_code == 404
    assert group.get(file_url, headers=north).status_code == 404
    assert group.delete(location, headers=north).status_code == 404
    assert group.get(location, headers=everyone).status_code == 200


def test_group_wide_admin_apis_refuse_a_key_bound_to_a_site(group: TestClient) -> None:
    north_admin = _key(group, "admin", [NORTH])
    group_admin = _key(group, "admin", None)
    paths = [
        "/api/v1/sync/dead-letters",
        "/api/v1/sync/waiting",
        "/api/v1/sync/runs",
        "/api/v1/sync/status",
        "/api/v1/audit",
        "/api/v1/mapping/status",
        "/metrics",
    ]
    refused = {p: group.get(p, headers=north_admin).status_code for p in paths}
    replay = group.post("/api/v1/sync/replay", json={"all": True}, headers=north_admin)
    allowed = {p: group.get(p, headers=group_admin).status_code for p in paths}

    assert refused == dict.fromkeys(paths, 403)
    assert replay.status_code == 403
    assert "site" in replay.json()["issue"][0]["diagnostics"]
    assert all(status == 200 for status in allowed.values()), allowed


def test_the_console_refuses_a_site_bound_admin_key(group: TestClient) -> None:
    north_admin = _key(group, "admin", [NORTH])["Authorization"].split()[1]
    form = group.get("/console/sign-in")
    csrf = group.cookies.get("adapter_console_sign_in") or ""
    answer = group.post(
        "/console/sign-in",
        data={"api_key": north_admin, "csrf": csrf},
        follow_redirects=False,
    )
    assert form.status_code == 200 and csrf
    assert answer.status_code == 401


def _series_export(client: TestClient, headers: dict[str, str], series: str) -> dict[str, Any]:
    kicked = client.get(f"/fhir/Group/series-{series}/$export", headers={**headers, **ASYNC})
    _runtime(client).exports.run()
    manifest = client.get(kicked.headers["content-location"], headers=headers).json()
    files: dict[str, Any] = {}
    for output in manifest["output"]:
        body = client.get(output["url"], headers=headers).content
        files[output["type"]] = [orjson.loads(line) for line in body.splitlines()]
    return files


def test_a_series_export_holds_its_own_patients_not_another_sites_of_the_same_mrn(
    settings: Settings, tmp_path: Path
) -> None:
    """Each site has its own MRN system, so MRN 111111 at north and at south are two people:
    exporting south's series gives south's alone, and a client bound to north gets nothing."""
    records = [
        session(clinic_site=NORTH, id="SES-N", patient={"mrn": "111111"}),
        session(clinic_site=SOUTH, id="SES-S", patient={"mrn": "111111"}, series_id="SER-S"),
    ]
    with group_client(settings, tmp_path, records) as client:
        everyone, north = _token(client, None), _token(client, [NORTH])
        south = _south(client, everyone, "Procedure")
        series = next(b["identifier"]["value"] for b in south["basedOn"] if "identifier" in b)

        theirs = _series_export(client, everyone, series)
        mine = _series_export(client, north, series)

    sites = {
        t["code"]
        for resources in theirs.values()
        for resource in resources
        for t in resource["meta"].get("tag", [])
        if t["system"].endswith("/site")
    }
    assert theirs and sites == {SOUTH}
    assert mine == {}


def test_a_patient_of_two_sites_is_seen_by_each_with_its_own_records(
    settings: Settings, tmp_path: Path
) -> None:
    """Both sites keep the shared MRN system: MRN 333333 is one person at both."""
    add_sites(settings.mappings_dir, own_mrn_systems=False)
    app = create_app(settings, background=False)
    with TestClient(app) as client:
        runtime: Runtime = app.state.runtime
        records = [
            session(
                clinic_site=site,
                id=f"SES-{site}",
                patient={"mrn": "333333", "family": f"Family{site}", "given": "Pat"},
            )
            for site in (NORTH, SOUTH)
        ]
        runtime.intake.submit([(i, ndjson(r)) for i, r in enumerate(records)])
        runtime.mapping.run()
        seen = {}
        for sites in ([NORTH], [SOUTH], None):
            headers = _token(client, sites)
            patients = client.get("/fhir/Patient", headers=headers).json().get("entry", [])
            procedures = client.get("/fhir/Procedure", headers=headers).json().get("entry", [])
            seen[str(sites)] = (
                [e["resource"] for e in patients],
                [e["resource"]["id"] for e in procedures],
            )
    for site in (NORTH, SOUTH):
        patients, procedures = seen[str([site])]
        # Each site has its own Patient of the person, with what its own records state.
        assert [p["name"][0]["family"] for p in patients] == [f"Family{site}"]
        assert len(procedures) == 1
    assert seen[str([NORTH])][0][0]["id"] != seen[str([SOUTH])][0][0]["id"]
    assert len(seen["None"][0]) == 2 and len(seen["None"][1]) == 2


def test_unsupported_reaches_are_refused_or_ignored_not_followed(group: TestClient) -> None:
    everyone, north = _token(group, None), _token(group, [NORTH])
    south_patient = _south(group, everyone, "Patient")["id"]
    asks = {
        "_has": {"_has:Procedure:patient:_id": "x"},
        "iterate": {"_include:iterate": "Procedure:patient", "_include": "Procedure:patient"},
        "chained id": {"patient._id": south_patient},
        "reference": {"patient": f"Patient/{south_patient}"},
    }
    answers = {
        name: group.get("/fhir/Procedure", params=p, headers=north) for name, p in asks.items()
    }
    posted = group.post(
        "/fhir/Procedure/_search", data={"patient": f"Patient/{south_patient}"}, headers=north
    )
    everything = group.get(f"/fhir/Patient/{south_patient}/$everything", headers=north)
    compartment = group.get(f"/fhir/Patient/{south_patient}/Procedure", headers=north)

    for name, answer in answers.items():
        assert answer.status_code in (200, 400), name
        if answer.status_code == 200:
            ids = {
                e["resource"]["id"]
                for e in answer.json().get("entry", [])
                if e["resource"]["resourceType"] != "OperationOutcome"
            }
            assert south_patient not in ids, name
            for e in answer.json().get("entry", []):
                tags = {
                    t["code"]
                    for t in e["resource"].get("meta", {}).get("tag", [])
                    if t["system"].endswith("/site")
                }
                assert tags <= {NORTH}, name
    assert posted.json().get("entry", []) == []
    assert everything.status_code == 404 and compartment.status_code == 404


def test_a_history_cursor_of_an_unbound_client_pages_the_bound_ones_own(
    group: TestClient,
) -> None:
    everyone, north = _token(group, None), _token(group, [NORTH])
    unbound = group.get("/fhir/Procedure/_history", params={"_count": "1"}, headers=everyone)
    nexts = [link["url"] for link in unbound.json()["link"] if link["relation"] == "next"]
    assert nexts and unbound.json()["total"] == 2

    for url in nexts:
        page = group.get(url, headers=north).json()
        assert page["total"] == 1
        for entry in page.get("entry", []):
            tags = {t["code"] for t in entry["resource"]["meta"]["tag"] if "site" in t["system"]}
            assert tags == {NORTH}
