"""A clinic group's sites: each overlays the shared mapping files, and maps its own records."""

from pathlib import Path

import orjson
import pytest

from adapter.errors import MappingFileError
from adapter.mapping.config import load_mappings
from adapter.mapping.sites import load_group
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.tables import fhir_resources, sync_outbox
from tests.conftest import ROOT, fasting, ndjson, session, vitals
from tests.sites import NORTH, SOUTH, add_sites


def test_a_folder_without_sites_is_one_site_with_the_version_of_its_files(
    mappings_dir: Path,
) -> None:
    shared, sites = load_group(mappings_dir)

    assert sites == {}
    assert shared.version == load_mappings(ROOT / "mappings").version


def test_each_site_overlays_the_shared_files(mappings_dir: Path) -> None:
    add_sites(mappings_dir, {NORTH: "http://127.0.0.1:9/fhir"})

    shared, sites = load_group(mappings_dir)

    north, south = sites[NORTH], sites[SOUTH]
    assert north.mappings.site.time_zone == "America/New_York"
    assert south.mappings.site.time_zone == "America/Chicago"
    assert north.mappings.site.identifier_systems.mrn.startswith("https://north.")
    # Keys the site does not name are the shared file's.
    assert north.mappings.site.identifier_systems.records == shared.site.identifier_systems.records
    assert north.mappings.site.protocol == shared.site.protocol
    # South's drug row is added to the shared table; north's table is the shared one.
    assert south.mappings.codes.drugs.find("KETAMINE-S") is not None
    assert south.mappings.codes.drugs.find("KETAMINE") is not None
    assert north.mappings.codes.drugs.find("KETAMINE-S") is None
    assert north.ehr.connection is not None and south.ehr.connection is None
    # One version covers the group, and differs from the shared files' alone.
    assert shared.version == north.mappings.version == south.mappings.version
    assert shared.version != load_mappings(mappings_dir).version


def test_a_site_row_replaces_the_shared_row_of_its_code(mappings_dir: Path) -> None:
    add_sites(mappings_dir)
    (mappings_dir / "sites" / NORTH / "codes").mkdir()
    (mappings_dir / "sites" / NORTH / "codes" / "routes.yaml").write_text(
        "rows:\n  - {local: iv, text: North's IV, codings: []}\n"
    )

    _, sites = load_group(mappings_dir)

    row = sites[NORTH].mappings.codes.routes.find("IV")
    assert row is not None and row.text == "North's IV"
    assert [r.local.upper() for r in sites[NORTH].mappings.codes.routes.rows].count("IV") == 1


@pytest.mark.parametrize(
    ("path", "content", "expected"),
    [
        (
            "sites/north/site.yaml",
            "protocol:\n  fasting_minimum_hours: {value: 8.01, source: x}\n",
            "sites/north/site.yaml: protocol.fasting_minimum_hours: Value error, value: a whole",
        ),
        ("sites/north/site.yaml", "chairs: 4\n", "sites/north/site.yaml: chairs: Extra inputs"),
        (
            "sites/north/ehr.yaml",
            "connection: {base_url: 'http://127.0.0.1:9', auth: bearer}\n",
            "sites/north/ehr.yaml: connection: Value error, bearer_token_env: required",
        ),
        (
            "sites/north/ehr.yaml",
            "connection: {base_url: 'http://127.0.0.1:9', password: hunter2}\n",
            "sites/north/ehr.yaml: connection.password: Extra inputs are not permitted",
        ),
        (
            "sites/north/codes/drugs.yaml",
            "rows:\n  - {local: X, text: X}\n",
            "sites/north/codes/drugs.yaml: rows[0].codings: Field required",
        ),
        ("sites/North/site.yaml", "{}\n", "sites/North: a site id is 1 to 32 lowercase"),
        (
            "sites/north/resources/procedure.yaml",
            "{}\n",
            "sites/north/resources: not a file a site overlays",
        ),
        (
            "sites/north/limits.yaml",
            "vitals: {heart_rate: {max: 10}}\n",
            "sites/north/limits.yaml: vitals.heart_rate: Value error, min (20.0) must be below max",
        ),
        (
            "sites/north/limits.yaml",
            "vitals: {pulse: {min: 1, max: 2, unit: x}}\n",
            "sites/north/limits.yaml: vitals.pulse: Extra inputs are not permitted",
        ),
    ],
)
def test_a_broken_site_file_is_named_with_its_key(
    mappings_dir: Path, path: str, content: str, expected: str
) -> None:
    add_sites(mappings_dir)
    target = mappings_dir / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(content)

    with pytest.raises(MappingFileError) as raised:
        load_group(mappings_dir)

    assert expected in str(raised.value)


@pytest.fixture
def group(settings: Settings) -> Runtime:
    add_sites(settings.mappings_dir)
    return open_runtime(settings)


def _resources(runtime: Runtime) -> list[tuple[str | None, dict]]:
    with runtime.store.engine.connect() as connection:
        rows = connection.execute(
            fhir_resources.select().order_by(fhir_resources.c.resource_type)
        ).all()
    return [(row.site, orjson.loads(row.content)) for row in rows]


