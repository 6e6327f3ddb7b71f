"""A patient the EHR knows by the record's MRN with another birth date: the console shows both
sides, an admin confirms the EHR's Patient, and a replay delivers to it; the confirmation
holds for that Patient alone, is audited, needs the form's CSRF token and can be withdrawn."""

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.sync_state import PatientConfirmation, PatientMatch, PatientMatches
from adapter.sync.engine import sync_once
from adapter.sync.patients import BIRTH_DATE_DIFFERS, FAMILY_DIFFERS, PatientFacts, mismatch
from tests.conftest import grant, ndjson, session
from tests.console.test_access import page_csrf, runtime_of, sign_in
from tests.sync.conftest import ehr, sandbox_server
from tests.sync.sandbox import MRN_SYSTEM, SandboxEhr

__all__ = ["ehr", "sandbox_server"]
MRN = "100234"
PAGE = f"/console/patients/{MRN}"


@pytest.fixture
def held(database_url: str, mappings_dir: Path, ehr: SandboxEhr) -> Iterator[TestClient]:
    """The console of a service whose first run held a session: the EHR's Patient of its MRN
    (the example patient) has another birth date than the clinic charted."""
    settings = Settings(database_url=database_url, mappings_dir=mappings_dir, ehr_base_url=ehr.base)
    app = create_app(settings, background=False)
    with TestClient(app, follow_redirects=False) as console:
        runtime = runtime_of(console)
        record = session(patient={"mrn": MRN, "family": "Rivera", "birth_date": "1979-03-15"})
        runtime.intake.submit([(1, ndjson(record).strip())])
        runtime.mapping.run()
        assert runtime.sync is not None
        sync_once(runtime.sync, trigger="test")
        sign_in(console, grant(runtime).api_key)
        yield console


def ehr_patient_id(ehr: SandboxEhr) -> str:
    found = [
        p
        for p in ehr.all("Patient")
        if any(i.get("value") == MRN and i.get("system") == MRN_SYSTEM for i in p["identifier"])
    ]
    assert len(found) == 1
    return str(found[0]["id"])


def waiting(runtime: Runtime) -> list[str]:
    return [item.resource_id for item in runtime.outbox.listed(("waiting",), 100)]


def test_an_admin_confirms_the_ehrs_patient_and_the_replay_delivers_to_it(
    held: TestClient, ehr: SandboxEhr
) -> None:
    runtime = runtime_of(held)
    patient_id = ehr_patient_id(ehr)
    ids = waiting(runtime)
    listed = held.get("/console/held").text
    shown = held.get(PAGE).text
    csrf = page_csrf(held, PAGE)

    without_token = held.post(f"{PAGE}/confirm", data={"ehr_id": patient_id})
    other_patient = held.post(f"{PAGE}/confirm", data={"csrf": csrf, "ehr_id": "another"})
    confirmed = held.post(f"{PAGE}/confirm", data={"csrf": csrf, "ehr_id": patient_id})
    replayed = held.post("/console/replay", data={"csrf": csrf, "id": ids})
    audit = held.get("/console/audit", params={"interaction": "admin:console_confirm_patient"})

    assert ids and f'href="{PAGE}"' in listed
    assert f"Patient/{patient_id}" in shown
    assert "1979-03-14" in shown and "1979-03-15" in shown
    assert "Same person" in shown and "birth date differs" in shown
    assert without_token.status_code == 403
    assert other_patient.status_code == 409 and "load the page again" in other_patient.text
    assert confirmed.status_code == 200 and 'id="confirmed"' in confirmed.text
    assert 'id="confirm"' not in confirmed.text and "Withdraw the confirmation" in confirmed.text
    assert replayed.status_code == 200
    assert waiting(runtime) == []
    procedures = ehr.all("Procedure")
    assert [p["subject"]["reference"] for p in procedures] == [f"Patient/{patient_id}"]
    assert audit.text.count(f"Patient/{patient_id}") == 1
    assert "differs=birth_date" in audit.text


def test_a_withdrawn_confirmation_holds_the_next_version_again(
    held: TestClient, ehr: SandboxEhr
) -> None:
    runtime = runtime_of(held)
    patient_id = ehr_patient_id(ehr)
    csrf = page_csrf(held, PAGE)
    held.post(f"{PAGE}/confirm", data={"csrf": csrf, "ehr_id": patient_id})

    withdrawn = held.post(f"{PAGE}/withdraw", data={"csrf": csrf})
    again = held.post(f"{PAGE}/withdraw", data={"csrf": csrf})
    held.post("/console/replay", data={"csrf": csrf, "reason": BIRTH_DATE_DIFFERS})

    assert withdrawn.status_code == 200 and 'id="withdrawn"' in withdrawn.text
    assert again.status_code == 409
    assert PatientMatches(runtime.store.engine).confirmations([MRN]) == {}
    assert waiting(runtime) != [] and ehr.all("Procedure") == []


