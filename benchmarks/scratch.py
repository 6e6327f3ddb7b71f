"""A benchmark's scratch folder: a copy of the repository's mapping files to run the service on."""

import shutil
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def scratch_folder(prefix: str) -> Path:
    """A new temporary folder holding `mappings/`, a copy of the repository's."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    shutil.copytree(ROOT / "mappings", folder / "mappings")
    return folder
