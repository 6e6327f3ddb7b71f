"""A FHIR client bound to sites sees theirs alone: search, read, history, _include and
_revinclude, $export; an unbound client sees every site."""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.tables import fhir_search_tokens
from tests.conftest import session
from tests.sites import NORTH, SOUTH, group_client, site_token

ASYNC = {"Prefer": "respond-async"}


@pytest.fixture
def group(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    with group_client(settings, tmp_path, [session(clinic_site=s) for s in (NORTH, SOUTH)]) as c:
        yield c


_token = site_token


def _ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in bundle.get("entry", [])
        if e.get("search", {}).get("mode", "match") == mode
    ]


def _procedures(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    """Each site's Procedure id, as an unbound client sees them."""
    bundle = client.get("/fhir/Procedure", headers=headers).json()
    found = {}
    for entry in bundle["entry"]:
        tags = entry["resource"]["meta"]["tag"]
        site = next(t["code"] for t in tags if t["system"].endswith("/site"))
        found[site] = entry["resource"]["id"]
    return found


def test_a_client_bound_to_a_site_sees_its_resources_alone(group: TestClient) -> None:
    everyone = _token(group, None)
    north = _token(group, [NORTH])
    procedures = _procedures(group, everyone)
    assert set(procedures) == {NORTH, SOUTH}
    south_id = procedures[SOUTH]

    searched = group.get("/fhir/Procedure", headers=north).json()
    by_id = group.get("/fhir/Procedure", params={"_id": south_id}, headers=north).json()
    read = group.get(f"/fhir/Procedure/{south_id}", headers=north)
    own = group.get(f"/fhir/Procedure/{procedures[NORTH]}", headers=north)
    history = group.get(f"/fhir/Procedure/{south_id}/_history", headers=north)
    vread = group.get(f"/fhir/Procedure/{south_id}/_history/1", headers=north)
    type_history = group.get("/fhir/Procedure/_history", headers=north).json()
    patients = group.get("/fhir/Patient", headers=north).json()

    assert _ids(searched) == [f"Procedure/{procedures[NORTH]}"]
    assert _ids(by_id) == []
    assert read.status_code == 404 and own.status_code == 200
    assert read.json()["resourceType"] == "OperationOutcome"
    assert history.status_code == 404 and vread.status_code == 404
    assert {e["resource"]["id"] for e in type_history["entry"]} == {procedures[NORTH]}
    assert type_history["total"] == 1
    assert len(_ids(patients)) == 1
    # Unbound, the same reads find both sites.
    assert group.get(f"/fhir/Procedure/{south_id}", headers=everyone).status_code == 200
    assert len(_ids(group.get("/fhir/Patient", headers=everyone).json())) == 2


def test_include_and_revinclude_never_reach_another_sites_resource(group: TestClient) -> None:
    everyone = _token(group, None)
    north = _token(group, [NORTH])
    procedures = _procedures(group, everyone)
    south_patient = orjson.loads(
        group.get(f"/fhir/Procedure/{procedures[SOUTH]}", headers=everyone).content
    )["subject"]["reference"]
    # North's Procedure made to name south's patient in the search index: what _include
    # follows and what _revinclude finds then cross the sites.
    runtime: Runtime = group.app.state.runtime  # type: ignore[attr-defined]
    with runtime.store.engine.begin() as connection:
        connection.execute(
            fhir_search_tokens.insert().values(
                resource_id=procedures[NORTH],
                param="patient",
                system="reference",
                code=south_patient,
            )
        )

    included = group.get(
        "/fhir/Procedure", params={"_include": "Procedure:patient"}, headers=north
    ).json()
    unbound = group.get(
        "/fhir/Procedure",
        params={"_id": procedures[NORTH], "_include": "Procedure:patient"},
        headers=everyone,
    ).json()
    own_patient = group.get(
        "/fhir/Patient", params={"_revinclude": "Procedure:patient"}, headers=north
    ).json()
    south_patient_search = group.get(
        "/fhir/Patient",
        params={"_id": south_patient.split("/")[1], "_revinclude": "Procedure:patient"},
        headers=everyone,
    ).json()

    assert south_patient in _ids(unbound, "include")  # the index does cross
    assert south_patient not in _ids(included, "include")
    assert f"Procedure/{procedures[NORTH]}" in _ids(south_patient_search, "include")
    assert _ids(own_patient, "include") == [f"Procedure/{procedures[NORTH]}"]


def test_export_of_a_site_bound_client_holds_its_sites_resources(group: TestClient) -> None:
    north = _token(group, [NORTH])
    everyone = _token(group, None)
    runtime: Runtime = group.app.state.runtime  # type: ignore[attr-defined]

    def exported(headers: dict[str, str], path: str) -> dict[str, list[dict[str, Any]]]:
        location = group.get(path, headers={**headers, **ASYNC}).headers["content-location"]
        runtime.exports.run()
        manifest = group.get(location, headers=headers).json()
        files = {}
        for output in manifest["output"]:
            body = group.get(output["url"], headers=headers).content
            files[output["type"]] = [orjson.loads(line) for line in body.splitlines()]
        return files

    for path in ("/fhir/$export", "/fhir/Patient/$export"):
        mine = exported(north, path)
        theirs = exported(everyone, path)
        assert mine and theirs
        for resources in mine.values():
            for resource in resources:
                tags = {t["code"] for t in resource["meta"]["tag"] if t["system"].endswith("/site")}
                assert tags == {NORTH}, path
        assert len(theirs["Procedure"]) == 2 and len(mine["Procedure"]) == 1
