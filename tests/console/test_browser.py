"""The console in a real browser (Debian's Chromium, driven by Playwright) against the running
service, with the example day as today's: every screen is walked, and clinic IT finds out, from
the console alone, why yesterday's session of a patient is not in the EHR (the EHR's Patient of
the MRN has another family name, a drug code has no row), fixes both, replays and sees the
session delivered. Screenshots are saved for the documentation (ADAPTER_SCREENSHOTS names their
folder)."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import requests
from playwright.sync_api import Page, expect, sync_playwright

from adapter.runtime import open_runtime
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, ROOT, fasting, ndjson, session, vitals
from tests.sync.conftest import ehr, sandbox_server
from tests.sync.sandbox import MRN_SYSTEM, SandboxEhr

__all__ = ["ehr", "sandbox_server"]
SNOMED = "http://snomed.info/sct"
NAUSEA = "422587007"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
KETAMINE_SOURCE = "https://mor.nlm.nih.gov/RxNav/search?searchBy=RXCUI&searchTerm=6130"
HELD = "SES-Y-0001"
NEW_MRN = "101150"
EHR_FAMILY = "Lindqvist Berg"
"""The family name the EHR registered the patient under; the clinic charted "Lindqvist"."""


def chromium() -> str:
    """Debian's Chromium (scripts/test installs it); the walk is not skipped without it."""
    found = os.environ.get("ADAPTER_TEST_CHROMIUM") or shutil.which("chromium")
    if not found:
        pytest.fail("Chromium is not installed: apt-get install chromium (scripts/test does)")
    return found


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def days() -> tuple[str, str]:
    today = datetime.now(UTC).date()
    return today.isoformat(), (today - timedelta(days=1)).isoformat()


def records() -> bytes:
    """The example day moved to today, and yesterday's session of a new patient: charted with
    a drug code that has no row, under an MRN the EHR has not got."""
    today, yesterday = days()
    example = EXAMPLE_DAY.read_bytes().replace(b"2026-11-19", yesterday.encode())
    example = example.replace(b"2026-11-20", today.encode())
    patient = {"mrn": NEW_MRN, "family": "Lindqvist", "given": "Maja", "birth_date": "1984-02-09"}
    at = f"{yesterday}T"
    held = session(
        id=HELD,
        patient=patient,
        drug="KETAMINE HCL",
        scheduled_start=f"{at}10:00:00-05:00",
        infusion_start=f"{at}10:05:00-05:00",
        infusion_end=f"{at}12:05:00-05:00",
        discharged_at=f"{at}13:10:00-05:00",
        dose={"weight_kg": 61.0, "rate_mg_per_kg_per_hr": 0.5, "total_mg": 61.0},
    )
    return example + ndjson(
        held,
        fasting(
            id="ATT-Y-1",
            session_id=HELD,
            patient=patient,
            attested_at=f"{at}09:40:00-05:00",
            last_solid_food_at=f"{yesterday}T00:30:00-05:00",
        ),
        vitals(
            id="VIT-Y-1", session_id=HELD, patient={"mrn": NEW_MRN}, taken_at=f"{at}10:20:00-05:00"
        ),
        vitals(
            id="VIT-Y-2",
            session_id=HELD,
            patient={"mrn": NEW_MRN},
            taken_at=f"{at}13:00:00-05:00",
            phase="discharge",
            systolic=124,
            diastolic=80,
        ),
    )


@dataclass
class Service:
    url: str
    key: str
    log: Path
    mappings: Path


