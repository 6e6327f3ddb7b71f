"""The `infusion-adapter` command as a process of its own: the collector leaves alone what the
imports made, and collects the young generation less often."""

import gc
import tomllib
from pathlib import Path

import pytest

from adapter import cli

ROOT = Path(__file__).resolve().parent.parent


def test_the_console_script_starts_at_the_entry() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["scripts"]["infusion-adapter"] == "adapter.cli:entry"


def test_the_entry_freezes_the_loaded_heap_before_the_command_runs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, int] = {}

    def command() -> None:
        seen["young"] = gc.get_threshold()[0]
        seen["frozen"] = gc.get_freeze_count()

    before = gc.get_threshold()
    monkeypatch.setattr(cli, "main", command)
    try:
        cli.entry()
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)

    assert seen["young"] == cli.YOUNG_COLLECTION
    assert seen["frozen"] > 10_000  # the modules and everything they made
    assert gc.get_threshold() == before
