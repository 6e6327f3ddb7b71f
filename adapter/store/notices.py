"""Notices between processes on PostgreSQL (NOTIFY at commit, LISTEN in a thread): records have
arrived, resources are queued for the EHR, a client was revoked, the mapping version changed.
SQLite has none; its processes wake themselves, and their caches expire."""

import logging
import threading
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
_NOTIFY = {channel: text(f"NOTIFY {channel}") for channel in (RECORDS, OUTBOX, CLIENTS, MAPPINGS)}
RECONNECT_SECONDS = (1.0, 2.0, 5.0, 15.0, 30.0)
"""Waits before each attempt to listen again after the connection was lost, the last repeated."""


def announce(connection: Connection, channel: str) -> None:
    """Tell the listening processes, when the caller's transaction commits (PostgreSQL folds
    the notices of one transaction into one; none is sent if it rolls back)."""
    if connection.dialect.name == "postgresql":
        connection.execute(_NOTIFY[channel])


class NoticeListener:
    """A thread holding one PostgreSQL connection that listens on the channels given and calls
    each channel's function on every notice. A lost connection is said once in the log, and
    listened on again after a wait; the schedule delivers meanwhile."""

    def __init__(self, engine: Engine, channels: Mapping[str, Callable[[], None]]) -> None:
        self.engine = engine
        self.channels = dict(channels)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._listen, name="notice-listener", daemon=True)
        self.listening = threading.Event()
        """Set while the listener is connected and listening (tests wait for it)."""

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

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
                if failures:
                    log.info("listening for notices again")
                failures = 0
                self.listening.set()
                # Whatever came while nobody listened is delivered by the first run woken.
                for wake in self.channels.values():
                    wake()
                while not self._stop.is_set():
                    for notice in connection.notifies(timeout=1.0):
                        heard = self.channels.get(notice.channel)
                        if heard is not None:
                            heard()
            except Exception as exc:
                self.listening.clear()
                failures = self._lost(exc, failures)
            finally:
                self.listening.clear()
                with suppress(Exception):  # already gone
                    connection.close()

    def _lost(self, exc: Exception, failures: int) -> int:
        if failures == 0:
            log.warning(
                "not listening for notices (%s); the schedule delivers until they are heard again",
                type(exc).__name__,
            )
        self._stop.wait(RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)])
        return failures + 1
