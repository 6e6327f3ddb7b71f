"""Creates and upgrades the store's schema with the Alembic migrations shipped in the package."""

import functools
import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

log = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config


@functools.cache
def newest() -> str | None:
    """The newest revision of the migrations shipped, read once per process: Alembic compiles
    every migration file to find it, which cost more than the rest of opening a store."""
    return ScriptDirectory.from_config(_config()).get_current_head()


def current(engine: Engine) -> str | None:
    """The revision the store's schema is at (None: an empty store)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine: Engine, target: str = "head") -> str | None:
    """Bring the schema to `target` (the newest by default); a current schema is left as it is,
    silently. Returns the revision it was at when it changed, and says so in one log line."""
    config = _config()
    before = current(engine)
    if before == newest() and target == "head":
        return None
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
    config = _config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, target)
