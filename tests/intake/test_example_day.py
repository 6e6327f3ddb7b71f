"""The clinic's example day imports with every record's expected outcome, by API and by CLI."""

from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from adapter.cli import main
from adapter.settings import Settings, get_settings
from tests.conftest import EXAMPLE_DAY, ROOT

EXPECTED = {
    ("attestation", "ATT-5001"): (1, "active"),
    ("attestation", "ATT-5002"): (1, "active"),
    ("infusion_session", "SES-2026-00412"): (2, "active"),
    **{("vitals", f"VIT-7700{n}"): (1, "active") for n in range(7)},
    ("adverse_event", "AE-2291"): (1, "active"),
    ("adverse_event", "AE-2292"): (1, "active"),
    ("vitals", "VIT-77099"): (2, "entered_in_error"),
    ("attestation", "ATT-5003"): (1, "active"),
    ("attestation", "ATT-5004"): (1, "active"),
    ("infusion_session", "SES-2026-00415"): (1, "active"),
    ("vitals", "VIT-77110"): (1, "active"),
    ("adverse_event", "AE-2301"): (1, "active"),
    ("infusion_session", "SES-2026-00416"): (1, "active"),
}


def test_fixture_is_the_clinics_example_day() -> None:
    shared = ROOT.parent / "shared" / "clinic-export" / "examples" / EXAMPLE_DAY.name
    if not shared.exists():
        pytest.skip("shared/ is not beside this checkout")
    assert EXAMPLE_DAY.read_bytes() == shared.read_bytes()


def test_example_day_through_the_api(client: TestClient) -> None:
    body = EXAMPLE_DAY.read_bytes()
    headers = {"content-type": "application/x-ndjson"}

    first = client.post("/api/v1/records", content=body, headers=headers)
    again = client.post("/api/v1/records", content=body, headers=headers)

    assert first.status_code == 200
    results = first.json()["results"]
    assert {(r["record_type"], r["id"]): (r["revision"], r["status"]) for r in results} == EXPECTED
    assert {r["outcome"] for r in results} == {"created"}
    assert all("warnings" not in r for r in results)
    assert {r["outcome"] for r in again.json()["results"]} == {"unchanged"}
    for (record_type, source_id), (revision, status) in EXPECTED.items():
        stored = client.get(f"/api/v1/records/{record_type}/{source_id}").json()
        assert (stored["revision"], stored["status"]) == (revision, status)
    session = client.get("/api/v1/records/infusion_session/SES-2026-00412").json()
    assert session["links"]["records"] == {"attestation": 2, "vitals": 8, "adverse_event": 2}


def test_example_day_through_the_cli(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ADAPTER_MAPPINGS_DIR", str(settings.mappings_dir))
    get_settings.cache_clear()
    source = tmp_path / EXAMPLE_DAY.name
    source.write_bytes(EXAMPLE_DAY.read_bytes())

    first = CliRunner().invoke(main, ["import", str(source), "--quiet"])
    again = CliRunner().invoke(main, ["import", str(source), "--quiet"])
    get_settings.cache_clear()

    assert first.exit_code == 0, first.output
    assert "19 records" in first.output
    assert "created 19" in first.output and "rejected 0" in first.output
    assert "unchanged 19" in again.output
    assert not (tmp_path / f"{EXAMPLE_DAY.name}.rejected.ndjson").exists()
