"""A row added to a code table (mappings/codes/*.yaml) the way a person would add it: appended
after the others, every comment, the order and the layout of the file kept (ruamel.yaml's
round trip), then checked with the rest of the mapping files before anything uses it."""

import io
import shutil
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from adapter.errors import MappingFileError
from adapter.mapping.config import CodeTable, Mappings, load_file, load_mappings
from adapter.mapping.sites import SiteConfig, load_group

TABLES = ("indications", "events", "sites", "drugs", "routes", "actions")
_writing = threading.Lock()


@dataclass(frozen=True)
class ProposedRow:
    """A row for a local code: its text, and the one coding it gets (none: text alone)."""

    table: str
    local: str
    text: str
    system: str = ""
    code: str = ""
    display: str = ""
    source: str = ""

    def problems(self) -> list[str]:
        """What keeps the row from being written, each naming the field."""
        found = []
        if self.table not in TABLES:
            found.append(f"table: must be one of {', '.join(TABLES)}")
        if not self.local.strip():
            found.append("local: the clinic's code is required")
        if not self.text.strip():
            found.append("text: the text of the concept is required")
        given = [bool(getattr(self, name).strip()) for name in ("system", "code", "display")]
        if any(given) and not all(given):
            found.append("system, code, display: give all three, or none for text alone")
        if all(given) and not self.source.strip():
            found.append("source: say where the code comes from (a page of its publisher)")
        for name in ("local", "text", "system", "code", "display", "source"):
            if any(ord(char) < 32 or ord(char) == 127 for char in getattr(self, name)):
                found.append(f"{name}: one line, without control characters")
        return found


def table_path(folder: Path, table: str) -> Path:
    return folder / "codes" / f"{table}.yaml"


def _yaml() -> YAML:
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def with_row(original: str, row: ProposedRow) -> str:
    """The table's text with the row appended; comments, order and quoting kept."""
    yaml = _yaml()
    data = yaml.load(original)
    rows: CommentedSeq = data["rows"]
    if any(str(r.get("local", "")).upper() == row.local.strip().upper() for r in rows):
        raise MappingFileError(
            f"codes/{row.table}.yaml: {row.local!r} has a row already; edit it by hand"
        )
    codings = CommentedSeq()
    if row.code.strip():
        coding = CommentedMap()
        coding["system"] = row.system.strip()
        coding["code"] = DoubleQuotedScalarString(row.code.strip())
        coding["display"] = row.display.strip()
        coding["source"] = DoubleQuotedScalarString(row.source.strip())
        coding.fa.set_flow_style()
        codings.append(coding)
    else:
        codings.fa.set_flow_style()
    added = CommentedMap()
    added["local"] = row.local.strip()
    added["text"] = row.text.strip()
    added["codings"] = codings
    rows.append(added)
    written = io.StringIO()
    yaml.dump(data, written)
    return written.getvalue()


def round_trip(original: str) -> str:
    """The table loaded and written again unchanged: what `with_row` keeps of a file."""
    yaml = _yaml()
    written = io.StringIO()
    yaml.dump(yaml.load(original), written)
    return written.getvalue()


@contextmanager
def trial(folder: Path, row: ProposedRow) -> Iterator[tuple[Mappings, dict[str, SiteConfig]]]:
    """The mappings as they would be with the row, loaded from a copy of the folder: nothing
    in `folder` changes. With them each site's of a group (the shared files with the site's
    overlays). A broken result raises MappingFileError."""
    with tempfile.TemporaryDirectory(prefix="mapping-trial-") as scratch:
        copy = Path(scratch) / "mappings"
        shutil.copytree(folder, copy)
        path = table_path(copy, row.table)
        path.write_text(with_row(path.read_text(encoding="utf-8"), row), encoding="utf-8")
        load_file(path, CodeTable)
        yield load_group(copy)


def add_row(folder: Path, row: ProposedRow) -> Mappings:
    """Write the row into its table, then load every mapping file; when they do not load, the
    table is put back as it was and the error raised."""
    problems = row.problems()
    if problems:
        raise MappingFileError("\n".join(problems))
    path = table_path(folder, row.table)
    with _writing:
        original = path.read_text(encoding="utf-8")
        changed = with_row(original, row)
        path.write_text(changed, encoding="utf-8")
        try:
            return load_mappings(folder)
        except MappingFileError:
            path.write_text(original, encoding="utf-8")
            raise
