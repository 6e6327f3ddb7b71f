"""The audit record's chain: each entry carries an HMAC over the previous entry's value and
its own stored fields, keyed from ADAPTER_SECRET_KEY, so that an entry changed, removed or
inserted behind the adapter's back breaks the chain where it happened; `verify` walks it."""

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Engine, select

from adapter.store.tables import audit_chain_head, audit_events

FIELDS = (
    "id",
    "recorded_at",
    "client_id",
    "interaction",
    "method",
    "path",
    "resource_type",
    "resource_ids",
    "query",
    "outcome",
    "address",
)
"""The stored fields an entry's chain value covers."""
PAGE = 1000


def chain_key(secret: str) -> bytes:
    """The key of the chain's HMAC, derived from the service's secret."""
    return hmac.new(secret.encode(), b"audit-chain", hashlib.sha256).digest()


def link(key: bytes, previous: str, row: dict[str, Any]) -> str:
    """The chain value of a stored row: an HMAC over the previous entry's value and the row."""
    fields = {name: row[name] for name in FIELDS}
    moment: datetime = row["recorded_at"]
    fields["recorded_at"] = moment.astimezone(UTC).isoformat(timespec="microseconds")
    body = orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)
    return hmac.new(key, previous.encode() + b"\n" + body, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    """What `verify` found: entries checked, entries older than the chain, and the first
    break (None: the chain holds)."""

    checked: int
    before_chain: int
    last_id: int | None
    problem: str | None


def _rows(engine: Engine, first: int, through: int | None) -> Iterator[dict[str, Any]]:
    after = first - 1
    while True:
        query = select(audit_events).where(audit_events.c.id > after)
        if through is not None:
            query = query.where(audit_events.c.id <= through)
        with engine.connect() as connection:
            page = [
                dict(row._mapping)
                for row in connection.execute(query.order_by(audit_events.c.id).limit(PAGE))
            ]
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1]["id"]


def _chain_before(engine: Engine, first: int) -> str:
    with engine.connect() as connection:
        found = connection.execute(
            select(audit_events.c.chain).where(audit_events.c.id == first - 1)
        ).scalar()
    return found or ""


def verify(engine: Engine, secret: str, first: int = 1, through: int | None = None) -> ChainReport:
    """Walk the chain from entry `first` (trusting the value stored on the entry before it)
    to `through` (or the end, which must be the entry the head names)."""
    key = chain_key(secret)
    previous: str | None = _chain_before(engine, first) if first > 1 else None
    checked = before_chain = 0
    expected: int | None = None
    last_id: int | None = None

    def report(problem: str | None) -> ChainReport:
        return ChainReport(checked, before_chain, last_id, problem)

    for row in _rows(engine, first, through):
        if row["chain"] is None:
            if previous is None:
                before_chain += 1  # written before the chain began (migration 0010)
                continue
            return report(f"entry {row['id']} carries no chain value: written from outside")
        if expected is not None and row["id"] != expected:
            return report(f"entries {expected} to {row['id'] - 1} were removed")
        if link(key, previous or "", row) != row["chain"]:
            return report(
                f"entry {row['id']} was changed, inserted or removed before it (or the "
                "secret is not the one it was written with)"
            )
        previous, expected, last_id = row["chain"], row["id"] + 1, row["id"]
        checked += 1
    if through is None:
        with engine.connect() as connection:
            head = connection.execute(select(audit_chain_head)).one_or_none()
        if head is not None and head.last_chain is not None and head.last_chain != previous:
            return report(
                f"the chain ends at entry {last_id}, but its head names entry {head.last_id}: "
                "entries at the end were removed"
            )
    return report(None)
