"""Mapping files load strictly; a broken one is refused naming its file and key path."""

from pathlib import Path

import pytest

from adapter.app import create_app
from adapter.errors import MappingFileError
from adapter.mapping.config import load_mappings
from adapter.settings import Settings
from tests.conftest import ROOT


def test_the_shipped_mappings_load() -> None:
    mappings = load_mappings(ROOT / "mappings")

    assert mappings.limits.vitals.heart_rate.holds(190)
    assert not mappings.limits.vitals.spo2.holds(101)


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        ("limits.yaml", "vitals: {}\ndose: {}\n", "limits.yaml: vitals.heart_rate: Field required"),
        (
            "site.yaml",
            "time_zone: Mars/Olympus\n",
            "site.yaml: time_zone: Value error, unknown IANA",
        ),
        ("site.yaml", "timezone: UTC\n", "site.yaml: timezone: Extra inputs are not permitted"),
        ("site.yaml", "time_zone: [unclosed\n", "site.yaml: not valid YAML (line 2"),
    ],
)
def test_a_broken_file_names_file_and_key(
    mappings_dir: Path, file: str, content: str, message: str
) -> None:
    (mappings_dir / file).write_text(content)

    with pytest.raises(MappingFileError) as raised:
        load_mappings(mappings_dir)

    assert message in str(raised.value)
    assert str(mappings_dir / file) in str(raised.value)


def test_a_range_must_be_ordered(mappings_dir: Path) -> None:
    limits = (mappings_dir / "limits.yaml").read_text()
    (mappings_dir / "limits.yaml").write_text(
        limits.replace("heart_rate: {min: 20, max: 300", "heart_rate: {min: 300, max: 20")
    )

    with pytest.raises(MappingFileError, match=r"vitals\.heart_rate: Value error, min \(300"):
        load_mappings(mappings_dir)


def test_a_missing_file_is_named(mappings_dir: Path) -> None:
    (mappings_dir / "site.yaml").unlink()

    with pytest.raises(MappingFileError, match=r"site\.yaml: file not found"):
        load_mappings(mappings_dir)


def test_the_service_refuses_to_start_on_a_broken_mapping(settings: Settings) -> None:
    (settings.mappings_dir / "limits.yaml").write_text("vitals: 3\n")

    with pytest.raises(MappingFileError, match=r"limits\.yaml: vitals"):
        create_app(settings)


def test_a_site_time_zone_reads_timestamps_without_offset(settings: Settings) -> None:
    site = settings.mappings_dir / "site.yaml"
    site.write_text(site.read_text().replace("time_zone: null", "time_zone: America/New_York"))
    from fastapi.testclient import TestClient

    from tests.conftest import sign_in, vitals

    with TestClient(create_app(settings)) as client:
        sign_in(client)
        response = client.post("/api/v1/records", json=vitals(taken_at="2026-11-20T09:20:00"))
        stored = client.get("/api/v1/records/vitals/VIT-1").json()

    assert response.status_code == 200
    assert stored["record"]["taken_at"] == "2026-11-20T09:20:00-05:00"


def test_a_dose_unit_outside_ucum_is_refused(mappings_dir: Path) -> None:
    events = mappings_dir / "resources" / "adverse_event.yaml"
    events.write_text(events.read_text().replace("mg: mg,", "mg: milligram,"))

    with pytest.raises(
        MappingFileError, match=r"adverse_event\.yaml: dose_units: Value error, not among"
    ):
        load_mappings(mappings_dir)
