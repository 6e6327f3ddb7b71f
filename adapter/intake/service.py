"""The intake path shared by the API and the CLI: validate, apply the revision rules, store."""

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as SqlTimeout

from adapter.errors import FieldError, StoreUnavailable
from adapter.intake.validation import IntakeContext, ValidatedRecord, identify, validate_record
from adapter.site_keys import site_key, site_key_or_none
from adapter.store.records import (
    CurrentRevision,
    Key,
    RecordStore,
    RecordWriter,
    RevisionRow,
    WriteConflict,
)

log = logging.getLogger(__name__)

Outcome = Literal["created", "amended", "unchanged", "stale", "rejected"]
ACCEPTED: tuple[Outcome, ...] = ("created", "amended", "unchanged", "stale")
_WRITE_ATTEMPTS = 3


@dataclass
class RecordOutcome:
    """What happened to one received record."""

    index: int
    outcome: Outcome
    record_type: str | None
    id: str | None
    revision: int | None
    status: str | None = None
    errors: list[FieldError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "index": self.index,
            "outcome": self.outcome,
            "record_type": self.record_type,
            "id": self.id,
            "revision": self.revision,
        }
        if self.status:
            body["status"] = self.status
        if self.errors:
            body["errors"] = [error.as_dict() for error in self.errors]
        if self.warnings:
            body["warnings"] = self.warnings
        return body


def record_status(withdrawn: bool) -> str:
    return "entered_in_error" if withdrawn else "active"


def _revision_row(item: ValidatedRecord) -> RevisionRow:
    """The stored row of a record: its ids as store keys, which hold the site of a group."""
    record = item.record
    site = record.clinic_site
    return RevisionRow(
        record_type=record.record_type,
        source_id=site_key(site, record.id),
        revision=record.revision,
        withdrawn=record.withdrawn,
        session_id=site_key_or_none(site, record.linked_session_id),
        content_hash=item.content_hash,
        raw=item.raw,
        parsed=item.parsed,
        series_id=site_key_or_none(site, getattr(record, "series_id", None)),
        mrn=site_key(site, record.patient.mrn),
    )


def _conflict(revision: int) -> FieldError:
    return FieldError(
        "revision",
        f"revision {revision} was already received with different content; "
        "a change needs a higher revision",
    )


class Intake:
    """Accepts batches of raw records; each record is accepted or refused on its own."""

    def __init__(self, store: RecordStore, context: IntakeContext) -> None:
        self.store = store
        self.context = context

    def submit(
        self, items: Sequence[tuple[int, bytes]], sites: frozenset[str] | None = None
    ) -> list[RecordOutcome]:
        """Validate and store a batch; accepted records are committed when this returns.
        `sites`: the sites the sender may write for (None: any)."""
        outcomes: list[RecordOutcome | None] = []
        accepted: list[tuple[int, ValidatedRecord]] = []
        for position, (index, raw) in enumerate(items):
            result = validate_record(raw, self.context, sites)
            if isinstance(result, list):
                record_type, source_id, revision = identify(raw)
                outcomes.append(
                    RecordOutcome(
                        index, "rejected", record_type, source_id, revision, errors=result
                    )
                )
            else:
                outcomes.append(None)
                accepted.append((position, result))
        if accepted:
            for position, outcome in self._store(accepted, [index for index, _ in items]):
                outcomes[position] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _store(
        self, accepted: list[tuple[int, ValidatedRecord]], indexes: list[int]
    ) -> list[tuple[int, RecordOutcome]]:
        for attempt in range(1, _WRITE_ATTEMPTS + 1):
            try:
                with self.store.writer() as writer:
                    return self._apply(writer, accepted, indexes)
            except WriteConflict:
                # Another writer stored one of these records first: read again and redo the batch.
                log.warning("intake batch raced another writer (attempt %d); retrying", attempt)
                if attempt == _WRITE_ATTEMPTS:
                    raise StoreUnavailable(
                        "the store is busy with concurrent writes; retry"
                    ) from None
            except OperationalError as exc:
                log.error("store unavailable during intake: %s", type(exc.orig).__name__)
                raise StoreUnavailable(
                    "the store is unavailable; nothing was stored, retry"
                ) from None
            except (TimeoutError, SqlTimeout):
                # No turn to write, or no pooled connection, in time: many writers at once.
                log.warning("intake found the store busy; the request is answered 503")
                raise StoreUnavailable(
                    "the store is busy with other writes; nothing was stored, retry",
                    headers={"Retry-After": "1"},
                ) from None
        raise AssertionError("unreachable")

    def _apply(
        self, writer: RecordWriter, accepted: list[tuple[int, ValidatedRecord]], indexes: list[int]
    ) -> list[tuple[int, RecordOutcome]]:
        state: dict[Key, CurrentRevision] = writer.current(item.key for _, item in accepted)
        previous = dict(state)
        new_revisions: list[RevisionRow] = []
        created: dict[Key, RevisionRow] = {}
        amended: dict[Key, RevisionRow] = {}
        batch_revisions: dict[tuple[str, str, int], str] = {}
        results: list[tuple[int, RecordOutcome]] = []
        for position, item in accepted:
            record, key = item.record, item.key
            outcome = RecordOutcome(
                indexes[position],
                "created",
                record.record_type,
                record.id,
                record.revision,
                warnings=item.warnings,
            )
            current = state.get(key)
            row = _revision_row(item)
            if current is None or record.revision > current.revision:
                new_revisions.append(row)
                batch_revisions[(*key, record.revision)] = item.content_hash
                if current is None or key in created:
                    outcome.outcome = "created" if current is None else "amended"
                    created[key] = row
                else:
                    outcome.outcome = "amended"
                    amended[key] = row
                state[key] = CurrentRevision(record.revision, item.content_hash)
                outcome.status = record_status(record.withdrawn)
            elif record.revision == current.revision:
                if item.content_hash == current.content_hash:
                    outcome.outcome = "unchanged"
                else:
                    outcome.outcome, outcome.errors, outcome.warnings = (
                        "rejected",
                        [_conflict(record.revision)],
                        [],
                    )
            else:
                stored = batch_revisions.get(
                    (*key, record.revision)
                ) or writer.stored_revision_hash(key, record.revision)
                if stored is None:
                    # An older revision arriving late is kept in the history, never applied.
                    new_revisions.append(row)
                    batch_revisions[(*key, record.revision)] = item.content_hash
                    outcome.outcome = "stale"
                elif stored == item.content_hash:
                    outcome.outcome = "stale"
                else:
                    outcome.outcome, outcome.errors, outcome.warnings = (
                        "rejected",
                        [_conflict(record.revision)],
                        [],
                    )
            results.append((position, outcome))
        written = [*created.values(), *amended.values()]
        writer.write(
            new_revisions, list(created.values()), list(amended.values()), datetime.now(UTC)
        )
        sessions = {row.source_id for row in written if row.record_type == "infusion_session"}
        if sessions:
            writer.requeue_dependants(sessions)
        left = {
            before.session_id
            for row in amended.values()
            if (before := previous.get((row.record_type, row.source_id))) is not None
            and before.session_id
            and before.session_id != row.session_id
        }
        if left:
            writer.requeue_sessions(left)
        return results
