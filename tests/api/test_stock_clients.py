"""FHIR clients no one here wrote, used as an EHR's integration team would use them, unchanged:
fhir-kit-client and Medplum's MedplumClient from npm (tests/fhir-clients/drive.mjs drives them)
and fhirpy from PyPI. Each starts from a patient found by MRN and reaches everything the clinic
recorded about them by following references and standard search."""

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
from fhirpy import SyncFHIRClient

from adapter.sync.auth import SmartBackendAuth
from tests.conftest import EXAMPLE_DAY, LiveServer

DRIVER = Path(__file__).parents[1] / "fhir-clients" / "drive.mjs"
MRN_SYSTEM = "https://ketamine-clinic.example.org/fhir/sid/mrn"
PATIENTS = ["100234", "100871"]
"""The example day's two patients with sessions (a third, 101002, has a record of one kind)."""
EVERY_PATIENT = [*PATIENTS, "101002"]
PATIENT_PARAM = {
    "Encounter": "patient",
    "CarePlan": "patient",
    "Procedure": "patient",
    "Observation": "patient",
    "MedicationAdministration": "patient",
    "AdverseEvent": "subject",
    "DetectedIssue": "patient",
    "DocumentReference": "patient",
}


def _load(server: LiveServer) -> None:
    lines = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
    server.runtime.intake.submit(list(enumerate(lines)))
    server.runtime.mapping.run()


