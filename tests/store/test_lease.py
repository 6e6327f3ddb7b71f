"""The sync lease: one holder at a time; a holder that stops renewing loses it to another, and
notices on its next renewal."""

from datetime import UTC, datetime, timedelta

from adapter.runtime import Runtime
from adapter.store.sync_state import Lease

START = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
TTL = timedelta(seconds=60)


def test_one_holder_at_a_time_and_a_lapsed_lease_changes_hands(runtime: Runtime) -> None:
    engine = runtime.store.engine
    first, second = Lease(engine, "sync", "a", TTL), Lease(engine, "sync", "b", TTL)

    assert first.acquire(START)
    assert not second.acquire(START + timedelta(seconds=30))
    assert first.renew(START + timedelta(seconds=5))  # within a quarter: not asked of the store
    assert first.renew(START + timedelta(seconds=40))  # extended to 100 s
    assert not second.acquire(START + timedelta(seconds=90))
    assert second.acquire(START + timedelta(seconds=101))  # the first stopped renewing
    assert not first.renew(START + timedelta(seconds=102))
    second.release()
    assert first.acquire(START + timedelta(seconds=103))
