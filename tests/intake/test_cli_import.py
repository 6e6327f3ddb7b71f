"""`infusion-adapter import`: rejected lines go beside the input with their reasons."""

from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from adapter.cli import main
from adapter.settings import Settings, get_settings
from tests.conftest import ndjson, session, vitals


def test_rejected_lines_are_written_beside_the_input(
    cli_environment: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "backfill.ndjson"
    source.write_bytes(
        ndjson(session())
        + b"\n"  # a blank line is skipped, but still counts for line numbers
        + ndjson(vitals(id="VIT-1", heart_rate=400))
        + b'{"record_type": "vitals", oops\n'
        + ndjson(vitals(id="VIT-4"))
    )

    result = CliRunner().invoke(main, ["import", str(source), "--batch-size", "2", "--quiet"])

    assert result.exit_code == 1
    assert "4 records" in result.output
    assert "created 2" in result.output and "rejected 2" in result.output
    rejected_file = tmp_path / "backfill.ndjson.rejected.ndjson"
    assert str(rejected_file) in result.output
    lines = [orjson.loads(line) for line in rejected_file.read_bytes().splitlines()]
    assert [line["line"] for line in lines] == [3, 4]
    assert lines[0]["errors"] == [
        {"field": "heart_rate", "reason": "not a plausible value: must be 20 to 300 beats/min"}
    ]
    assert "malformed JSON" in lines[1]["errors"][0]["reason"]
    assert lines[1]["record"] == '{"record_type": "vitals", oops'


def test_a_clean_reimport_removes_the_stale_rejected_file(
    cli_environment: Settings, tmp_path: Path
) -> None:
    source = tmp_path / "day.ndjson"
    source.write_bytes(ndjson(vitals(spo2=300)))
    CliRunner().invoke(main, ["import", str(source), "--quiet"])
    assert (tmp_path / "day.ndjson.rejected.ndjson").exists()

    source.write_bytes(ndjson(vitals()))
    result = CliRunner().invoke(main, ["import", str(source), "--quiet"])

    assert result.exit_code == 0
    assert not (tmp_path / "day.ndjson.rejected.ndjson").exists()


def test_progress_bar_shows_rate_and_counts(cli_environment: Settings, tmp_path: Path) -> None:
    source = tmp_path / "day.ndjson"
    source.write_bytes(ndjson(*(vitals(id=f"VIT-{n}") for n in range(30))))

    result = CliRunner().invoke(main, ["import", str(source), "--batch-size", "10"])

    assert result.exit_code == 0
    assert "rec/s" in result.output
    assert "accepted=30" in result.output and "rejected=0" in result.output


def test_a_broken_mapping_stops_the_import(
    cli_environment: Settings, settings: Settings, tmp_path: Path
) -> None:
    (settings.mappings_dir / "limits.yaml").write_text("vitals: {}\n")
    source = tmp_path / "day.ndjson"
    source.write_bytes(ndjson(vitals()))

    result = CliRunner().invoke(main, ["import", str(source)])

    assert result.exit_code == 2
    assert "limits.yaml: vitals.heart_rate: Field required" in result.output


def test_a_line_over_the_limit_is_rejected_without_being_read_whole(
    cli_environment: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ADAPTER_MAX_BODY_BYTES", "10000")
    get_settings.cache_clear()
    huge = orjson.dumps(vitals(id="VIT-HUGE", device="m", notes="x" * 50_000))
    source = tmp_path / "backfill.ndjson"
    source.write_bytes(ndjson(session()) + huge + b"\n" + ndjson(vitals(id="VIT-2")))

    result = CliRunner().invoke(main, ["import", str(source), "--quiet", "--no-map"])

    assert result.exit_code == 1
    assert "created 2" in result.output and "rejected 1" in result.output
    rejected = orjson.loads((tmp_path / "backfill.ndjson.rejected.ndjson").read_bytes())
    assert rejected["line"] == 2 and rejected["record"] is None
    assert rejected["errors"] == [
        {
            "field": "(record)",
            "reason": f"the line is {len(huge) + 1} bytes; a record may be at most 10000 bytes",
        }
    ]
