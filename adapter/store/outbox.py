"""The sync's outbox: the version of each resource the EHR should hold, and how far it got."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, and_, bindparam, func, literal, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite

from adapter.store.tables import fhir_resources as resources
from adapter.store.tables import sync_outbox as outbox

DELIVERY_RANK = {"Procedure": 0, "MedicationAdministration": 1, "AdverseEvent": 2, "Observation": 3}
"""Resources that others reference go to the EHR first: sessions, then what points at them."""
OTHER_RANK = 9
DUE_STATES = ("pending",)
"""One state, so that the queue index walks the due items in delivery order; waiting items
become pending at the start of each run (`wake_waiting`)."""
STATES = ("pending", "waiting", "delivered", "dead", "skipped")


@dataclass(frozen=True)
class OutboxItem:
    resource_id: str
    resource_type: str
    rank: int
    version_id: int
    state: str
    attempts: int
    next_attempt_at: datetime
    detail: dict[str, Any] | None
    ehr_id: str | None
    ehr_version: str | None
    delivered_version: int | None
    updated_at: datetime
    sent_at: datetime | None
    """When a create of this resource was first sent to the EHR (None: never): only a resource
    sent before, with no EHR id known, can have a copy in the EHR that the sync did not hear of."""

    @property
    def key(self) -> tuple[int, str]:
        return (self.rank, self.resource_id)


@dataclass(frozen=True)
class Pending:
    """A resource version to deliver, with the stored JSON and the record it came from."""

    item: OutboxItem
    content: str
    source_type: str
    source_id: str


@dataclass(frozen=True)
class Outcome:
    """What happened to one delivery attempt. `state` is the item's next state."""

    resource_id: str
    version_id: int
    state: str
    next_attempt_at: datetime
    detail: dict[str, Any] | None = None
    ehr_id: str | None = None
    ehr_version: str | None = None
    attempted: bool = True


_COLUMNS = (
    outbox.c.resource_id,
    outbox.c.resource_type,
    outbox.c.rank,
    outbox.c.version_id,
    outbox.c.state,
    outbox.c.attempts,
    outbox.c.next_attempt_at,
    outbox.c.detail,
    outbox.c.ehr_id,
    outbox.c.ehr_version,
    outbox.c.delivered_version,
    outbox.c.updated_at,
    outbox.c.sent_at,
)


def _item(row: Any) -> OutboxItem:
    values = list(row)
    values[7] = orjson.loads(values[7]) if values[7] else None
    return OutboxItem(*values)


def enqueue(
    connection: Connection, versions: Sequence[tuple[str, str, int]], now: datetime
) -> None:
    """Queue new resource versions (id, type, version) in the caller's transaction: whatever
    state a resource's delivery was in, its new version is pending."""
    if not versions:
        return
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(outbox)
    statement = statement.on_conflict_do_update(
        index_elements=[outbox.c.resource_id],
        set_={
            "version_id": statement.excluded.version_id,
            "state": "pending",
            "attempts": 0,
            "next_attempt_at": statement.excluded.next_attempt_at,
            "detail": None,
            "updated_at": statement.excluded.updated_at,
        },
    )
    connection.execute(
        statement,
        [
            {
                "resource_id": resource_id,
                "resource_type": resource_type,
                "rank": DELIVERY_RANK.get(resource_type, OTHER_RANK),
                "version_id": version,
                "state": "pending",
                "attempts": 0,
                "next_attempt_at": now,
                "updated_at": now,
            }
            for resource_id, resource_type, version in versions
        ],
    )


def _mark_sent(connection: Connection, ids: Sequence[str], now: datetime) -> None:
    connection.execute(
        update(outbox)
        .where(outbox.c.resource_id.in_(list(ids)), outbox.c.sent_at.is_(None))
        .values(sent_at=now)
    )