@pytest.fixture
def service(tmp_path: Path, ehr: SandboxEhr) -> Iterator[Service]:
    """`infusion-adapter serve` as a process of its own, on SQLite, syncing to the sandbox EHR
    (which knows the new patient by her MRN under a longer family name, and refuses the nausea
    code)."""
    ehr.control("POST", "/seed", [_patient(NEW_MRN)])
    ehr.control(
        "PUT",
        "/reject",
        {
            "system": SNOMED,
            "code": NAUSEA,
            "status": 422,
            "message": "the code 422587007 is not in this site's list",
        },
    )
    mappings = tmp_path / "mappings"
    shutil.copytree(ROOT / "mappings", mappings)
    port = free_port()
    environment = {
        **os.environ,
        "ADAPTER_DATABASE_URL": f"sqlite:///{tmp_path / 'adapter.db'}",
        "ADAPTER_MAPPINGS_DIR": str(mappings),
        "ADAPTER_EHR_BASE_URL": ehr.base,
        "ADAPTER_SYNC_INTERVAL_SECONDS": "3600",
        "ADAPTER_MAPPING_INTERVAL_SECONDS": "0.5",
        "ADAPTER_ALERT_INTERVAL_SECONDS": "1",
        "ADAPTER_EXPORT_DIR": str(tmp_path / "exports"),
    }
    settings = Settings(database_url=environment["ADAPTER_DATABASE_URL"], mappings_dir=mappings)
    runtime = open_runtime(settings)
    lines = [line for line in records().splitlines() if line.strip()]
    runtime.intake.submit(list(enumerate(lines, start=1)))
    runtime.mapping.run()
    _, key = runtime.clients.add_key_client("clinic IT", "admin", datetime.now(UTC))
    runtime.close()
    log = tmp_path / "service.log"
    with log.open("w") as output:
        process = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "from adapter.cli import entry; entry()",
                "serve",
                "--port",
                str(port),
            ],
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_first_run(url, key, process)
        yield Service(url, key, log, mappings)
    finally:
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)


def _patient(mrn: str) -> dict[str, object]:
    return {
        "resourceType": "Patient",
        "identifier": [{"system": MRN_SYSTEM, "value": mrn}],
        "name": [{"family": EHR_FAMILY, "given": ["Maja"]}],
        "birthDate": "1984-02-09",
    }


def _wait_for_first_run(url: str, key: str, process: subprocess.Popen[bytes]) -> None:
    """The service is up and its start-up sync run has ended."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail("the service stopped at start-up (see service.log)")
        try:
            runs = requests.get(
                f"{url}/api/v1/sync/runs", headers={"Authorization": f"Bearer {key}"}, timeout=5
            ).json()["runs"]
        except requests.ConnectionError:
            runs = []
        if runs and runs[0]["status"] != "running":
            return
        time.sleep(0.2)
    pytest.fail("the service's first sync run did not end within a minute")


class Walk:
    """The browser's page and where its screenshots go."""

    def __init__(self, page: Page, base: str, shots: Path) -> None:
        self.page, self.base, self.shots = page, base, shots

    def go(self, path: str) -> None:
        self.page.goto(self.base + path)

    def until(self, path: str, selector: str, seconds: float = 30) -> None:
        """Open the page, again and again, until it shows `selector`: what the sync has yet
        to do after a change shows on the next visit, as clinic IT would see it."""
        deadline = time.monotonic() + seconds
        self.go(path)
        while self.page.locator(selector).count() == 0:
            assert time.monotonic() < deadline, f"{path} showed no {selector} in {seconds} s"
            time.sleep(0.3)
            self.go(path)

    def shot(self, name: str) -> None:
        self.page.screenshot(path=str(self.shots / f"{name}.png"), full_page=True)


def test_clinic_it_finds_fixes_and_replays_yesterdays_session(
    service: Service, ehr: SandboxEhr, tmp_path: Path
) -> None:
    shots = Path(os.environ.get("ADAPTER_SCREENSHOTS") or tmp_path / "screenshots")
    shots.mkdir(parents=True, exist_ok=True)
    _, yesterday = days()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium(), headless=True, args=["--no-sandbox"]
        )
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        walk = Walk(page, service.url, shots)
        try:
            _walk(walk, service, ehr, yesterday)
        except AssertionError:
            walk.shot("failed")  # where the walk stopped, for whoever reads the failure
            raise
        finally:
            browser.close()
    logged = service.log.read_text().splitlines()
    assert [line for line in logged if "apscheduler" in line] == []
    assert [line for line in logged if "Lindqvist" in line or NEW_MRN in line] == []


