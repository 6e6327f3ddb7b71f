"""Notices between processes (PostgreSQL): heard as they come, by a listener that sleeps
between them, listens again after losing its connection, and ends at once when stopped."""

import itertools
import os
import resource
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from adapter.runtime import Runtime
from adapter.store import notices
from adapter.store.notices import NoticeListener


@pytest.fixture
def postgres(runtime: Runtime) -> Runtime:
    if runtime.store.engine.dialect.name != "postgresql":
        pytest.skip("notices are PostgreSQL's")
    return runtime


class Heard:
    """What a listener heard on a channel of this test's own (notices reach every session of
    the database, whatever its schema: the suite's other tests send theirs meanwhile)."""

    def __init__(self) -> None:
        self.channel = f"adapter_test_{uuid.uuid4().hex[:12]}"
        self.payloads: list[str | None] = []
        self.arrived = threading.Event()

    def __call__(self, payload: str | None) -> None:
        self.payloads.append(payload)
        if payload is not None:
            self.arrived.set()

    def send(self, runtime: Runtime, payload: str) -> None:
        self.arrived.clear()
        with runtime.store.engine.begin() as connection:
            notices.announce(connection, self.channel, payload)


def wakeups(thread: threading.Thread) -> int:
    """How many times the thread has given up the CPU to wait (Linux's count for the task)."""
    status = Path(f"/proc/self/task/{thread.native_id}/status").read_text()
    return int(
        next(line for line in status.splitlines() if line.startswith("voluntary_ctxt")).split()[1]
    )


def test_a_notice_is_heard_as_it_comes_and_a_stopped_listener_ends_at_once(
    postgres: Runtime,
) -> None:
    heard = Heard()
    listener = NoticeListener(postgres.store.engine, {heard.channel: heard})
    listener.start()
    try:
        assert listener.listening.wait(10)
        time.sleep(0.2)
        before = wakeups(listener._thread)
        time.sleep(1)
        idle = wakeups(listener._thread) - before
        sent = time.monotonic()
        heard.send(postgres, "north")
        assert heard.arrived.wait(5)
        latency = time.monotonic() - sent
    finally:
        stopping = time.monotonic()
        listener.stop()
        stopped = time.monotonic() - stopping

    assert heard.payloads == [None, "north"]  # None: whatever came before it listened, for anyone
    assert latency < 1
    assert idle <= 2  # asleep through a second with nothing sent (polling woke it ten times)
    assert stopped < 1 and not listener.listening.is_set()


def test_a_listener_whose_connection_is_cut_listens_again_and_hears_the_next(
    postgres: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(notices, "RECONNECT_SECONDS", (0.1,))
    heard = Heard()
    listener = NoticeListener(postgres.store.engine, {heard.channel: heard})
    listener.start()
    try:
        assert listener.listening.wait(10)
        with postgres.store.engine.begin() as connection:
            cut = connection.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query = :listen"
                ),
                {"listen": f"LISTEN {heard.channel}"},
            ).all()
        assert cut == [(True,)]
        deadline = time.monotonic() + 10
        while heard.payloads.count(None) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)  # listening again calls each channel's function with None
        heard.send(postgres, "south")
        assert heard.arrived.wait(5)
    finally:
        listener.stop()

    assert heard.payloads == [None, None, "south"]


