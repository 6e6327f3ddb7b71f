"""Creates the SQLAlchemy engine for the configured database, SQLite or PostgreSQL."""

import time
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Engine, create_engine, event, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError

PING_AFTER_IDLE = 1.0
"""Seconds a pooled PostgreSQL connection may rest before it is pinged on its next checkout.
A connection back from work moments ago is used without a ping: the sync checks connections out
several times a batch, and each ping was a round trip (17% of the sync's main thread's time on
PostgreSQL, by `py-spy --idle`)."""


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
    engine = create_engine(url, **options)
    if not single_reads:
        _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: Engine) -> None:
    """SQLAlchemy's pessimistic disconnect handling, for connections that rested: a connection
    that fails its ping is discarded and the pool hands out another (or opens one). A connection
    dropped within PING_AFTER_IDLE of its last use fails its statement instead, and the pool
    then replaces all its connections."""

    @event.listens_for(engine, "checkin")
    def rested_since(_dbapi_connection: Any, record: Any) -> None:
        record.info["checked_in_at"] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def ping(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.get("checked_in_at")
        if checked_in is None or time.monotonic() - checked_in < PING_AFTER_IDLE:
            return  # opened just now, or in use moments ago
        try:
            engine.dialect.do_ping(dbapi_connection)
        except engine.dialect.loaded_dbapi.Error:
            raise DisconnectionError("a pooled connection did not answer its ping") from None


def any_row(engine: Engine, column: ColumnElement[Any], *conditions: ColumnElement[bool]) -> bool:
    """Whether any row of `column`'s table meets the conditions: one row read, nothing written."""
    query = select(column).where(*conditions).limit(1)
    with engine.connect() as connection:
        return connection.execute(query).first() is not None
