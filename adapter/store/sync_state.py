"""What the sync keeps beside the outbox: its runs, its lease, the EHR's patients by MRN."""

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, or_, select, true, update
from sqlalchemy.dialects import postgresql, sqlite

from adapter.site_keys import site_key, source_of_key
from adapter.store.tables import sync_leases as leases
from adapter.store.tables import sync_outbox as outbox
from adapter.store.tables import sync_patient_confirmations as confirmations
from adapter.store.tables import sync_patients as patients
from adapter.store.tables import sync_runs as runs


@dataclass(frozen=True)
class SyncRun:
    id: int
    trigger: str
    holder: str
    status: str
    started_at: datetime
    ended_at: datetime | None
    counts: dict[str, int]
    error: str | None
    last_error: str | None = None
    """The last reason an item of the run was not delivered (retried later, held, refused)."""
    site: str | None = None
    """The clinic site of a group whose EHR the run synced with; None: the deployment's one EHR."""

    @property
    def problem(self) -> str | None:
        """What went wrong in the run: why it stopped, else the last item's reason."""
        return self.error or self.last_error


@dataclass(frozen=True)
class PatientConfirmation:
    """An admin's word that the EHR's Patient `ehr_id` is the patient of the MRN although
    `differs` (its family name, its birth date) disagrees with the clinic's records."""

    mrn: str
    ehr_id: str
    differs: list[str]
    confirmed_by: str
    confirmed_at: datetime


@dataclass(frozen=True)
class PatientMatch:
    """The EHR's Patient for an MRN: `matched` with its id, or `not-found`/`ambiguous`."""

    mrn: str
    state: str
    ehr_id: str | None
    detail: dict[str, Any]
    checked_at: datetime


class SyncRuns:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def start(self, trigger: str, holder: str, now: datetime, site: str | None = None) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(
                runs.insert().values(
                    trigger=trigger,
                    holder=holder,
                    status="running",
                    started_at=now,
                    counts="{}",
                    site=site,
                )
            )
            return int(result.inserted_primary_key[0])  # type: ignore[index]

    def finish(
        self, run_id: int, status: str, counts: dict[str, int], error: str | None, now: datetime
    ) -> None:
        with self.engine.begin() as connection:
            started, site = connection.execute(
                select(runs.c.started_at, runs.c.site).where(runs.c.id == run_id)
            ).one()
            connection.execute(
                update(runs)
                .where(runs.c.id == run_id)
                .values(
                    status=status,
                    counts=orjson.dumps(counts).decode(),
                    error=error,
                    last_error=_last_problem(connection, started, site),
                    ended_at=now,
                )
            )

    def recent(self, limit: int, before: int | None = None) -> list[SyncRun]:
        query = select(runs).order_by(runs.c.id.desc()).limit(limit)
        if before is not None:
            query = query.where(runs.c.id < before)
        with self.engine.connect() as connection:
            return [
                SyncRun(
                    row.id,
                    row.trigger,
                    row.holder,
                    row.status,
                    row.started_at,
                    row.ended_at,
                    orjson.loads(row.counts),
                    row.error,
                    row.last_error,
                    row.site,
                )
                for row in connection.execute(query)
            ]


def _last_problem(connection: Connection, since: datetime, site: str | None) -> str | None:
    """The reason of the outbox item last left undelivered since `since` (a run's start): what
    a run that completed still could not do, read from the outbox the run wrote (in a clinic
    group, its site's items alone: another site's run writes the others meanwhile). A resource
    delivered without some references (`left_out`, to be completed) is no problem."""
    rows = connection.execute(
        select(outbox.c.detail)
        .where(
            outbox.c.updated_at >= since,
            outbox.c.state.in_(("pending", "waiting", "dead")),
            outbox.c.detail.is_not(None),
            true() if site is None else outbox.c.site == site,
        )
        .order_by(outbox.c.updated_at.desc())
        .limit(50)
    )
    for row in rows:
        detail = orjson.loads(row.detail)
        if detail.get("reason") and "left_out" not in detail:
            return str(detail["reason"])
    return None


