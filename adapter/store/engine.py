"""Creates the SQLAlchemy engine for the configured database, SQLite or PostgreSQL."""

from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url


def normalise_url(url: str) -> str:
    """Accept the URL forms people paste (`postgres://`, `postgresql://`) and pick psycopg 3."""
    parsed = make_url(
        url.replace("postgres://", "postgresql://", 1) if url.startswith("postgres://") else url
    )
    if parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed.render_as_string(hide_password=False)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_engine(url: str, single_reads: bool = False) -> Engine:
    """An engine that never puts statement parameters (which hold PHI) into error messages.
    `single_reads`: an engine for one-statement reads only, in autocommit (no BEGIN, no
    ROLLBACK on return to the pool) and without a ping before each checkout; its callers retry
    once on a connection the server dropped."""
    url = normalise_url(url)
    parsed = make_url(url)
    options: dict[str, Any] = {"hide_parameters": True}
    if single_reads:
        options["isolation_level"] = "AUTOCOMMIT"
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return create_engine(url, pool_pre_ping=not single_reads, **options)
