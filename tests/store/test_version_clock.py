"""The version clock: turns rise in commit order, never on a whole second, and a store upgraded
from before the clock starts after its newest version."""

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text

from adapter.store import migrate
from adapter.store.clock import TICK, horizon, take_turn
from adapter.store.engine import make_engine


def test_a_turn_is_after_the_last_one_whatever_the_clock_asked_for(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    now = datetime.now(UTC).replace(microsecond=250_000)

    with engine.begin() as connection:
        first = take_turn(connection, now)
    with engine.begin() as connection:
        earlier = take_turn(connection, now - timedelta(minutes=5))
    later = horizon(engine, now + timedelta(seconds=3))
    engine.dispose()

    assert first == now
    assert earlier == now + TICK
    assert later == now + timedelta(seconds=3)


def test_no_turn_falls_on_a_whole_second(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine)
    second = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)

    taken = horizon(engine, second)
    engine.dispose()

    assert taken == second + TICK


@pytest.mark.empty_store
def test_a_store_upgraded_to_the_clock_starts_after_its_newest_version(database_url: str) -> None:
    engine = make_engine(database_url)
    migrate.upgrade(engine, "0013")
    ahead = datetime.now(UTC) + timedelta(hours=1)
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO fhir_resource_versions (id, version_id, resource_type, "
                "last_updated, content) VALUES ('obs-1', 1, 'Observation', :at, '{}')"
            ),
            {"at": ahead.replace(tzinfo=None) if engine.dialect.name == "sqlite" else ahead},
        )
    migrate.upgrade(engine)

    taken = horizon(engine, datetime.now(UTC))
    engine.dispose()

    assert taken == ahead + TICK or (ahead.microsecond == 999_999 and taken > ahead)