FAMILY_DIFFERS = "the EHR's Patient with this MRN has a different family name than the record"


def _walk(walk: Walk, service: Service, ehr: SandboxEhr, yesterday: str) -> None:
    page = walk.page

    # Sign in with the admin API key.
    walk.go("/console")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    walk.shot("console-sign-in")
    page.fill("#api_key", service.key)
    page.click("button[type=submit]")
    expect(page.locator("h1")).to_contain_text("Today")

    # Today: the example day's three sessions, by MRN and initials, with breaches and side
    # effects; the refused nausea event is among what needs a person.
    sessions = page.locator("#sessions tbody tr")
    expect(sessions).to_have_count(3)
    expect(page.locator("tr[data-session='SES-2026-00412']")).to_contain_text("MRN 100234 · A.R.")
    expect(page.locator("tr[data-session='SES-2026-00412']")).to_contain_text("NAUSEA")
    expect(page.locator("#needs")).to_contain_text("refused by the EHR")
    expect(page.locator("#ehr")).to_contain_text("Reachable")
    assert "Rivera" not in page.content()
    walk.shot("console-today")

    # Yesterday: the new patient's session is not in the EHR, and the page says why.
    page.click(f"a[href='/console?day={yesterday}']")
    row = page.locator(f"tr[data-session='{HELD}']")
    expect(row).to_contain_text("not all in the EHR")
    expect(row).to_contain_text("MRN 101150 · M.L.")
    expect(row).to_contain_text("the drug code “KETAMINE HCL” has no row in codes/drugs.yaml")
    expect(row).to_contain_text(f"{FAMILY_DIFFERS} (MRN {NEW_MRN})")
    page.click(f"a[href='/console/sessions/{HELD}']")
    expect(page.locator("#why")).to_contain_text("waiting for a mapping row")
    expect(page.locator("#resources")).to_contain_text("held back")
    walk.shot("console-session")

    # The drug: the row proposed, its FHIR previewed, then saved into the mapping file.
    page.click("nav a[href='/console/mappings']")
    code = page.locator("section.code[data-code='KETAMINE HCL']")
    expect(code).to_contain_text("holds 1 record(s)")
    expect(code.locator("input[name=system]")).to_have_value(RXNORM)
    code.locator("input[name=text]").fill("Ketamine hydrochloride")
    code.locator("input[name=code]").fill("6130")
    code.locator("input[name=display]").fill("ketamine")
    code.locator("input[name=source]").fill(KETAMINE_SOURCE)
    code.locator("button", has_text="Preview the FHIR").click()
    code = page.locator("section.code[data-code='KETAMINE HCL']")
    expect(code.locator(".preview")).to_contain_text('"code": "6130"')
    expect(code.locator(".preview")).to_contain_text(
        "MedicationAdministration.medicationCodeableConcept"
    )
    expect(code.locator(".preview")).to_contain_text('"resourceType": "MedicationAdministration"')
    walk.shot("console-mappings")
    before = (service.mappings / "codes" / "drugs.yaml").read_text()
    code.locator("button", has_text="Save the row").click()
    expect(page.locator("#saved")).to_contain_text("1 of the 1 record(s) of this code mapped")
    after = (service.mappings / "codes" / "drugs.yaml").read_text()
    assert after.startswith(before) and "local: KETAMINE HCL" in after[len(before) :]
    expect(page.locator("section.code[data-code='KETAMINE HCL']")).to_have_count(0)

    # The patient: from the session's page to the MRN's, where the EHR's Patient and the
    # clinic's records stand side by side; the family names differ, the birth dates agree, and
    # clinic IT confirms that the EHR's Patient is the same person.
    # The fix re-queues the session's resources; once the sync has tried them, the page says
    # again why the patient's are held back.
    walk.until(f"/console/sessions/{HELD}", "#patient")
    page.click("#patient")
    expect(page.locator("#ehr-patient")).to_contain_text(EHR_FAMILY)
    expect(page.locator("#records-patient")).to_contain_text("Lindqvist")
    expect(page.locator("#records-patient")).to_contain_text("1984-02-09")
    expect(page.locator("#held tbody tr")).not_to_have_count(0)
    walk.shot("console-patient")
    page.locator("#confirm button").click()
    expect(page.locator("#confirmed")).to_contain_text("is this MRN's patient")

    # Waiting and refused: every item of the patient's reason replayed at once.
    page.click("nav a[href='/console/held']")
    waiting = page.locator("section.group[data-state='waiting']", has_text=FAMILY_DIFFERS)
    expect(waiting).to_have_count(1)
    refused = page.locator("section.group[data-state='dead']").first
    expect(refused).to_contain_text("the EHR answered 422")
    expect(refused).to_contain_text("422587007 is not in this site's list")
    walk.shot("console-held")
    waiting.locator("button", has_text="Replay all").click()
    expect(page.locator("#outcome")).to_contain_text("completed")
    replayed = page.locator("#replayed tbody tr")
    assert replayed.count() >= 3
    expect(page.locator("#replayed tbody tr[data-state='delivered']")).to_have_count(
        replayed.count()
    )
    walk.shot("console-replayed")

    # Yesterday's session is in the EHR now, under the patient's chart.
    walk.go(f"/console?day={yesterday}")
    expect(page.locator(f"tr[data-session='{HELD}']")).to_contain_text("in the EHR")
    patient = next(
        p
        for p in ehr.all("Patient")
        if any(i.get("value") == NEW_MRN for i in p.get("identifier", []))
    )
    procedures = [
        p
        for p in ehr.all("Procedure")
        if any(i.get("value") == HELD for i in p.get("identifier", []))
    ]
    assert len(procedures) == 1
    assert procedures[0]["subject"]["reference"] == f"Patient/{patient['id']}"

    # The refused: the medication given for the side effect, which carries its code. The side
    # effect references it, and waits for it rather than reach the EHR with a reference to
    # nothing. The EHR's rule is lifted: the medication replayed is delivered, and the side
    # effect after it in the same run.
    page.click("nav a[href='/console/held']")
    waits = page.locator("section.group[data-state='waiting']", has_text="to be delivered first")
    expect(waits).to_contain_text("AdverseEvent")
    ehr.control("DELETE", "/reject")
    medication = page.locator(
        "section.group[data-state='dead']", has_text="POST MedicationAdministration"
    )
    medication.locator("tbody tr").first.locator("button", has_text="Replay").click()
    expect(page.locator("#replayed tbody tr[data-state='delivered']")).to_have_count(1)
    assert len(ehr.all("AdverseEvent")) == 3
    page.click("nav a[href='/console/held']")
    expect(page.locator("main")).to_contain_text("Nothing is held back or refused.")

    # Runs with their last errors and what the counts mean; the alerts.
    page.click("nav a[href='/console/runs']")
    expect(page.locator("#runs tbody tr")).to_have_count(4)  # start-up, row saved, 2 replays
    expect(page.locator("#runs")).to_contain_text(FAMILY_DIFFERS)
    expect(page.locator("#legend")).to_contain_text("delivered_partially")
    walk.shot("console-runs")

    # The audit, searched: who saved the mapping row, who confirmed the patient.
    page.click("nav a[href='/console/audit']")
    page.fill("#interaction", "admin:console_save_row")
    page.click("#filters button[type=submit]")
    entries = page.locator("#entries tbody tr")
    expect(entries).to_have_count(1)
    expect(entries).to_contain_text("clinic IT")
    expect(entries).to_contain_text("codes/drugs.yaml#KETAMINE HCL")
    page.fill("#interaction", "admin:console_confirm_patient")
    page.click("#filters button[type=submit]")
    expect(entries).to_have_count(1)
    expect(entries).to_contain_text(f"Patient/{patient['id']}")
    walk.go("/console/audit")
    walk.shot("console-audit")

    # Sign out: the cookie no longer opens the console.
    page.locator("header button", has_text="Sign out").click()
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    walk.go("/console")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