def _drive(job: dict[str, Any], meanwhile: Callable[[], object] | None = None) -> dict[str, Any]:
    """The driver's answer to a job; `meanwhile` runs every tenth of a second until it ends
    (the service's background work, which this in-process service runs only when asked)."""
    process = subprocess.Popen(
        ["node", str(DRIVER), json.dumps(job)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while process.poll() is None and time.monotonic() < deadline:
        if meanwhile is not None:
            meanwhile()
        time.sleep(0.1)
    if process.poll() is None:
        process.kill()
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr[-2000:]
    answer: dict[str, Any] = json.loads(stdout)
    assert "error" not in answer, answer
    return answer


def _auth(server: LiveServer) -> SmartBackendAuth:
    return SmartBackendAuth(
        base_url=f"{server.url}/fhir",
        client_id=server.credentials.smart.id,
        key=server.credentials.private_key,
        algorithm="ES384",
        scopes="",
        key_id="test-1",
    )


def _expected(server: LiveServer, mrn: str) -> dict[str, int]:
    """What the service holds for the patient, counted by plain searches."""
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {server.credentials.token}"
    base = f"{server.url}/fhir"
    found = session.get(f"{base}/Patient", params={"identifier": f"{MRN_SYSTEM}|{mrn}"}).json()
    patient = found["entry"][0]["resource"]
    return {
        kind: session.get(
            f"{base}/{kind}",
            params={param: f"Patient/{patient['id']}", "_summary": "count"},
        ).json()["total"]
        for kind, param in PATIENT_PARAM.items()
    }


@pytest.fixture
def day(live_server: LiveServer) -> LiveServer:
    _load(live_server)
    return live_server


@pytest.mark.parametrize("client", ["fhir-kit-client", "medplum"])
@pytest.mark.parametrize("mrn", PATIENTS)
def test_from_the_mrn_every_reference_resolves(day: LiveServer, client: str, mrn: str) -> None:
    token_url = f"{day.url}/auth/token"
    answer = _drive(
        {
            "client": client,
            "task": "walk",
            "base": day.url,
            "token": day.credentials.token,
            "tokenUrl": token_url,
            "clientId": day.credentials.smart.id,
            "assertion": _auth(day).assertion(token_url),
            "mrn": f"{MRN_SYSTEM}|{mrn}",
            "count": 10,
        }
    )

    expected = _expected(day, mrn)
    assert answer["counts"] == expected
    assert answer["failures"] == []
    assert answer["repeated"] == 0
    # Every kind of thing recorded is there, and every resource names its patient and visit.
    assert all(expected[kind] > 0 for kind in ("Encounter", "CarePlan", "Procedure"))
    assert answer["resolved"]["Patient"] >= sum(expected.values())
    assert answer["resolved"]["Encounter"] >= expected["Observation"]
    assert answer["resolved"]["CarePlan"] >= expected["Procedure"]
    assert answer["pages"]["Observation"] == -(-expected["Observation"] // 10)


def test_medplum_logs_in_with_its_own_client_credentials_call(day: LiveServer) -> None:
    token_url = f"{day.url}/auth/token"
    answer = _drive(
        {
            "client": "medplum",
            "task": "login",
            "base": day.url,
            "tokenUrl": token_url,
            "clientId": day.credentials.smart.id,
            "assertion": _auth(day).assertion(token_url),
            "mrn": f"{MRN_SYSTEM}|100234",
        }
    )

    assert answer == {"loggedIn": True, "found": 1}


@pytest.mark.parametrize("client", ["medplum", "fhir-kit-client"])
def test_bulk_export_end_to_end(day: LiveServer, client: str) -> None:
    token_url = f"{day.url}/auth/token"
    answer = _drive(
        {
            "client": client,
            "task": "export",
            "base": day.url,
            "token": day.credentials.token,
            "tokenUrl": token_url,
            "clientId": day.credentials.smart.id,
            "assertion": _auth(day).assertion(token_url),
        },
        meanwhile=day.runtime.exports.run,
    )

    expected = {kind: 0 for kind in PATIENT_PARAM}
    for mrn in EVERY_PATIENT:
        for kind, count in _expected(day, mrn).items():
            expected[kind] += count
    assert answer["requiresAccessToken"] is True
    assert answer["lines"]["Patient"] == len(EVERY_PATIENT)
    for kind, count in expected.items():
        assert answer["lines"].get(kind, 0) == count, kind


def test_fhir_kit_client_discovers_the_token_endpoint(day: LiveServer) -> None:
    answer = _drive({"client": "fhir-kit-client", "task": "discover", "base": day.url, "token": ""})

    assert answer == {"tokenUrl": f"{day.url}/auth/token"}


def test_fhir_kit_client_pages_type_history_to_the_end(day: LiveServer) -> None:
    answer = _drive(
        {
            "client": "fhir-kit-client",
            "task": "history",
            "base": day.url,
            "token": day.credentials.token,
            "type": "Observation",
            "count": 20,
        }
    )

    versions = len(day.runtime.fhir_reads.versions("Observation"))
    assert versions > 20
    assert answer["versions"] == answer["distinct"] == versions
    assert answer["pages"] == -(-versions // 20)


def test_fhirpy_follows_every_reference_from_the_mrn(day: LiveServer) -> None:
    session = requests.Session()
    session.trust_env = False
    auth = _auth(day)
    auth.scopes = "system/*.rs"
    client = SyncFHIRClient(f"{day.url}/fhir", authorization=auth.header(session, 10.0))

    patient = client.resources("Patient").search(identifier=f"{MRN_SYSTEM}|100234").get()
    found: list[Any] = [patient]
    for kind, param in PATIENT_PARAM.items():
        found += client.resources(kind).search(**{param: patient.id}).limit(10).fetch_all()
    resolved: dict[str, int] = {}
    for resource in found:
        for reference in _references(resource.serialize()):
            target = client.reference(reference=reference).to_resource()
            assert target["resourceType"] == reference.split("/")[0]
            resolved[target["resourceType"]] = resolved.get(target["resourceType"], 0) + 1

    expected = _expected(day, "100234")
    assert len(found) == 1 + sum(expected.values())
    assert resolved["Patient"] >= sum(expected.values())
    assert resolved["Encounter"] >= expected["Observation"]


def _references(value: Any) -> list[str]:
    """The literal `Type/id` references in a resource (contained ones, `#...`, aside)."""
    found: list[str] = []
    if isinstance(value, list):
        for item in value:
            found += _references(item)
    elif isinstance(value, dict):
        reference = value.get("reference")
        if isinstance(reference, str) and not reference.startswith("#"):
            found.append(reference)
        for key, item in value.items():
            if key != "contained":
                found += _references(item)
    return found
