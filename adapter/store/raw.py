"""Statements run on a pooled DBAPI connection: for the few hot paths (a FHIR read, the sync's
queue) where SQLAlchemy's per-statement and per-row work costs more than the database's own.
Values still pass through the columns' own types, so they read and write as everywhere else."""

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Column, Engine

from adapter.errors import StoreUnavailable

Convert = Callable[[Any], Any]
T = TypeVar("T")
_CONVERTERS: dict[tuple[int, str, int], Convert] = {}


def statement(engine: Engine, sql: str) -> str:
    """`sql` written with `?` placeholders, in the driver's own placeholder style."""
    return sql if engine.dialect.paramstyle == "qmark" else sql.replace("?", "%s")


def placeholders(count: int) -> str:
    """`?, ?, ...` for an IN list of `count` values (then `statement` for the driver)."""
    return ", ".join("?" * count)


def _same(value: Any) -> Any:
    return value


def to_store(engine: Engine, column: Column[Any]) -> Convert:
    """The column type's conversion of a Python value into what the driver is given."""
    return _converter(engine, column, "bind")


def from_store(engine: Engine, column: Column[Any]) -> Convert:
    """The column type's conversion of what the driver returns into the Python value."""
    return _converter(engine, column, "result")


def _converter(engine: Engine, column: Column[Any], direction: str) -> Convert:
    key = (id(engine.dialect), direction, id(column))
    if key not in _CONVERTERS:
        column_type = column.type.dialect_impl(engine.dialect)
        if direction == "bind":
            processor = column_type.bind_processor(engine.dialect)
        else:
            processor = column_type.result_processor(engine.dialect, None)
        _CONVERTERS[key] = processor or _same
    return _CONVERTERS[key]


@contextmanager
def reading(engine: Engine) -> Iterator[Any]:
    """A cursor for reads alone. On PostgreSQL its connection is in autocommit meanwhile, so
    that a statement needs no BEGIN before it and no ROLLBACK after: a round trip each, which
    cost the sync's hot reads more than the queries did. Each statement reads its own snapshot."""
    with _autocommit(engine) as cursor:
        yield cursor


@contextmanager
def each_committed(engine: Engine) -> Iterator[Any]:
    """A PostgreSQL cursor whose every statement is a transaction of its own, committed (and
    flushed to disk, as any commit) when the statement returns: one round trip where BEGIN,
    the statement and COMMIT are three. For writes that one statement makes whole."""
    with _autocommit(engine) as cursor:
        yield cursor


@contextmanager
def _autocommit(engine: Engine) -> Iterator[Any]:
    connection = engine.raw_connection()
    driver: Any = connection.driver_connection
    autocommit = engine.dialect.name == "postgresql"
    try:
        if autocommit:
            driver.autocommit = True
        found = connection.cursor()
        try:
            yield found
        finally:
            found.close()
    finally:
        if autocommit:
            try:
                driver.autocommit = False
            except engine.dialect.loaded_dbapi.Error:
                connection.invalidate()  # closed under it: the pool opens another
        connection.close()


@contextmanager
def writing(engine: Engine) -> Iterator[Any]:
    """A cursor on a pooled connection in a transaction, committed at the end (rolled back when
    the block fails)."""
    connection = engine.raw_connection()
    try:
        found = connection.cursor()
        try:
            yield found
        finally:
            found.close()
        connection.commit()
    except BaseException:
        connection.rollback()
        raise
    finally:
        connection.close()


def again_once(read: Callable[[], T], dropped: type[Exception]) -> T:
    """`read`, run once more when it fails with `dropped` (a pooled connection the server
    dropped, as at a restart); a store that still does not answer is StoreUnavailable."""
    try:
        return read()
    except dropped:
        pass
    try:
        return read()
    except dropped:
        raise StoreUnavailable("the store did not answer; try again") from None


def read_once(engine: Engine, sql: str, values: tuple[Any, ...]) -> Any:
    """The first row of a query on an autocommit engine (None: no row), read `again_once`."""
    dropped = engine.dialect.loaded_dbapi.OperationalError

    def first_row() -> Any:
        connection = engine.raw_connection()
        try:
            found = connection.cursor()
            found.execute(sql, values)
            row = found.fetchone()
            found.close()
            return row
        except dropped:
            connection.invalidate()
            raise
        finally:
            connection.close()

    return again_once(first_row, dropped)