def test_a_listener_opened_past_descriptor_1024_hears_notices(postgres: Runtime) -> None:
    """`select` refuses a descriptor numbered 1024 or more; a busy service may open its
    listener's connection past that."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1200:
        pytest.skip(f"this process may open {hard} descriptors")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 1200), hard))
    held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]
    heard = Heard()
    listener = NoticeListener(postgres.store.engine, {heard.channel: heard})
    try:
        listener.start()
        assert listener.listening.wait(10)
        heard.send(postgres, "east")
        assert heard.arrived.wait(5)
    finally:
        listener.stop()
        for descriptor in held:
            os.close(descriptor)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    assert heard.payloads == [None, "east"]


class Relay:
    """A TCP relay on loopback to the database: `silence` leaves the connections open through
    it and carries nothing more on them, as a network that lost the server's host does (no
    end of the connection ever arrives); connections opened after it are carried."""

    def __init__(self, port: int) -> None:
        self.upstream = ("127.0.0.1", port)
        self.silenced: set[socket.socket] = set()
        self.holding: set[socket.socket] = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.create_connection(self.upstream)
                self.open += [client, upstream]
                for source, target in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._carry, args=(source, target), daemon=True).start()

    def _carry(self, source: socket.socket, target: socket.socket) -> None:
        from_server = source.getpeername() == self.upstream
        held = b""
        with suppress(OSError):
            while data := source.recv(65536):
                if source in self.silenced:
                    continue
                if from_server and source in self.holding:
                    # The server's messages passed on up to its first ReadyForQuery ('Z'),
                    # which is kept back: an answer whose end never comes.
                    held += data
                    while len(held) >= 5 and held[:1] != b"Z":
                        size = 1 + int.from_bytes(held[1:5], "big")
                        if len(held) < size:
                            break
                        target.sendall(held[:size])
                        held = held[size:]
                    continue
                target.sendall(data)

    def silence(self) -> None:
        self.silenced.update(self.open)

    def hold_ready(self) -> None:
        """The connections open now get the server's messages up to its next ReadyForQuery."""
        self.holding.update(self.open)

    def close(self) -> None:
        for connection in [self.listener, *self.open]:
            with suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
            connection.close()


@dataclass
class Relayed:
    """A listener through a relay, quick to ask the server and to give up on it."""

    relay: Relay
    heard: Heard
    listener: NoticeListener

    def listening_again(self) -> None:
        """Wait until the listener has listened anew (it calls each function with None)."""
        deadline = time.monotonic() + 10
        while self.heard.payloads.count(None) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)


@pytest.fixture
def relayed(postgres: Runtime, monkeypatch: pytest.MonkeyPatch) -> Iterator[Relayed]:
    monkeypatch.setattr(notices, "WAIT_SECONDS", 0.2)
    monkeypatch.setattr(notices, "ANSWER_SECONDS", 0.5)
    monkeypatch.setattr(notices, "RECONNECT_SECONDS", (0.1,))
    engine = postgres.store.engine
    relay = Relay(engine.url.port or 5432)
    through = create_engine(engine.url.set(host="127.0.0.1", port=relay.port))
    heard = Heard()
    listener = NoticeListener(through, {heard.channel: heard})
    listener.start()
    try:
        assert listener.listening.wait(10)
        yield Relayed(relay, heard, listener)
    finally:
        listener.stop()
        relay.close()
        through.dispose()


def test_a_listener_whose_server_stops_answering_listens_again_and_hears_the_next(
    postgres: Runtime, relayed: Relayed
) -> None:
    """A connection whose server vanished without closing it (its host lost, a network that
    drops what it carried) stays quiet, not closed: the listener asks the server after each
    wait in which nothing came, and one that does not answer is listened on again."""
    heard = relayed.heard
    time.sleep(1)  # quiet: asked five times, answered each time
    heard.send(postgres, "north")
    assert heard.arrived.wait(5)
    assert heard.payloads == [None, "north"]
    relayed.relay.silence()
    relayed.listening_again()
    heard.send(postgres, "south")
    assert heard.arrived.wait(5)

    assert heard.payloads == [None, "north", None, "south"]


def test_a_listener_whose_answer_stops_halfway_listens_again_and_hears_the_next(
    postgres: Runtime, relayed: Relayed
) -> None:
    """The server's answer to the listener's question arrives up to its last message (the
    one saying the server is ready again): the listener waits no longer than for a silent
    server, and the rest of the process is not held meanwhile."""
    ticks: list[float] = []
    ticking = threading.Event()

    def tick() -> None:
        while not ticking.wait(0.05):
            ticks.append(time.monotonic())

    ticker = threading.Thread(target=tick)
    ticker.start()
    try:
        relayed.relay.hold_ready()
        relayed.listening_again()
        relayed.heard.send(postgres, "west")
        assert relayed.heard.arrived.wait(5)
    finally:
        ticking.set()
        ticker.join()

    assert relayed.heard.payloads == [None, None, "west"]
    assert max(b - a for a, b in itertools.pairwise(ticks)) < 0.4
