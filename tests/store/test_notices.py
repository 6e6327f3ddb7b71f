"""Notices between processes (PostgreSQL): heard as they come, by a listener that sleeps
between them and ends at once when stopped."""

import threading
import time

import pytest

from adapter.runtime import Runtime
from adapter.store import notices
from adapter.store.notices import NoticeListener


@pytest.fixture
def postgres(runtime: Runtime) -> Runtime:
    if runtime.store.engine.dialect.name != "postgresql":
        pytest.skip("notices are PostgreSQL's")
    return runtime


def test_a_notice_is_heard_as_it_comes_and_a_stopped_listener_ends_at_once(
    postgres: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    waits: list[float] = []
    select = notices.select.select

    def counted(*args: object) -> object:
        waits.append(time.monotonic())
        return select(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(notices.select, "select", counted)
    heard: list[str | None] = []
    arrived = threading.Event()

    def hear(payload: str | None) -> None:
        heard.append(payload)
        if payload is not None:
            arrived.set()

    listener = NoticeListener(postgres.store.engine, {notices.OUTBOX: hear})
    listener.start()
    try:
        assert listener.listening.wait(10)
        time.sleep(0.5)
        idle_waits = len(waits)
        sent = time.monotonic()
        with postgres.store.engine.begin() as connection:
            notices.announce(connection, notices.OUTBOX, "north")
        assert arrived.wait(5)
        latency = time.monotonic() - sent
    finally:
        stopping = time.monotonic()
        listener.stop()
        stopped = time.monotonic() - stopping

    assert heard == [None, "north"]  # None: whatever came before it listened, for anyone
    assert latency < 1
    # Half a second idle is one wait, not one every tenth of a second.
    assert idle_waits <= 2
    assert stopped < 1 and not listener.listening.is_set()
