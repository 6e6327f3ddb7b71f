"""Notices between processes on PostgreSQL (NOTIFY at commit, LISTEN in a thread): records have
arrived, resources are queued for the EHR, a client was revoked, the mapping version changed.
SQLite has none; its processes wake themselves, and their caches expire."""

import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from typing import Any

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)
RECORDS = "adapter_records"
"""Records were accepted: there is something to map."""
OUTBOX = "adapter_outbox"
"""Resource versions were queued for the EHR: there is something to deliver."""
CLIENTS = "adapter_clients"
"""A client was added or revoked: the keys and tokens each process checked are asked again."""
MAPPINGS = "adapter_mappings"
"""The mapping version in the store changed: each process loads its mapping files again."""
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")
WAIT_SECONDS = 60.0
"""The longest one wait for notices lasts when none comes (and `stop` does not end it): the
listener sleeps between notices rather than waking to look for them, and after such a wait
asks the server whether it is still there (ANSWER_SECONDS)."""
ANSWER_SECONDS = 10.0
"""How long the server has to answer the question the listener asks after a wait in which
nothing came: a connection that cannot answer (the server's host gone without a word, a network
that drops what it carried) is listened on again rather than trusted, deaf, for hours."""
RECONNECT_SECONDS = (1.0, 2.0, 5.0, 15.0, 30.0)
"""Waits before each attempt to listen again after the connection was lost, the last repeated."""


def announce(connection: Connection, channel: str, payload: str = "") -> None:
    """Tell the listening processes, when the caller's transaction commits (PostgreSQL folds
    the notices of one transaction with the same payload into one; none is sent if it rolls
    back). The outbox's payload is the clinic site whose resources were queued ("": none)."""
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY, {"channel": channel, "payload": payload})


class Unanswered(Exception):
    """The server did not answer the listener's question within ANSWER_SECONDS, or answered
    it with an error (the connection ended, say)."""


class NoticeListener:
    """A thread holding one PostgreSQL connection that listens on the channels given and calls
    each channel's function with every notice's payload. A lost connection is said once in the
    log, and listened on again after a wait; the schedule delivers meanwhile. On (re)connecting
    each function is called with None: whatever came while nobody listened, for anyone. A
    connection on which the server no longer answers is taken for lost as well."""

    def __init__(
        self, engine: Engine, channels: Mapping[str, Callable[[str | None], None]]
    ) -> None:
        self.engine = engine
        self.channels = dict(channels)
        self._stop = threading.Event()
        self._woken, self._waker = socket.socketpair()
        """`stop` writes to `_waker`, which ends the wait on `_woken` beside the connection."""
        self._thread = threading.Thread(target=self._listen, name="notice-listener", daemon=True)
        self.listening = threading.Event()
        """Set while the listener is connected and listening (tests wait for it)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with suppress(OSError):  # the listener ended already
            self._waker.send(b"\0")
        self._thread.join(timeout=5)
        if not self._thread.is_alive():
            self._woken.close()
            self._waker.close()

    def _connect(self) -> Any:
        dialect = self.engine.dialect
        arguments, options = dialect.create_connect_args(self.engine.url)
        connection = dialect.loaded_dbapi.connect(*arguments, **options)
        connection.autocommit = True
        for channel in self.channels:
            connection.execute(f"LISTEN {channel}")
        return connection

    def _listen(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                connection = self._connect()
            except Exception as exc:
                failures = self._lost(exc, failures)
                continue
            try:
                # A selector of the platform's kind (epoll, kqueue; `select` has a limit on the
                # descriptor's number, which a busy process may pass).
                with selectors.DefaultSelector() as waiting:
                    waiting.register(connection.pgconn.socket, selectors.EVENT_READ)
                    waiting.register(self._woken, selectors.EVENT_READ)
                    self.listening.set()
                    # Whatever came while nobody listened is delivered by the first run woken.
                    for wake in self.channels.values():
                        wake(None)
                    while not self._stop.is_set():
                        # Asleep until the server sends something (a notice, or the
                        # connection's end, which the read below raises) or `stop` wakes it.
                        if not waiting.select(WAIT_SECONDS):
                            self._ask(connection, waiting)
                        for notice in connection.notifies(timeout=0):
                            self._heard(notice.channel, notice.payload)
                        if failures:  # listened through a wait: a loss from here is news
                            log.info("listening for notices again")
                            failures = 0
            except Exception as exc:
                self.listening.clear()
                failures = self._lost(exc, failures)
            finally:
                self.listening.clear()
                with suppress(Exception):  # already gone
                    connection.close()

    def _ask(self, connection: Any, waiting: selectors.BaseSelector) -> None:
        """After a wait in which nothing came: whether the server still answers on this
        connection (a connection whose peer vanished stays quiet, not closed, until the system
        gives up on it, which takes minutes to hours). The question is sent without waiting
        for its answer on the socket, which would wait as long; notices that came with the
        answer are passed on. Raises Unanswered when no answer came within ANSWER_SECONDS."""
        from psycopg import pq  # the listener is PostgreSQL's alone

        pgconn = connection.pgconn
        pgconn.send_query(b"SELECT 1")
        deadline = time.monotonic() + ANSWER_SECONDS
        while True:
            # Each result is taken only once libpq holds it whole: asked for sooner, libpq
            # waits on the socket itself, with no end and holding the interpreter.
            while pgconn.is_busy():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise Unanswered(f"no answer from the database in {ANSWER_SECONDS:g} s")
                if self._stop.is_set():
                    return
                waiting.select(remaining)
                pgconn.consume_input()
            result = pgconn.get_result()
            if result is None:
                break
            if result.status != pq.ExecStatus.TUPLES_OK:
                raise Unanswered(f"the database answered {result.status.name}")
        encoding = connection.info.encoding
        while (notice := pgconn.notifies()) is not None:
            self._heard(notice.relname.decode(encoding), notice.extra.decode(encoding))

    def _heard(self, channel: str, payload: str) -> None:
        heard = self.channels.get(channel)
        if heard is not None:
            heard(payload)

    def _lost(self, exc: Exception, failures: int) -> int:
        if failures == 0:
            log.warning(
                "not listening for notices (%s); the schedule delivers until they are heard again",
                type(exc).__name__,
            )
        self._stop.wait(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
        return failures + 1
