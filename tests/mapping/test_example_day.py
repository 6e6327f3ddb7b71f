"""The clinic's example day, mapped: golden output, and every resource through three validators."""

import os
from pathlib import Path

import orjson
import pytest

from adapter.fhir.models import parse
from adapter.fhir.validation import own_checks
from tests.conftest import EXAMPLE_DAY, ROOT, FhirValidator
from tests.mapping.helpers import map_example_day, mapper

GOLDEN = Path(__file__).parent / "golden" / "day-2026-11-20.json"


def test_example_day_matches_the_golden_file() -> None:
    mapped = map_example_day(mapper(ROOT / "mappings"))
    produced = orjson.dumps(mapped, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"

    if os.environ.get("UPDATE_GOLDEN") == "1":
        GOLDEN.write_bytes(produced)
    assert produced == GOLDEN.read_bytes(), "re-run with UPDATE_GOLDEN=1 and review the diff"


def test_mapping_twice_gives_the_same_ids_and_bytes() -> None:
    first = orjson.dumps(map_example_day(mapper(ROOT / "mappings")))
    second = orjson.dumps(map_example_day(mapper(ROOT / "mappings")))

    assert first == second


def test_every_record_of_the_day_is_mapped() -> None:
    mapped = map_example_day(mapper(ROOT / "mappings"))

    records = {key: value for key, value in mapped.items() if ":" not in key}
    assert all(records.values()), [key for key, value in records.items() if not value]
    ids = [r["id"] for resources in mapped.values() for r in resources]
    assert len(ids) == len(set(ids)) == 99
    breaches = sorted(
        r["code"]["coding"][0]["code"]
        for key, resources in mapped.items()
        for r in resources
        if r["resourceType"] == "DetectedIssue"
    )
    # SES-2026-00412: 118 mg recorded, 103.6 mg by its rates. SES-2026-00415: fasted 6 h 20 min,
    # discharged with no recovery or discharge vitals. SES-2026-00416 was a no-show.
    assert breaches == [
        "discharge-vitals-missing",
        "dose-total-mismatch",
        "fasting-below-minimum",
        "recovery-vitals-missing",
    ]


PROTOCOL_DAY = ROOT / "tests" / "fixtures" / "clinic-export" / "protocol-day.ndjson"


def _resources() -> list[dict]:  # type: ignore[type-arg]
    """Every resource of the example day, and of the day built to break every protocol rule."""
    found = []
    for day in (EXAMPLE_DAY, PROTOCOL_DAY):
        mapped = map_example_day(mapper(ROOT / "mappings"), day)
        found += [r for resources in mapped.values() for r in resources]
    return found


@pytest.mark.parametrize(
    "resource", _resources(), ids=lambda r: f"{r['resourceType']}-{r['id'][:8]}"
)
def test_every_resource_passes_three_validators(
    resource: dict,
    fhir_validator: FhirValidator,  # type: ignore[type-arg]
) -> None:
    parse(resource)  # fhir.resources, in full
    assert list(own_checks(resource)) == []
    assert fhir_validator.problems(resource) == []
