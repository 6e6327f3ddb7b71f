"""The version clock: each transaction that writes resource versions takes its turn, and its
lastUpdated, from one row, so that lastUpdated rises in the order the writers commit.

A poller of `_lastUpdated=gt{last seen}` (or `_history?_since=`) sees a prefix of the commits
whatever the number of writers: a writer updates the clock's row first, holds its lock to
commit, and takes a time after the last committed one. A writer that started earlier and has
not committed yet cannot hold a time that a reader has already passed. The same turn gives an
export a transactionTime that no version still to commit can fall behind.
"""

from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, update

from adapter.store.tables import version_clock as clock

TICK = timedelta(microseconds=1)
"""The least step between two turns: the precision of a stored timestamp on both databases."""


def take_turn(connection: Connection, wanted: datetime) -> datetime:
    """Wait for the transaction that holds the clock to end, then hold it until this one ends;
    the moment returned is `wanted`, or one tick after the last turn's if that is not earlier
    (never on a whole second).
    Run it as the transaction's first statement: on SQLite it then takes the write lock before
    the transaction reads anything."""
    last: datetime = connection.execute(
        update(clock)
        .where(clock.c.id == 1)
        .values(turns=clock.c.turns + 1)
        .returning(clock.c.last_updated)
    ).scalar_one()
    moment = max(wanted, last + TICK)
    if moment.microsecond == 0:
        # Written without a fraction, a lastUpdated given back as `_lastUpdated=gt` would be
        # read at the precision of a second, and pass over the rest of that second.
        moment += TICK
    connection.execute(update(clock).where(clock.c.id == 1).values(last_updated=moment))
    return moment


def horizon(engine: Engine, wanted: datetime) -> datetime:
    """A moment that every version at or before it has committed by, and every later version
    will be after: a turn of its own, taken after the writer in flight (if any) commits."""
    with engine.begin() as connection:
        return take_turn(connection, wanted)
