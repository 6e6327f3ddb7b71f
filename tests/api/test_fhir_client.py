"""A FHIR client no one here wrote (fhirpy) pulls from the running service over loopback,
with an access token obtained as a SMART backend client at the service's token endpoint."""

import requests
from fhirpy import SyncFHIRClient

from adapter.sync.auth import SmartBackendAuth
from tests.conftest import EXAMPLE_DAY, LiveServer, ndjson, vitals
from tests.mapping.helpers import example_day


def _fhir_client(server: LiveServer) -> SyncFHIRClient:
    """Discovery at .well-known/smart-configuration, then a signed assertion for a token."""
    base = f"{server.url}/fhir"
    smart = server.credentials.smart
    auth = SmartBackendAuth(
        base_url=base,
        client_id=smart.id,
        key=server.credentials.private_key,
        algorithm="ES384",
        scopes="system/Observation.rs system/Procedure.rs",
        key_id="test-1",
    )
    session = requests.Session()
    session.trust_env = False
    header = auth.header(session, 10.0)
    assert auth.token_url == f"{server.url}/auth/token"
    return SyncFHIRClient(base, authorization=header)


def _load(server: LiveServer, body: bytes) -> None:
    lines = [line for line in body.splitlines() if line.strip()]
    server.runtime.intake.submit(list(enumerate(lines)))
    server.runtime.mapping.run()


def test_search_to_the_end_read_and_revinclude(live_server: LiveServer) -> None:
    _load(live_server, EXAMPLE_DAY.read_bytes())
    client = _fhir_client(live_server)

    observations = client.resources("Observation").limit(7).fetch_all()
    heart = client.resources("Observation").search(code="http://loinc.org|8867-4").first()
    read = client.reference("Observation", heart["id"]).to_resource()
    with_parts = (
        client.resources("Procedure")
        .search(identifier="SES-2026-00415")
        .revinclude("Observation", "part-of")
        .fetch_raw()
    )

    # 65 from the vitals, attestations and sessions, and one per side effect (3).
    assert len(observations) == 68
    assert len({o["id"] for o in observations}) == 68
    assert read["id"] == heart["id"] and read["code"]["coding"][0]["code"] == "8867-4"
    kinds = [entry["resource"]["resourceType"] for entry in with_parts["entry"]]
    assert kinds.count("Procedure") == 1 and kinds.count("Observation") == 12


def test_incremental_polling_sees_each_change_once(live_server: LiveServer) -> None:
    client = _fhir_client(live_server)
    bodies = example_day()
    seen: list[tuple[str, str]] = []
    last = "2000-01-01T00:00:00+00:00"

    for start in range(0, len(bodies), 5):
        _load(live_server, ndjson(*bodies[start : start + 5]))
        changed = (
            client.resources("Observation").search(_lastUpdated=f"gt{last}").limit(4).fetch_all()
        )
        for resource in changed:
            seen.append((resource["id"], resource["meta"]["versionId"]))
            last = max(last, resource["meta"]["lastUpdated"])
    _load(
        live_server,
        ndjson(vitals(id="VIT-77001", session_id="SES-2026-00412", revision=2, heart_rate=88)),
    )
    for resource in client.resources("Observation").search(_lastUpdated=f"gt{last}").fetch_all():
        seen.append((resource["id"], resource["meta"]["versionId"]))

    assert len(seen) == len(set(seen))
    assert len({resource_id for resource_id, _ in seen}) == 68
    # VIT-77001 revision 2 keeps 3 of its 7 measures: 3 amended, 4 withdrawn, each seen once more.
    assert sum(1 for _, version in seen if version == "2") == 7