class Outbox:
    """Reads and moves the outbox's items; every move names the version it was made for, so a
    version stored meanwhile is never marked delivered by the delivery of an older one."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def due(
        self,
        now: datetime,
        after: tuple[int, str] | None,
        limit: int,
        ids: Sequence[str] | None = None,
    ) -> list[Pending]:
        """The next due items in delivery order, after the key `after` (of those named, when
        `ids` is given), with their content."""
        where = [outbox.c.state.in_(DUE_STATES), outbox.c.next_attempt_at <= now]
        if ids is not None:
            where.append(outbox.c.resource_id.in_(list(ids)))
        return self._with_content(where, after, limit)

    def delivered(self, after: tuple[int, str] | None, limit: int) -> list[Pending]:
        """Delivered items in delivery order, with their content: what reconciliation checks."""
        return self._with_content([outbox.c.state == "delivered"], after, limit)

    def _with_content(
        self, where: list[Any], after: tuple[int, str] | None, limit: int
    ) -> list[Pending]:
        query = (
            select(*_COLUMNS, resources.c.content, resources.c.source_type, resources.c.source_id)
            .join(resources, resources.c.id == outbox.c.resource_id)
            .where(*where)
            .order_by(outbox.c.rank, outbox.c.resource_id)
            .limit(limit)
        )
        if after is not None:
            key = tuple_(literal(after[0]), literal(after[1]))
            query = query.where(tuple_(outbox.c.rank, outbox.c.resource_id) > key)
        with self.engine.connect() as connection:
            rows = connection.execute(query).all()
        width = len(_COLUMNS)
        return [Pending(_item(row[:width]), *row[width:]) for row in rows]

    def items(self, ids: Iterable[str]) -> dict[str, OutboxItem]:
        wanted = sorted(set(ids))
        found: dict[str, OutboxItem] = {}
        with self.engine.connect() as connection:
            for start in range(0, len(wanted), 500):
                query = select(*_COLUMNS).where(
                    outbox.c.resource_id.in_(wanted[start : start + 500])
                )
                for row in connection.execute(query):
                    found[row.resource_id] = _item(row)
        return found

    def mark_sent(self, ids: Sequence[str], now: datetime) -> None:
        """Note, before a create is sent, that it may reach the EHR: committed first, so that a
        process killed before it hears the answer leaves the mark for the next run."""
        if ids:
            with self.engine.begin() as connection:
                _mark_sent(connection, ids, now)

    def record(
        self, outcomes: Sequence[Outcome], now: datetime, will_send: Sequence[str] = ()
    ) -> None:
        """Store the outcomes of delivery attempts. The EHR's id is kept whatever the version
        (it names the EHR's copy); the state moves only if the version is still the one sent.
        `will_send`: the creates of the next batch, noted (`sent_at`) in the same transaction,
        which commits before that batch is sent."""
        if not outcomes and not will_send:
            return
        with self.engine.begin() as connection:
            if will_send:
                _mark_sent(connection, will_send, now)
            if not outcomes:
                return
            known = [o for o in outcomes if o.ehr_id is not None]
            if known:
                connection.execute(
                    update(outbox)
                    .where(outbox.c.resource_id == bindparam("key"))
                    .values(ehr_id=bindparam("new_ehr_id"), ehr_version=bindparam("new_version")),
                    [
                        {"key": o.resource_id, "new_ehr_id": o.ehr_id, "new_version": o.ehr_version}
                        for o in known
                    ],
                )
            connection.execute(
                update(outbox)
                .where(
                    and_(
                        outbox.c.resource_id == bindparam("key"),
                        outbox.c.version_id == bindparam("sent_version"),
                    )
                )
                .values(
                    state=bindparam("new_state"),
                    attempts=outbox.c.attempts + bindparam("tried"),
                    next_attempt_at=bindparam("new_next"),
                    detail=bindparam("new_detail"),
                    delivered_version=bindparam("new_delivered"),
                    updated_at=now,
                ),
                [
                    {
                        "key": o.resource_id,
                        "sent_version": o.version_id,
                        "new_state": o.state,
                        "tried": 0 if o.state == "delivered" or not o.attempted else 1,
                        "new_next": o.next_attempt_at,
                        "new_detail": orjson.dumps(o.detail).decode() if o.detail else None,
                        "new_delivered": o.version_id if o.state == "delivered" else None,
                    }
                    for o in outcomes
                ],
            )

    def listed(
        self, states: Sequence[str], limit: int, after: str | None = None
    ) -> list[OutboxItem]:
        query = (
            select(*_COLUMNS)
            .where(outbox.c.state.in_(states))
            .order_by(outbox.c.resource_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(outbox.c.resource_id > after)
        with self.engine.connect() as connection:
            return [_item(row) for row in connection.execute(query)]

    def wake_waiting(self, now: datetime) -> int:
        """Waiting items (patient not settled, reference not delivered) are tried on every run."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(outbox)
                .where(outbox.c.state == "waiting")
                .values(state="pending", next_attempt_at=now)
            )
            return int(result.rowcount or 0)

    def count_due(self, now: datetime, waiting: bool = False) -> int:
        """Items a run would try now (with `waiting`: the waiting ones too, as a run wakes them)."""
        states = (*DUE_STATES, "waiting") if waiting else DUE_STATES
        query = select(func.count()).where(
            outbox.c.state.in_(states), outbox.c.next_attempt_at <= now
        )
        with self.engine.connect() as connection:
            return int(connection.execute(query).scalar_one())

    def counts(self) -> dict[str, int]:
        query = select(outbox.c.state, func.count()).group_by(outbox.c.state)
        with self.engine.connect() as connection:
            found = {state: count for state, count in connection.execute(query)}
        return {state: found.get(state, 0) for state in STATES}

    def requeue(
        self,
        now: datetime,
        states: Sequence[str],
        ids: Sequence[str] | None = None,
        resource_types: Sequence[str] | None = None,
    ) -> int:
        """Make items in `states` (all of them, or those named, or those of some types) due
        now, their attempts reset: a replay after the cause is fixed."""
        statement = (
            update(outbox)
            .where(outbox.c.state.in_(states))
            .values(state="pending", attempts=0, next_attempt_at=now, updated_at=now)
        )
        if resource_types is not None:
            statement = statement.where(outbox.c.resource_type.in_(resource_types))
        with self.engine.begin() as connection:
            if ids is None:
                return connection.execute(statement).rowcount
            total = 0
            for start in range(0, len(ids), 500):
                chunk = statement.where(outbox.c.resource_id.in_(ids[start : start + 500]))
                total += connection.execute(chunk).rowcount
            return total

    def resend(self, now: datetime, ids: Sequence[str], detail: dict[str, Any]) -> int:
        """Queue delivered items again (reconciliation found the EHR's copy missing or
        different); a copy that is missing loses its EHR id so that it is created again."""
        total = 0
        with self.engine.begin() as connection:
            for start in range(0, len(ids), 500):
                total += connection.execute(
                    update(outbox)
                    .where(outbox.c.resource_id.in_(ids[start : start + 500]))
                    .values(
                        state="pending",
                        attempts=0,
                        next_attempt_at=now,
                        detail=orjson.dumps(detail).decode(),
                        updated_at=now,
                    )
                ).rowcount
        return total

    def set_ehr_ids(self, ids: dict[str, tuple[str | None, str | None]]) -> None:
        """Record (or forget, with None) the EHR's id and version of resources: what
        reconciliation found there."""
        if not ids:
            return
        with self.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.resource_id == bindparam("key"))
                .values(ehr_id=bindparam("new_id"), ehr_version=bindparam("new_version")),
                [
                    {"key": key, "new_id": ehr_id, "new_version": version}
                    for key, (ehr_id, version) in ids.items()
                ],
            )
