"""Pooled connections on PostgreSQL: pinged only after resting, and reads without a
transaction around them."""

import time
from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text

from adapter.store import engine as store_engine
from adapter.store import raw
from adapter.store.engine import make_engine
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres


@pytest.fixture
def engine() -> Iterator[Engine]:
    made = make_engine(POSTGRES_URL)
    yield made
    made.dispose()


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _terminate(pid: int) -> None:
    admin = make_engine(POSTGRES_URL)
    with admin.connect() as connection:
        assert connection.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid}).scalar()
    admin.dispose()


def _count_pings(engine: Engine, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    pings: list[object] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(dbapi_connection)
        return ping(dbapi_connection)

    monkeypatch.setattr(engine.dialect, "do_ping", counted)
    return pings


def test_a_connection_back_moments_ago_is_used_without_a_ping(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    first = _backend_pid(engine)

    assert _backend_pid(engine) == first  # the same pooled connection
    assert pings == []


def test_a_rested_connection_the_server_dropped_is_replaced_after_its_ping(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = _count_pings(engine, monkeypatch)
    monkeypatch.setattr(store_engine, "PING_AFTER_IDLE", 0.05)
    dropped = _backend_pid(engine)
    _terminate(dropped)
    time.sleep(0.1)

    replaced = _backend_pid(engine)

    assert replaced != dropped
    assert len(pings) == 1


def test_reads_run_in_autocommit_and_give_the_connection_back_transactional(
    engine: Engine,
) -> None:
    with raw.reading(engine) as cursor:
        cursor.execute("SELECT 1")
        assert cursor.connection.autocommit is True
        assert cursor.connection.info.transaction_status.name == "IDLE"  # no BEGIN was sent

    pooled = engine.raw_connection()
    try:
        assert pooled.driver_connection.autocommit is False
    finally:
        pooled.close()


def test_a_read_whose_connection_was_dropped_leaves_none_broken_in_the_pool(
    engine: Engine,
) -> None:
    # The statement's own error comes out, not one from handing the lost connection back.
    with pytest.raises(psycopg.errors.AdminShutdown), raw.reading(engine) as cursor:
        cursor.execute("SELECT pg_backend_pid()")
        _terminate(cursor.fetchone()[0])
        cursor.execute("SELECT 1")

    with raw.reading(engine) as cursor:
        cursor.execute("SELECT 1")
        assert cursor.fetchone() == (1,)
