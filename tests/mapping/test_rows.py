"""A row added to a code table from the console: appended with every comment, the order and the
layout of the file kept, checked with the other files, and taken back when they do not load."""

from pathlib import Path

import pytest

from adapter.errors import MappingFileError
from adapter.mapping.config import load_mappings
from adapter.mapping.rows import TABLES, ProposedRow, add_row, round_trip, table_path, trial

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
KETAMINE = "https://mor.nlm.nih.gov/RxNav/search?searchBy=RXCUI&searchTerm=6130"


def ketamine_hcl(**fields: str) -> ProposedRow:
    values = {
        "table": "drugs",
        "local": "KETAMINE HCL",
        "text": "Ketamine hydrochloride",
        "system": RXNORM,
        "code": "6130",
        "display": "ketamine",
        "source": KETAMINE,
        **fields,
    }
    return ProposedRow(**values)


@pytest.mark.parametrize("table", TABLES)
def test_every_shipped_table_is_written_back_byte_for_byte(mappings_dir: Path, table: str) -> None:
    text = table_path(mappings_dir, table).read_text(encoding="utf-8")

    assert round_trip(text) == text


def test_a_row_is_appended_with_the_rest_of_the_file_unchanged(mappings_dir: Path) -> None:
    path = table_path(mappings_dir, "drugs")
    before = path.read_text(encoding="utf-8")

    mappings = add_row(mappings_dir, ketamine_hcl())

    after = path.read_text(encoding="utf-8")
    assert after.startswith(before)
    assert after[len(before) :] == (
        "  - local: KETAMINE HCL\n"
        "    text: Ketamine hydrochloride\n"
        "    codings:\n"
        f'      - {{system: {RXNORM}, code: "6130", display: ketamine, source: "{KETAMINE}"}}\n'
    )
    row = mappings.codes.drugs.find("ketamine hcl")
    assert row is not None and row.codings[0].code == "6130"


def test_a_row_of_text_alone_has_no_codings(mappings_dir: Path) -> None:
    add_row(mappings_dir, ProposedRow("events", "CHILLS", "Chills"))

    row = load_mappings(mappings_dir).codes.events.find("CHILLS")
    assert row is not None and row.text == "Chills" and row.codings == []


def test_a_row_with_half_a_coding_or_no_source_is_refused_naming_the_field(
    mappings_dir: Path,
) -> None:
    before = table_path(mappings_dir, "drugs").read_text(encoding="utf-8")

    with pytest.raises(MappingFileError, match="system, code, display: give all three"):
        add_row(mappings_dir, ketamine_hcl(display=""))
    with pytest.raises(MappingFileError, match="source: say where the code comes from"):
        add_row(mappings_dir, ketamine_hcl(source=""))
    with pytest.raises(MappingFileError, match="'ketamine' has a row already"):
        add_row(mappings_dir, ketamine_hcl(local="ketamine"))

    assert table_path(mappings_dir, "drugs").read_text(encoding="utf-8") == before


def test_a_table_that_no_longer_loads_is_put_back(mappings_dir: Path) -> None:
    path = table_path(mappings_dir, "drugs")
    before = path.read_text(encoding="utf-8")

    with pytest.raises(MappingFileError, match=r"codes/drugs.yaml: rows\[3\].local"):
        add_row(mappings_dir, ketamine_hcl(local="K" * 65))

    assert path.read_text(encoding="utf-8") == before


def test_a_trial_loads_the_row_without_touching_the_folder(mappings_dir: Path) -> None:
    before = table_path(mappings_dir, "drugs").read_text(encoding="utf-8")

    with trial(mappings_dir, ketamine_hcl()) as (mappings, sites):
        assert mappings.codes.drugs.find("KETAMINE HCL") is not None
        assert sites == {}

    assert table_path(mappings_dir, "drugs").read_text(encoding="utf-8") == before
