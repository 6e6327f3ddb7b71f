"""Reads awaited on the event loop (PostgreSQL): connections kept per loop and bounded, a
dropped or cancelled read's connection closed, an unreachable store StoreUnavailable."""

import asyncio
import socket
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine

from adapter.errors import StoreUnavailable
from adapter.store.engine import make_engine
from adapter.store.loop_reads import LoopReads
from tests.conftest import POSTGRES_URL

pytestmark = pytest.mark.postgres
BACKEND = "SELECT pg_backend_pid(), %s::int"


@pytest.fixture
def engine() -> Iterator[Engine]:
    engine = make_engine(POSTGRES_URL, single_reads=True)
    yield engine
    engine.dispose()


def test_a_read_answers_and_its_connection_is_kept_for_the_next(engine: Engine) -> None:
    reads = LoopReads(engine)

    async def twice() -> tuple[tuple[int, int], tuple[int, int]]:
        return await reads.first_row(BACKEND, (1,)), await reads.first_row(BACKEND, (2,))

    first, second = asyncio.run(twice())
    reads.close()

    assert (first[1], second[1]) == (1, 2)
    assert first[0] == second[0]
    assert reads.pool is None


def test_no_row_is_none(engine: Engine) -> None:
    reads = LoopReads(engine)
    found = asyncio.run(reads.first_row("SELECT 1 WHERE %s::int = 0", (1,)))
    reads.close()

    assert found is None


def test_concurrent_reads_share_at_most_size_connections(engine: Engine) -> None:
    reads = LoopReads(engine, size=3)

    async def many() -> list[tuple[int, int]]:
        sql = "SELECT pg_backend_pid(), %s::int FROM pg_sleep(0.02)"
        return await asyncio.gather(*(reads.first_row(sql, (n,)) for n in range(12)))

    rows = asyncio.run(many())
    reads.close()

    assert [row[1] for row in rows] == list(range(12))
    assert len({row[0] for row in rows}) == 3


def test_the_connections_of_a_finished_loop_are_closed_when_another_reads(
    engine: Engine,
) -> None:
    reads = LoopReads(engine)
    asyncio.run(reads.first_row(BACKEND, (1,)))
    assert reads.pool is not None
    first_loop = reads.pool.idle[0]

    asyncio.run(reads.first_row(BACKEND, (2,)))
    reads.close()

    assert first_loop.closed


def test_a_cancelled_read_closes_its_connection_and_frees_its_place(engine: Engine) -> None:
    reads = LoopReads(engine, size=1)

    async def cancel_then_read() -> tuple[int, int]:
        slow = asyncio.ensure_future(reads.first_row("SELECT pg_sleep(5), %s::int", (1,)))
        await asyncio.sleep(0.2)
        slow.cancel()
        with pytest.raises(asyncio.CancelledError):
            await slow
        return await asyncio.wait_for(reads.first_row(BACKEND, (2,)), timeout=5)

    row = asyncio.run(cancel_then_read())
    reads.close()

    assert row[1] == 2


def test_an_unreachable_store_is_unavailable_without_its_address() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    engine = make_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/test", single_reads=True)
    reads = LoopReads(engine)

    with pytest.raises(StoreUnavailable) as raised:
        asyncio.run(reads.first_row(BACKEND, (1,)))

    assert str(port) not in str(raised.value)
    assert raised.value.__cause__ is None
    engine.dispose()
