"""Every console page renders from each store with the example day in it, and says what the
store says: the day's sessions by MRN and initials (never a name), a held drug code with its
form, and a broken row refused with the file and key."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.sync.engine import BackOff
from tests.conftest import EXAMPLE_DAY, grant
from tests.console.test_access import page_csrf, sign_in


@pytest.fixture
def signed_in(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, background=False)
    with TestClient(app, follow_redirects=False) as client:
        runtime: Runtime = app.state.runtime
        day = EXAMPLE_DAY.read_bytes().replace(b'"drug": "KETAMINE"', b'"drug": "KETAMINE HCL"', 1)
        lines = [line for line in day.splitlines() if line.strip()]
        runtime.intake.submit(list(enumerate(lines, start=1)))
        runtime.mapping.run()
        sign_in(client, grant(runtime).api_key)
        yield client


def test_every_page_renders_what_the_store_holds(signed_in: TestClient) -> None:
    today = signed_in.get("/console", params={"day": "2026-11-20"}).text
    session = signed_in.get("/console/sessions/SES-2026-00415").text
    held = signed_in.get("/console/held").text
    mappings = signed_in.get("/console/mappings").text
    runs = signed_in.get("/console/runs").text
    audit = signed_in.get("/console/audit", params={"outcome": "2xx", "since": "2026-01-01"})

    assert re.findall(r'data-session="([^"]+)"', today) == [
        "SES-2026-00412",
        "SES-2026-00415",
        "SES-2026-00416",
    ]
    assert "MRN 100234 · A.R." in today and "Rivera" not in today
    assert "<td>MRN 101002</td>" in today  # a patient charted without a name
    assert "the drug code “KETAMINE HCL” has no row in codes/drugs.yaml" in today
    assert "No EHR is configured" in today
    assert "PANIC_ATTACK (severe)" in session and "Fasted less than the site minimum" in session
    assert "Nothing is held back or refused." in held
    assert 'data-code="KETAMINE HCL"' in mappings and "holds 1 record(s)" in mappings
    assert "No run yet." in runs and "delivered_partially" in runs
    assert audit.status_code == 200 and "GET /console/held" in audit.text


@pytest.mark.parametrize("probing", [True, False], ids=["probing", "not-probing"])
def test_the_day_page_says_until_when_the_sync_backs_off_and_when_it_asks_the_ehr(
    settings: Settings, probing: bool
) -> None:
    """Clinic IT sees when delivery may resume: the back-off's end, and the next probe of the
    EHR where there is one (not for a configuration the EHR refuses)."""
    app = create_app(
        settings.model_copy(update={"ehr_base_url": "http://127.0.0.1:9/fhir"}), background=False
    )
    with TestClient(app, follow_redirects=False) as client:
        runtime: Runtime = app.state.runtime
        assert runtime.sync is not None
        now = datetime.now(UTC)
        probe_at = now + timedelta(seconds=10) if probing else None
        runtime.sync.store_backoff(BackOff(now + timedelta(minutes=8), 480.0, probe_at))
        sign_in(client, grant(runtime).api_key)
        today = client.get("/console").text

    clock = r"\d{2}:\d{2}:\d{2}"
    assert re.search(f"Unreachable: the sync backs off until {clock}", today)
    probe = re.search(f"and asks the EHR whether it is back at {clock}", today)
    assert (probe is not None) == probing


def test_a_row_that_would_break_the_table_is_refused_and_the_file_kept(
    signed_in: TestClient, settings: Settings
) -> None:
    drugs = settings.mappings_dir / "codes" / "drugs.yaml"
    before = drugs.read_text()
    form = {
        "csrf": page_csrf(signed_in, "/console/mappings"),
        "table": "drugs",
        "local": "KETAMINE HCL",
        "text": "Ketamine hydrochloride",
        "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
        "code": "6130",
        "display": "ketamine",
        "source": "",
    }

    refused = signed_in.post("/console/mappings/save", data=form)
    previewed = signed_in.post("/console/mappings/preview", data=form)
    bad_day = signed_in.get("/console", params={"day": "2026-02-30"})

    assert refused.status_code == 422
    assert "source: say where the code comes from" in refused.text
    assert drugs.read_text() == before
    assert "source: say where the code comes from" in previewed.text
    assert "would become" not in previewed.text
    assert bad_day.status_code == 400 and "not a calendar date" in bad_day.text


def test_in_a_group_a_rows_preview_maps_each_held_record_with_its_sites_overlays(
    settings: Settings,
) -> None:
    from tests.conftest import ndjson, session
    from tests.sites import NORTH, SOUTH, add_sites

    add_sites(settings.mappings_dir)
    app = create_app(settings, background=False)
    with TestClient(app, follow_redirects=False) as client:
        runtime: Runtime = app.state.runtime
        records = [session(clinic_site=site, drug="ESKETAMINE") for site in (NORTH, SOUTH)]
        runtime.intake.submit([(i, ndjson(r)) for i, r in enumerate(records)])
        runtime.mapping.run()
        sign_in(client, grant(runtime).api_key)
        form = {
            "csrf": page_csrf(client, "/console/mappings"),
            "table": "drugs",
            "local": "ESKETAMINE",
            "text": "Esketamine",
            "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
            "code": "1310997",
            "display": "esketamine",
            "source": "https://mor.nlm.nih.gov/RxNav/search?query=1310997",
        }
        previewed = client.post("/console/mappings/preview", data=form).text

    assert previewed.count("would become") == 2
    for site in (NORTH, SOUTH):
        assert f"with site {site}'s mappings" in previewed
        assert f"https://{site}.ketamine-clinic.example.org/fhir/infusion-adapter" in previewed
