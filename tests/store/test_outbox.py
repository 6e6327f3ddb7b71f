"""Outcomes recorded in the outbox: a delivery moves the item only if the version sent is still
the one queued, and the EHR's id is kept whatever the version."""

from datetime import UTC, datetime, timedelta

from adapter.runtime import Runtime
from adapter.store.outbox import Outbox, OutboxItem, Outcome, enqueue

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)


def _queued(runtime: Runtime, *versions: tuple[str, int]) -> Outbox:
    for resource_id, version in versions:
        with runtime.store.engine.begin() as connection:
            enqueue(connection, [(resource_id, "Observation", version, "Observation")], NOW)
    return Outbox(runtime.store.engine)


def _item(outbox: Outbox, resource_id: str) -> OutboxItem:
    return outbox.items([resource_id])[resource_id]


def test_a_delivery_records_the_state_the_version_and_the_ehrs_id(runtime: Runtime) -> None:
    outbox = _queued(runtime, ("a", 1), ("b", 1))
    later = NOW + timedelta(minutes=1)
    outbox.mark_sent(["b"], NOW)

    outbox.record(
        [
            Outcome("a", 1, "delivered", later, ehr_id="ehr-a", ehr_version="1"),
            Outcome("b", 1, "pending", later, {"reason": "busy", "status": 503}),
        ],
        later,
    )

    a, b = _item(outbox, "a"), _item(outbox, "b")
    assert (a.state, a.delivered_version, a.ehr_id, a.ehr_version) == ("delivered", 1, "ehr-a", "1")
    assert (a.detail, a.attempts, a.sent_at) == (None, 0, None)
    assert (b.state, b.attempts, b.ehr_id, b.detail) == (
        "pending",
        1,
        None,
        {"reason": "busy", "status": 503},
    )
    assert b.sent_at == NOW  # the mark made before the send stays


def test_a_version_stored_meanwhile_stays_pending_with_the_ehrs_id(runtime: Runtime) -> None:
    outbox = _queued(runtime, ("a", 1), ("b", 1), ("a", 2), ("b", 2))
    later = NOW + timedelta(minutes=1)
    partial = {"reason": "delivered without its references", "left_out": ["partOf"]}

    outbox.record(
        [
            Outcome("a", 1, "delivered", later, ehr_id="ehr-a", ehr_version="1"),
            Outcome("b", 1, "pending", later, partial, "ehr-b", "3", attempted=False),
        ],
        later,
    )

    a, b = _item(outbox, "a"), _item(outbox, "b")
    assert (a.state, a.version_id, a.delivered_version, a.ehr_id) == ("pending", 2, None, "ehr-a")
    assert (b.state, b.version_id, b.ehr_id, b.ehr_version, b.detail) == (
        "pending",
        2,
        "ehr-b",
        "3",
        None,
    )


def test_any_due_finds_an_item_due_and_agrees_with_the_count(runtime: Runtime) -> None:
    outbox = Outbox(runtime.store.engine)
    assert not outbox.any_due(NOW)

    outbox = _queued(runtime, ("a", 1), ("b", 1))
    later = NOW + timedelta(minutes=1)
    retry = NOW + timedelta(minutes=5)
    outbox.record([Outcome("a", 1, "pending", retry, {"reason": "busy", "status": 503})], later)

    for moment in (NOW, later, retry):
        assert outbox.any_due(moment) == (outbox.count_due(moment) > 0)
    assert outbox.count_due(later) == 1  # b; a waits until its retry
    outbox.record([Outcome("b", 1, "delivered", later, ehr_id="ehr-b", ehr_version="1")], later)
    assert not outbox.any_due(later)
    assert outbox.any_due(retry)