def test_a_confirmation_holds_for_the_confirmed_patient_and_facts_alone() -> None:
    now = datetime.now(UTC)
    facts = PatientFacts("Rivera", "1979-03-15")
    ehr_facts = {"family": ["Rivera"], "birth_date": "1979-03-14"}
    match = PatientMatch(MRN, "matched", "p-1", ehr_facts, now)
    confirmed = PatientConfirmation(MRN, "p-1", ["birth_date"], "admin", now)
    elsewhere = PatientConfirmation(MRN, "p-2", ["birth_date"], "admin", now)
    gone = PatientMatch(MRN, "not-found", None, {}, now)

    assert mismatch(match, facts) == BIRTH_DATE_DIFFERS
    assert mismatch(match, facts, confirmed) is None
    assert mismatch(match, facts, elsewhere) == BIRTH_DATE_DIFFERS
    assert mismatch(match, PatientFacts("Other", "1979-03-15"), confirmed) == FAMILY_DIFFERS
    assert mismatch(gone, facts, confirmed) == "no Patient in the EHR has this MRN"


def test_a_patient_page_of_an_mrn_nothing_waits_for_offers_nothing_to_confirm(
    held: TestClient,
) -> None:
    page = held.get("/console/patients/999999")
    script = held.get("/console/patients/%3Cscript%3Ex")
    slashed = held.get("/console/patients/A/17")
    csrf = page_csrf(held, PAGE)
    refused = held.post("/console/patients/999999/confirm", data={"csrf": csrf, "ehr_id": "x"})

    assert page.status_code == 200 and 'id="confirm"' not in page.text
    assert 'id="not-asked"' in page.text
    assert script.status_code == 200 and "<script>" not in script.text
    assert slashed.status_code == 200 and "MRN A/17" in slashed.text
    assert "&lt;script&gt;" in script.text
    assert refused.status_code == 409


def test_in_a_group_the_patient_page_and_its_confirmation_are_of_one_site(
    database_url: str, mappings_dir: Path, ehr: SandboxEhr
) -> None:
    from tests.sites import NORTH, SOUTH, add_sites

    add_sites(mappings_dir, {NORTH: ehr.base}, own_mrn_systems=False)
    settings = Settings(database_url=database_url, mappings_dir=mappings_dir)
    app = create_app(settings, background=False)
    with TestClient(app, follow_redirects=False) as console:
        runtime = runtime_of(console)
        record = session(
            clinic_site=NORTH,
            patient={"mrn": MRN, "family": "Rivera", "birth_date": "1979-03-15"},
        )
        runtime.intake.submit([(1, ndjson(record).strip())])
        runtime.mapping.run()
        sync_once(runtime.site_syncs[NORTH], trigger="test")
        sign_in(console, grant(runtime).api_key)
        patient_id = ehr_patient_id(ehr)
        ids = waiting(runtime)
        listed = console.get("/console/held").text
        unnamed = console.get(PAGE)
        unknown = console.get(PAGE, params={"site": "east"})
        south = console.get(PAGE, params={"site": SOUTH}).text
        page = f"{PAGE}?site={NORTH}"
        shown = console.get(page).text
        csrf = page_csrf(console, page)
        in_south = console.post(
            f"{PAGE}/confirm?site={SOUTH}", data={"csrf": csrf, "ehr_id": patient_id}
        )
        confirmed = console.post(
            f"{PAGE}/confirm?site={NORTH}", data={"csrf": csrf, "ehr_id": patient_id}
        )
        north_confirmations = PatientMatches(runtime.store.engine, NORTH).confirmations([MRN])
        shared_confirmations = PatientMatches(runtime.store.engine).confirmations([MRN])
        replayed = console.post("/console/replay", data={"csrf": csrf, "id": ids})
        left = waiting(runtime)

    assert ids and f'href="{PAGE}?site={NORTH}"' in listed
    assert unnamed.status_code == 400 and "site:" in unnamed.text
    assert unknown.status_code == 400 and "north, south" in unknown.text
    assert 'id="confirm"' not in south and 'id="not-asked"' in south
    assert f'id="site">{NORTH}' in shown and f"Patient/{patient_id}" in shown
    assert f'action="{PAGE}/confirm?site={NORTH}"' in shown
    assert in_south.status_code == 409
    assert confirmed.status_code == 200 and 'id="confirmed"' in confirmed.text
    assert list(north_confirmations) == [MRN] and shared_confirmations == {}
    assert replayed.status_code == 200 and left == []
    procedures = ehr.all("Procedure")
    assert [p["subject"]["reference"] for p in procedures] == [f"Patient/{patient_id}"]
