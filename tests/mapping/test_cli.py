"""`infusion-adapter mappings ...`: check, preview, pending, reload, schema."""

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from adapter.cli import main
from adapter.mapping.config import json_schemas
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, ROOT, ndjson, session, vitals


def test_check_names_file_and_key(cli_environment: Settings) -> None:
    table = cli_environment.mappings_dir / "codes" / "events.yaml"
    table.write_text(table.read_text().replace("  - local: FATIGUE", "  - locale: FATIGUE", 1))

    result = CliRunner().invoke(main, ["mappings", "check"])

    assert result.exit_code == 2
    assert "codes/events.yaml: rows[2].local: Field required" in result.output
    assert "codes/events.yaml: rows[2].locale: Extra inputs are not permitted" in result.output


@pytest.mark.empty_store
def test_preview_prints_resources_and_rows_and_stores_nothing(
    cli_environment: Settings, tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, ["mappings", "preview", str(EXAMPLE_DAY)])

    assert result.exit_code == 0, result.output
    assert (
        "# line 3: infusion_session SES-2026-00412 revision 2 (current), "
        "used codes/indications.yaml: CRPS_UPPER" in result.output
    )
    assert (
        "# line 13: vitals VIT-77099 revision 2 (current, WITHDRAWN (entered in error))"
        in result.output
    )
    assert "# protocol: protocol SES-2026-00415 (the session's protocol breaches)" in result.output
    # 99 resources, and the 2 rate periods contained in the infusion of SES-2026-00412.
    assert result.output.count('"resourceType": ') == 101
    assert (
        not Path(cli_environment.database_url.removeprefix("sqlite:///")).exists()
        or "postgresql" in cli_environment.database_url
    )


def test_preview_shows_what_waits_for_a_mapping(cli_environment: Settings, tmp_path: Path) -> None:
    source = tmp_path / "one.ndjson"
    source.write_bytes(ndjson(session(drug="ESKETAMINE", indication="WHIPLASH")))

    result = CliRunner().invoke(main, ["mappings", "preview", str(source)])

    assert "waiting for a mapping: codes/drugs.yaml has no row 'ESKETAMINE' (drug)" in result.output
    assert (
        "sent as text for now: codes/indications.yaml has no row 'WHIPLASH' (indication)"
        in result.output
    )


def test_preview_marks_stale_and_withdrawn_revisions_as_ndjson(
    cli_environment: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "revisions.ndjson"
    source.write_bytes(
        ndjson(
            session(),
            vitals(revision=2, heart_rate=90),
            vitals(revision=1),
            vitals(revision=2, heart_rate=90),
            vitals(id="VIT-2", revision=3, status="entered_in_error"),
            {"record_type": "vitals", "id": "bad"},
        )
    )

    result = CliRunner().invoke(main, ["mappings", "preview", str(source), "--format", "ndjson"])

    assert result.exit_code == 0, result.output
    entries = [orjson.loads(line) for line in result.output.splitlines()]
    states = [(e["line"], e["state"], e.get("id"), e.get("revision")) for e in entries]
    assert states == [
        (1, "current", "SES-1", 1),
        (2, "current", "VIT-1", 2),
        (3, "stale", "VIT-1", 1),
        (4, "repeat", "VIT-1", 2),
        (5, "withdrawn", "VIT-2", 3),
        (6, "rejected", None, None),
        (None, "protocol", "SES-1", None),
        (None, "encounter", "SES-1", None),
        (None, "patient", "900001", None),
    ]
    assert entries[2]["reasons"] == ["revision 2 of the record is later in the file"]
    assert {r["status"] for r in entries[4]["resources"]} == {"entered-in-error"}
    assert "resources" not in entries[2]


def test_pending_and_reload(cli_environment: Settings, tmp_path: Path) -> None:
    source = tmp_path / "one.ndjson"
    source.write_bytes(ndjson(session(drug="ESKETAMINE", indication="WHIPLASH")))
    CliRunner().invoke(main, ["import", str(source), "--quiet"])

    pending = CliRunner().invoke(main, ["mappings", "pending"])
    for name, code in (("drugs", "ESKETAMINE"), ("indications", "WHIPLASH")):
        table = cli_environment.mappings_dir / "codes" / f"{name}.yaml"
        table.write_text(
            table.read_text() + f"  - local: {code}\n    text: {code}\n    codings: []\n"
        )
    reload = CliRunner().invoke(main, ["mappings", "reload"])
    after = CliRunner().invoke(main, ["mappings", "pending"])

    assert (
        "infusion_session SES-1 (revision 1): codes/drugs.yaml has no row 'ESKETAMINE'"
        in pending.output
    )
    assert "(changed from " in reload.output and "mapped 1 records" in reload.output
    assert "no record waits for a mapping" in after.output


def test_the_committed_json_schemas_are_current() -> None:
    for name, schema in json_schemas().items():
        committed = ROOT / "mappings" / "schema" / name.replace(".yaml", ".schema.json")
        assert orjson.loads(committed.read_bytes()) == schema, (
            f"run `infusion-adapter mappings schema` ({name})"
        )


def test_preview_in_a_group_maps_each_record_with_its_sites_overlays(
    cli_environment: Settings, tmp_path: Path
) -> None:
    from tests.sites import NORTH, SOUTH, add_sites

    add_sites(cli_environment.mappings_dir)
    source = tmp_path / "group.ndjson"
    source.write_bytes(
        ndjson(
            session(id="SES-N", clinic_site=NORTH, drug="KETAMINE-S"),
            session(id="SES-S", clinic_site=SOUTH, drug="KETAMINE-S"),
        )
    )
    unnamed = tmp_path / "unnamed.ndjson"
    unnamed.write_bytes(ndjson(session(id="SES-U", drug="KETAMINE-S")))

    result = CliRunner().invoke(main, ["mappings", "preview", "--format", "ndjson", str(source)])
    as_south = CliRunner().invoke(main, ["mappings", "preview", "--site", SOUTH, str(unnamed)])
    unknown = CliRunner().invoke(main, ["mappings", "preview", "--site", "east", str(unnamed)])

    assert result.exit_code == 0, result.output
    lines = {
        (entry["line"], entry["state"]): entry
        for entry in map(orjson.loads, result.output.splitlines())
    }
    north, south = lines[(1, "current")], lines[(2, "current")]
    assert [w["code"] for w in north.get("waiting_for_rows", [])] == ["KETAMINE-S"]
    assert "waiting_for_rows" not in south and south["resources"]
    sources = {r["meta"]["source"] for r in south["resources"]}
    assert sources == {f"https://{SOUTH}.ketamine-clinic.example.org/fhir/infusion-adapter"}
    assert as_south.exit_code == 0 and "rejected" not in as_south.output
    assert "waiting for a mapping" not in as_south.output
    assert unknown.exit_code == 2 and "--site" in unknown.output