class Lease:
    """A named lease in the store: one holder at a time, until it expires or is released. The
    row is taken with SELECT ... FOR UPDATE SKIP LOCKED on PostgreSQL, so that two processes
    asking at once do not wait on each other; a holder that dies loses it when it expires."""

    def __init__(self, engine: Engine, name: str, holder: str, ttl: timedelta) -> None:
        self.engine = engine
        self.name = name
        self.holder = holder
        self.ttl = ttl
        self.renewed_at: datetime | None = None

    def acquire(self, now: datetime) -> bool:
        with self.engine.begin() as connection:
            query = (
                select(leases.c.holder, leases.c.expires_at)
                .where(leases.c.name == self.name)
                .with_for_update(skip_locked=True)
            )
            row = connection.execute(query).one_or_none()
            if row is None and self._created(connection):
                row = connection.execute(query).one_or_none()
            if row is None:
                return False
            if row.holder not in (None, self.holder) and row.expires_at and row.expires_at > now:
                return False
            taken = connection.execute(
                update(leases)
                .where(
                    leases.c.name == self.name,
                    or_(
                        leases.c.holder.is_(None),
                        leases.c.holder == self.holder,
                        leases.c.expires_at.is_(None),
                        leases.c.expires_at <= now,
                    ),
                )
                .values(holder=self.holder, expires_at=now + self.ttl)
            )
            self.renewed_at = now if taken.rowcount == 1 else None
            return taken.rowcount == 1

    def _created(self, connection: Connection) -> bool:
        """Make the lease's row where there is none yet (the sync of a site added to a group):
        True when this call made it."""
        dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
        statement = dialect.insert(leases).values(name=self.name).on_conflict_do_nothing()
        return bool(connection.execute(statement).rowcount)

    def renew(self, now: datetime) -> bool:
        """Extend the lease; False when it was lost (expired and taken by another holder).
        Within a quarter of its time since the last extension it cannot have expired, so the
        store is not asked (a run renews before every batch)."""
        if self.renewed_at is not None and now - self.renewed_at < self.ttl / 4:
            return True
        with self.engine.begin() as connection:
            result = connection.execute(
                update(leases)
                .where(leases.c.name == self.name, leases.c.holder == self.holder)
                .values(expires_at=now + self.ttl)
            )
        self.renewed_at = now if result.rowcount == 1 else None
        return result.rowcount == 1

    def release(self) -> None:
        self.renewed_at = None
        with self.engine.begin() as connection:
            connection.execute(
                update(leases)
                .where(leases.c.name == self.name, leases.c.holder == self.holder)
                .values(holder=None, expires_at=None)
            )


class PatientMatches:
    """The EHR's Patient of each MRN, as last resolved. A site of a group keeps its own (its
    EHR, its MRNs): stored under `site:mrn` (adapter/site_keys.py)."""

    def __init__(self, engine: Engine, site: str | None = None) -> None:
        self.engine = engine
        self.site = site

    def _key(self, mrn: str) -> str:
        return site_key(self.site, mrn)

    def get(self, mrns: Iterable[str]) -> dict[str, PatientMatch]:
        wanted = sorted({self._key(mrn) for mrn in mrns})
        found: dict[str, PatientMatch] = {}
        if not wanted:
            return found
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                query = select(patients).where(patients.c.mrn.in_(wanted[start : start + 500]))
                for row in connection.execute(query):
                    mrn = source_of_key(row.mrn) if self.site else row.mrn
                    found[mrn] = PatientMatch(
                        mrn,
                        row.state,
                        row.ehr_id,
                        orjson.loads(row.detail or "{}"),
                        row.checked_at,
                    )
        return found

    def forget(self, mrns: Iterable[str]) -> int:
        """Drop the cached matches of these MRNs: the next run asks the EHR again (a replay
        after the patient was corrected there)."""
        wanted = sorted({self._key(mrn) for mrn in mrns})
        with self.engine.begin() as connection:
            result = connection.execute(patients.delete().where(patients.c.mrn.in_(wanted)))
        return int(result.rowcount or 0)

    def put(self, matches: Iterable[PatientMatch]) -> None:
        rows = [
            {
                "mrn": self._key(m.mrn),
                "state": m.state,
                "ehr_id": m.ehr_id,
                "detail": orjson.dumps(m.detail).decode(),
                "checked_at": m.checked_at,
            }
            for m in matches
        ]
        if not rows:
            return
        with self.engine.begin() as connection:
            dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
            statement = dialect.insert(patients)
            statement = statement.on_conflict_do_update(
                index_elements=[patients.c.mrn],
                set_={
                    column: statement.excluded[column]
                    for column in ("state", "ehr_id", "detail", "checked_at")
                },
            )
            connection.execute(statement, rows)

    def confirmations(self, mrns: Iterable[str]) -> dict[str, PatientConfirmation]:
        """The confirmed EHR Patients of these MRNs."""
        wanted = sorted({self._key(mrn) for mrn in mrns})
        found: dict[str, PatientConfirmation] = {}
        if not wanted:
            return found
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                chunk = wanted[start : start + 500]
                query = select(confirmations).where(confirmations.c.mrn.in_(chunk))
                for row in connection.execute(query):
                    mrn = source_of_key(row.mrn) if self.site else row.mrn
                    found[mrn] = PatientConfirmation(
                        mrn,
                        row.ehr_id,
                        orjson.loads(row.differs),
                        row.confirmed_by,
                        row.confirmed_at,
                    )
        return found

    def confirm(self, confirmation: PatientConfirmation) -> None:
        """Keep the confirmation, in place of an earlier one of the MRN."""
        row = {
            "mrn": self._key(confirmation.mrn),
            "ehr_id": confirmation.ehr_id,
            "differs": orjson.dumps(confirmation.differs).decode(),
            "confirmed_by": confirmation.confirmed_by,
            "confirmed_at": confirmation.confirmed_at,
        }
        with self.engine.begin() as connection:
            connection.execute(confirmations.delete().where(confirmations.c.mrn == row["mrn"]))
            connection.execute(confirmations.insert().values(**row))

    def withdraw(self, mrn: str) -> bool:
        """Drop the MRN's confirmation: its records are checked by name and birth date again."""
        with self.engine.begin() as connection:
            result = connection.execute(
                confirmations.delete().where(confirmations.c.mrn == self._key(mrn))
            )
        return bool(result.rowcount)
