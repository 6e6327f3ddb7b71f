"""Which process runs a scheduled job's tick: the first to claim it, once across processes."""

from datetime import datetime, timedelta

from sqlalchemy import Engine, delete
from sqlalchemy.dialects import postgresql, sqlite

from adapter.store.tables import job_ticks

KEPT = timedelta(hours=1)
"""How long a tick's row is kept: far longer than the delay between the processes' clocks and
schedules, so that no process claims a tick already run."""


class JobTicks:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def claim(self, job: str, slot: datetime, holder: str, now: datetime) -> bool:
        """True for the one caller that claims the job's tick `slot` first; older rows of the
        job are removed on the way."""
        with self.engine.begin() as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            inserted = connection.execute(
                dialect.insert(job_ticks)
                .values(job=job, slot=slot, holder=holder, claimed_at=now)
                .on_conflict_do_nothing(index_elements=[job_ticks.c.job, job_ticks.c.slot])
                .returning(job_ticks.c.holder)
            )
            claimed = inserted.first() is not None
            if claimed:
                connection.execute(
                    delete(job_ticks).where(job_ticks.c.job == job, job_ticks.c.slot < slot - KEPT)
                )
        return claimed

    def holders(self, job: str) -> dict[datetime, str]:
        """The job's recent ticks and the process that ran each (for tests and diagnosis)."""
        with self.engine.connect() as connection:
            rows = connection.execute(
                job_ticks.select().where(job_ticks.c.job == job).order_by(job_ticks.c.slot)
            )
            return {row.slot: row.holder for row in rows}
