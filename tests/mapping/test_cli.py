"""`infusion-adapter mappings ...`: check, preview, pending, reload, schema."""

from pathlib import Path

import orjson
from click.testing import CliRunner

from adapter.cli import main
from adapter.mapping.config import json_schemas
from adapter.settings import Settings
from tests.conftest import EXAMPLE_DAY, ROOT, ndjson, session


def test_check_names_file_and_key(cli_environment: Settings) -> None:
    table = cli_environment.mappings_dir / "codes" / "events.yaml"
    table.write_text(table.read_text().replace("  - local: FATIGUE", "  - locale: FATIGUE", 1))

    result = CliRunner().invoke(main, ["mappings", "check"])

    assert result.exit_code == 2
    assert "codes/events.yaml: rows[2].local: Field required" in result.output
    assert "codes/events.yaml: rows[2].locale: Extra inputs are not permitted" in result.output


def test_preview_prints_resources_and_rows_and_stores_nothing(
    cli_environment: Settings, tmp_path: Path
) -> None:
    result = CliRunner().invoke(main, ["mappings", "preview", str(EXAMPLE_DAY)])

    assert result.exit_code == 0, result.output
    assert (
        "# line 3: infusion_session SES-2026-00412, used codes/indications.yaml: CRPS_UPPER"
        in result.output
    )
    assert result.output.count('"resourceType": ') == 78
    assert (
        not Path(cli_environment.database_url.removeprefix("sqlite:///")).exists()
        or "postgresql" in cli_environment.database_url
    )


def test_preview_shows_what_waits_for_a_mapping(cli_environment: Settings, tmp_path: Path) -> None:
    source = tmp_path / "one.ndjson"
    source.write_bytes(ndjson(session(indication="WHIPLASH")))

    result = CliRunner().invoke(main, ["mappings", "preview", str(source)])

    assert (
        "waiting for a mapping: codes/indications.yaml has no row 'WHIPLASH' (indication)"
        in result.output
    )


def test_pending_and_reload(cli_environment: Settings, tmp_path: Path) -> None:
    source = tmp_path / "one.ndjson"
    source.write_bytes(ndjson(session(indication="WHIPLASH")))
    CliRunner().invoke(main, ["import", str(source), "--quiet"])

    pending = CliRunner().invoke(main, ["mappings", "pending"])
    table = cli_environment.mappings_dir / "codes" / "indications.yaml"
    table.write_text(
        table.read_text() + "  - local: WHIPLASH\n    text: Whiplash injury\n    codings: []\n"
    )
    reload = CliRunner().invoke(main, ["mappings", "reload"])
    after = CliRunner().invoke(main, ["mappings", "pending"])

    assert (
        "infusion_session SES-1 (revision 1): codes/indications.yaml has no row 'WHIPLASH'"
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
