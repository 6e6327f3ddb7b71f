"""Creates and upgrades the store's schema with the Alembic migrations shipped in the package.
Alembic itself is loaded only to change a schema: a process whose store is current (every start
but the first after an upgrade) reads the revisions without it."""

import functools
import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, inspect, text

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version"
_REVISION = re.compile(
    r'^(down_revision|revision)\s*(?::[^=\n]*)?=\s*(None|"[^"\n]*")', re.MULTILINE
)
"""A migration's `revision = "0018"` or `down_revision = "0017"` line."""


def _config() -> "Config":
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def newest() -> str | None:
    """The newest revision of the migrations shipped, read once per process: the one that no
    other migration revises, from the `revision` and `down_revision` lines of the files.
    (Alembic's reading compiles every migration, which cost more than the rest of opening a
    store; tests/store/test_store.py checks that the two agree.)"""
    revised: dict[str, str | None] = {}
    for path in sorted((MIGRATIONS / "versions").glob("*.py")):
        found = dict(_REVISION.findall(path.read_text(encoding="utf-8")))
        if "revision" not in found:
            continue
        down = found.get("down_revision", "None")
        revised[found["revision"].strip('"')] = None if down == "None" else down.strip('"')
    heads = set(revised) - set(revised.values())
    if len(heads) > 1:
        raise RuntimeError(f"the migrations have more than one head: {', '.join(sorted(heads))}")
    return next(iter(heads), None)


def current(engine: Engine) -> str | None:
    """The revision the store's schema is at (None: an empty store)."""
    with engine.connect() as connection:
        if not inspect(connection).has_table(VERSION_TABLE):
            return None
        rows = connection.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).all()
    if len(rows) > 1:
        raise RuntimeError(f"the store's schema is at more than one revision: {rows}")
    return rows[0][0] if rows else None


def upgrade(engine: Engine, target: str = "head") -> str | None:
    """Bring the schema to `target` (the newest by default); a current schema is left as it is,
    silently. Returns the revision it was at when it changed, and says so in one log line."""
    before = current(engine)
    if before == newest() and target == "head":
        return None
    from alembic import command

    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, target)
    after = current(engine)
    if after == before:
        return None
    log.info("store schema upgraded from %s to %s", before or "empty", after)
    return before or "empty"


def pending(engine: Engine) -> bool:
    """True when the database is behind the newest migration."""
    return current(engine) != newest()


def downgrade(engine: Engine, target: str) -> None:
    """Take the schema back to `target` (`base` removes every table the migrations made)."""
    from alembic import command

    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, target)