def test_two_sites_sending_the_same_ids_keep_two_records_and_two_sets_of_resources(
    group: Runtime,
) -> None:
    outcomes = group.intake.submit(
        [
            (0, ndjson(session(clinic_site=NORTH))),
            (1, ndjson(session(clinic_site=SOUTH))),
            (2, ndjson(fasting(clinic_site=SOUTH))),
        ]
    )
    assert [o.outcome for o in outcomes] == ["created", "created", "created"]
    group.mapping.run()

    stored = _resources(group)
    by_site = {site: {r["id"] for s, r in stored if s == site} for site in (NORTH, SOUTH)}
    assert by_site[NORTH] and by_site[SOUTH] and not by_site[NORTH] & by_site[SOUTH]
    assert all(site in (NORTH, SOUTH) for site, _ in stored)
    for site, resource in stored:
        tags = {(t["system"].rsplit("/", 1)[-1], t["code"]) for t in resource["meta"]["tag"]}
        assert ("site", site) in tags
        assert resource["meta"]["source"] == (
            f"https://{site}.ketamine-clinic.example.org/fhir/infusion-adapter"
        )
    patients = [r for _, r in stored if r["resourceType"] == "Patient"]
    assert sorted(p["identifier"][0]["system"] for p in patients) == [
        f"https://{NORTH}.ketamine-clinic.example.org/fhir/sid/mrn",
        f"https://{SOUTH}.ketamine-clinic.example.org/fhir/sid/mrn",
    ]
    # The identifiers say the clinic's own ids: the site is in the system and the id.
    procedures = [r for _, r in stored if r["resourceType"] == "Procedure"]
    assert [p["identifier"][0]["value"] for p in procedures] == ["SES-1", "SES-1"]
    with group.store.engine.connect() as connection:
        queued = {row.site for row in connection.execute(sync_outbox.select())}
    assert queued == {NORTH, SOUTH}


def test_each_site_has_its_organization_and_location_named_by_its_visits(
    group: Runtime, fhir_validator: object
) -> None:
    group.intake.submit([(0, ndjson(session(clinic_site=NORTH, location="CHAIR-3")))])
    group.mapping.run()

    stored = {r["resourceType"]: r for _, r in _resources(group)}
    organization, location = stored["Organization"], stored["Location"]
    assert organization["name"] == "Ketamine Clinic North" and organization["active"] is True
    assert location["managingOrganization"]["reference"] == f"Organization/{organization['id']}"
    encounter, procedure = stored["Encounter"], stored["Procedure"]
    assert encounter["serviceProvider"]["reference"] == f"Organization/{organization['id']}"
    assert encounter["location"][0]["location"]["reference"] == f"Location/{location['id']}"
    assert procedure["location"] == {
        "reference": f"Location/{location['id']}",
        "display": "CHAIR-3",
    }
    for resource in (organization, location, encounter, procedure):
        assert fhir_validator.problems(resource) == []  # type: ignore[attr-defined]


def test_a_site_reads_timestamps_in_its_own_time_zone(group: Runtime) -> None:
    local = {
        "scheduled_start": "2026-11-20T09:00:00",
        "infusion_start": None,
        "infusion_end": None,
        "status": "scheduled",
    }
    group.intake.submit(
        [
            (0, ndjson(session(clinic_site=NORTH, **local))),
            (1, ndjson(session(clinic_site=SOUTH, **local))),
        ]
    )
    group.mapping.run()

    starts = {
        site: r["period"]["start"]
        for site, r in _resources(group)
        if r["resourceType"] == "Encounter"
    }
    assert starts == {NORTH: "2026-11-20T09:00:00-05:00", SOUTH: "2026-11-20T09:00:00-06:00"}


@pytest.mark.parametrize(
    ("taken_at", "outcome"),
    [
        ("2026-03-08T02:30:00", "rejected"),  # skipped as New York's clocks went forward
        ("2026-11-01T01:30:00", "rejected"),  # shown twice as they went back
        ("2026-11-01T01:30:00-05:00", "created"),  # the second of the two, by its offset
        ("2026-11-01T03:30:00", "created"),
    ],
)
def test_a_local_time_a_daylight_saving_change_skips_or_repeats_needs_its_offset(
    group: Runtime, taken_at: str, outcome: str
) -> None:
    """North reads timestamps without an offset in New York's time: one that names no single
    moment there is refused, naming the field, rather than guessed an hour either way."""
    (result,) = group.intake.submit([(0, ndjson(vitals(clinic_site=NORTH, taken_at=taken_at)))])

    assert result.outcome == outcome
    if outcome == "rejected":
        assert any(
            "daylight saving change" in error.reason and error.field == "taken_at"
            for error in result.errors or []
        ), result.errors


def test_a_site_overlays_the_limits_of_its_own_records(settings: Settings) -> None:
    add_sites(settings.mappings_dir)
    (settings.mappings_dir / "sites" / SOUTH / "limits.yaml").write_text(
        "vitals:\n  heart_rate: {max: 350}\n"
    )
    runtime = open_runtime(settings)
    try:
        south_limits = runtime.mapping.sites[SOUTH].mappings.limits.vitals.heart_rate
        north_limits = runtime.mapping.sites[NORTH].mappings.limits.vitals.heart_rate
        outcomes = runtime.intake.submit(
            [
                (i, ndjson(vitals(clinic_site=site, heart_rate=320)))
                for i, site in enumerate((NORTH, SOUTH))
            ]
        )
    finally:
        runtime.close()

    assert (south_limits.min, south_limits.max, south_limits.unit) == (20, 350, "beats/min")
    assert north_limits.max == 300
    north, south = outcomes
    assert south.outcome == "created"
    assert north.outcome == "rejected"
    assert [e.field for e in north.errors] == ["heart_rate"]
