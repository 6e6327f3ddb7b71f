"""One-row reads awaited on the event loop, over psycopg's own async connections: while
PostgreSQL answers one read, the loop serves the other requests (a blocking read would hold the
whole service for the round trip).

psycopg is imported where a PostgreSQL store is opened, not by every process that imports this
(a SQLite deployment's commands start without it)."""

from __future__ import annotations

import asyncio
from functools import partial
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine

from adapter.errors import StoreUnavailable

if TYPE_CHECKING:
    import psycopg

SIZE = 10
"""Connections open at most per event loop; a read beyond them waits for one to come back."""


class _Pool:
    """The connections of one event loop: idle ones reused, at most SIZE in all."""

    def __init__(self, loop: asyncio.AbstractEventLoop, size: int) -> None:
        self.loop = loop
        self.idle: list[psycopg.AsyncConnection[Any]] = []
        self.slots = asyncio.Semaphore(size)

    async def take(self, connect: Any) -> psycopg.AsyncConnection[Any]:
        await self.slots.acquire()
        if self.idle:
            return self.idle.pop()
        try:
            connection: psycopg.AsyncConnection[Any] = await connect()
        except BaseException:
            self.slots.release()
            raise
        return connection

    def give_back(self, connection: psycopg.AsyncConnection[Any]) -> None:
        self.idle.append(connection)
        self.slots.release()

    def lose(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """A connection in an unknown state (dropped, or its read cancelled): closed."""
        connection.pgconn.finish()
        self.slots.release()

    def close_idle(self) -> None:
        while self.idle:
            self.idle.pop().pgconn.finish()


class LoopReads:
    """Reads of one row on the running event loop. The connections are kept per loop (a
    loop's connections are not used from another); those of a loop no longer running are
    closed when another loop reads, and all by `close`."""

    def __init__(self, engine: Engine, size: int = SIZE) -> None:
        import psycopg

        args, params = engine.dialect.create_connect_args(engine.url)
        self.connect = partial(psycopg.AsyncConnection.connect, *args, **params, autocommit=True)
        self.dropped: type[Exception] = psycopg.OperationalError
        self.size = size
        self.pool: _Pool | None = None

    @staticmethod
    def serves(engine: Engine) -> bool:
        return engine.dialect.driver == "psycopg"

    async def first_row(self, sql: str, values: tuple[Any, ...]) -> Any:
        """The first row (None: no row). A connection the server dropped is replaced once; a
        store that still does not answer is StoreUnavailable."""
        pool = self._pool()
        for attempt in (1, 2):
            try:
                connection = await pool.take(self.connect)
            except self.dropped:
                raise StoreUnavailable("the store did not answer; try again") from None
            try:
                cursor = await connection.execute(sql, values)
                row = await cursor.fetchone()
            except self.dropped:
                pool.lose(connection)
                pool.close_idle()  # a server restart drops them all
                if attempt == 2:
                    raise StoreUnavailable("the store did not answer; try again") from None
                continue
            except BaseException:
                pool.lose(connection)
                raise
            pool.give_back(connection)
            return row
        raise AssertionError("unreachable")

    def _pool(self) -> _Pool:
        loop = asyncio.get_running_loop()
        if self.pool is None or self.pool.loop is not loop:
            if self.pool is not None:
                self.pool.close_idle()
            self.pool = _Pool(loop, self.size)
        return self.pool

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close_idle()
            self.pool = None
