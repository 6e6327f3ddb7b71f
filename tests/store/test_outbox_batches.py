"""How a sync run reads the outbox (`next_due`: the next batches and the urgent items in one
statement) and records a batch's outcomes with the send marks of the next (on PostgreSQL in one
statement, with a statement per kind of change when an item is named twice)."""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from adapter.runtime import Runtime
from adapter.store.engine import make_engine
from adapter.store.outbox import Outbox, Outcome, Pending, Queued, enqueue, urgent_queued
from adapter.store.tables import fhir_resources, sync_outbox

NOW = datetime(2026, 11, 26, 8, 0, tzinfo=UTC)
LATER = NOW + timedelta(minutes=1)


def _stored(runtime: Runtime, *queued: Queued) -> None:
    """Resources stored and queued as the mapping does, each with a content of its own."""
    with runtime.store.engine.begin() as connection:
        connection.execute(
            insert(fhir_resources),
            [
                {
                    "id": q.resource_id,
                    "resource_type": q.resource_type,
                    "version_id": q.version,
                    "last_updated": NOW,
                    "content_hash": q.resource_id,
                    "content": f'{{"id": "{q.resource_id}"}}',
                    "source_type": "vitals",
                    "source_id": f"V-{q.resource_id}",
                    "site": q.site,
                }
                for q in queued
            ],
        )
        enqueue(connection, queued, NOW)


def _backlog_and_urgent(runtime: Runtime, site: str | None = None) -> None:
    """Four items of a backlog, and three urgent ones received a minute apart (u3 last): in
    delivery order, the latter come last."""
    _stored(
        runtime,
        *(Queued(f"o{n}", "Observation", 1, "Observation", site=site) for n in range(1, 5)),
        *(
            Queued(
                f"u{n}", "Observation", 1, "Observation", True, NOW - timedelta(minutes=4 - n), site
            )
            for n in range(1, 4)
        ),
    )


def _ids(pending: Sequence[Pending]) -> list[str]:
    return [p.item.resource_id for p in pending]


def test_next_due_reads_the_urgent_latest_received_first_passing_over_those_named(
    runtime: Runtime,
) -> None:
    _backlog_and_urgent(runtime)
    outbox = Outbox(runtime.store.engine)

    urgent, following = outbox.next_due(NOW, None, 10, passed={"u2"})

    assert sorted(_ids(urgent)) == ["u1", "u3"]
    assert {p.item.resource_id: p.content for p in urgent}["u3"] == '{"id": "u3"}'
    assert _ids(following) == ["o1", "o2", "o3", "o4", "u1", "u2", "u3"]
    assert following[0].content == '{"id": "o1"}'
    # Fewer urgent items due than the limit: the latest received are read.
    urgent, following = outbox.next_due(NOW, following[1].item.key, 1, passed=())
    assert (_ids(urgent), _ids(following)) == (["u3"], ["o3"])
    assert sorted(_ids(outbox.next_due(NOW, None, 2, passed=())[0])) == ["u2", "u3"]
    assert _ids(outbox.urgent_due(NOW, 1, {"u3"})) == ["u2"]


def test_next_due_reads_each_item_once_across_a_runs_calls(runtime: Runtime) -> None:
    _backlog_and_urgent(runtime)
    outbox = Outbox(runtime.store.engine)
    taken: set[str] = set()
    position: tuple[int, str] | None = None
    read_urgent: list[set[str]] = []
    read_in_order: list[str] = []

    for _ in range(20):
        urgent, following = outbox.next_due(NOW, position, 2, taken)
        if not urgent and not following:
            break
        read_urgent.append(set(_ids(urgent)))
        read_in_order += _ids(following)
        taken.update(_ids(urgent) + _ids(following))
        if following:
            position = following[-1].item.key

    # The latest received first (two a call), each once.
    assert read_urgent[:2] == [{"u2", "u3"}, {"u1"}] and not any(read_urgent[2:])
    assert read_in_order == ["o1", "o2", "o3", "o4", "u1", "u2", "u3"]
    assert outbox.next_due(NOW, position, 2, taken) == ([], [])


def test_a_sites_outbox_reads_its_own_sites_items_alone(runtime: Runtime) -> None:
    _stored(
        runtime,
        Queued("n-1", "Observation", 1, "Observation", site="north"),
        Queued("n-2", "AdverseEvent", 1, "AdverseEvent", True, site="north"),
        Queued("s-1", "Observation", 1, "Observation", site="south"),
        Queued("s-2", "AdverseEvent", 1, "AdverseEvent", True, site="south"),
    )

    for site in ("north", "south"):
        outbox = Outbox(runtime.store.engine, site)
        urgent, following = outbox.next_due(NOW, None, 10, passed=())
        prefix = site[0]
        assert _ids(urgent) == [f"{prefix}-2"]
        assert sorted(_ids(following)) == [f"{prefix}-1", f"{prefix}-2"]
        assert _ids(outbox.urgent_due(NOW, 10, ())) == [f"{prefix}-2"]
    urgent, following = Outbox(runtime.store.engine).next_due(NOW, None, 10, passed=())
    assert sorted(_ids(urgent)) == ["n-2", "s-2"]
    assert len(following) == 4


def test_queuing_an_urgent_resource_wakes_the_runs_of_its_own_site_alone(
    runtime: Runtime,
) -> None:
    for site in ("north", "south", None):
        urgent_queued(site).clear()

    _stored(runtime, Queued("n-1", "Observation", 1, "Observation", site="north"))
    assert not any(urgent_queued(site).is_set() for site in ("north", "south", None))
    _stored(runtime, Queued("n-2", "AdverseEvent", 1, "AdverseEvent", True, site="north"))
    assert urgent_queued("north").is_set()
    assert not urgent_queued("south").is_set() and not urgent_queued(None).is_set()
    urgent_queued("north").clear()


PARTIAL = {"reason": "delivered without its references", "left_out": ["partOf"]}


def _outcomes(suffix: str) -> list[Outcome]:
    return [
        Outcome(f"a{suffix}", 1, "delivered", LATER, ehr_id="ehr-a", ehr_version="1"),
        Outcome(f"b{suffix}", 1, "pending", LATER, {"reason": "busy", "status": 503}),
        Outcome(f"c{suffix}", 1, "pending", LATER, PARTIAL, "ehr-c", "3", attempted=False),
        Outcome(f"d{suffix}", 1, "delivered", LATER, ehr_id="ehr-d", ehr_version="1"),
        Outcome(f"f{suffix}", 1, "dead", LATER, {"reason": "refused", "status": 422}),
        Outcome(f"g{suffix}", 1, "delivered", LATER, PARTIAL, "ehr-g", "2", requested_at=NOW),
    ]


def _rows(outbox: Outbox, suffix: str) -> dict[str, Any]:
    """Each item's row and journey, keyed by its name without the suffix."""
    ids = [f"{x}{suffix}" for x in "abcdefg"]
    items, journeys = outbox.items(ids), outbox.journeys(ids)
    return {i[0]: (items[i]._replace(resource_id=i[0]), journeys[i]) for i in ids}


def _statements_counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The outcomes of each recording made in one statement, listed as they are made."""
    at_once: list[int] = []
    one_statement = Outbox._record_at_once

    def counted(self: Outbox, *args: Any) -> None:
        at_once.append(len(args[0]))
        one_statement(self, *args)

    monkeypatch.setattr(Outbox, "_record_at_once", counted)
    return at_once


def test_outcomes_recorded_in_one_statement_or_one_per_kind_leave_the_same_rows(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The two ways of recording outcomes (one statement on PostgreSQL, a statement per kind
    of outcome) leave the same rows."""
    outbox = Outbox(runtime.store.engine)
    names = [f"{x}{suffix}" for suffix in "12" for x in "abcdefg"]
    with runtime.store.engine.begin() as connection:
        enqueue(connection, [(n, "Observation", 1, "Observation") for n in names], NOW)
        # A version stored while the first was in flight.
        enqueue(connection, [("d1", "Observation", 2, "Observation")], NOW)
        enqueue(connection, [("d2", "Observation", 2, "Observation")], NOW)
    outbox.mark_sent(["b1", "b2"], NOW - timedelta(minutes=5))
    outbox.mark_sent(["e1", "e2"], LATER)
    at_once = _statements_counted(monkeypatch)

    outbox.record(_outcomes("1"), LATER)
    outbox._record_per_kind(_outcomes("2"), LATER)

    postgres = runtime.store.engine.dialect.name == "postgresql"
    assert at_once == ([6] if postgres else [])
    first, second = _rows(outbox, "1"), _rows(outbox, "2")
    assert first == second
    a, b, c, d, e, f, g = (first[x][0] for x in "abcdefg")
    assert (a.state, a.delivered_version, a.ehr_id, a.sent_at) == ("delivered", 1, "ehr-a", None)
    assert (b.state, b.attempts, b.sent_at) == ("pending", 1, NOW - timedelta(minutes=5))
    assert (c.state, c.attempts, c.ehr_id, c.ehr_version, c.detail) == (
        "pending",
        0,
        "ehr-c",
        "3",
        PARTIAL,
    )
    assert (d.state, d.version_id, d.delivered_version, d.ehr_id) == ("pending", 2, None, "ehr-d")
    assert (e.state, e.sent_at) == ("pending", LATER)
    assert (f.state, f.attempts, f.detail) == ("dead", 1, {"reason": "refused", "status": 422})
    assert (g.state, g.ehr_id, g.delivered_version) == ("delivered", "ehr-g", 1)
    assert first["g"][1]["sent"] == NOW.isoformat()
    assert first["g"][1]["answered"] == LATER.isoformat()
    assert first["c"][1]["answered"] == LATER.isoformat()
    assert first["a"][1]["answered"] == LATER.isoformat()
    assert first["b"][1]["answered"] is None


def test_outcomes_naming_an_item_twice_are_recorded_one_after_the_other(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One statement must not change a row twice: outcomes that name an item twice go the
    per-kind way on PostgreSQL too, each applied in turn (the delivery keeps the EHR's id, the
    refusal counts an attempt)."""
    outbox = Outbox(runtime.store.engine)
    with runtime.store.engine.begin() as connection:
        enqueue(connection, [("x", "Observation", 1, "Observation")], NOW)
    at_once = _statements_counted(monkeypatch)

    outbox.record(
        [
            Outcome("x", 1, "pending", LATER, {"reason": "busy", "status": 503}),
            Outcome("x", 1, "delivered", LATER, ehr_id="ehr-x", ehr_version="1"),
        ],
        LATER,
    )

    x = outbox.items(["x"])["x"]
    assert at_once == []
    assert (x.ehr_id, x.ehr_version, x.attempts) == ("ehr-x", "1", 1)


def test_the_send_marks_are_committed_when_mark_sent_returns(runtime: Runtime) -> None:
    """The creates of the next batches are noted before they are sent: a process killed once
    `mark_sent` has returned (here: the store read from another engine, as by the next run)
    leaves the marks, which make the next run look for copies in the EHR. A mark already
    made stays as it was."""
    outbox = Outbox(runtime.store.engine)
    with runtime.store.engine.begin() as connection:
        enqueue(connection, [(n, "Observation", 1, "Observation") for n in "abc"], NOW)
    outbox.mark_sent(["a"], NOW)

    outbox.mark_sent(["a", "b"], LATER)

    other = make_engine(runtime.settings.database_url)
    try:
        with other.connect() as connection:
            query = select(sync_outbox.c.resource_id, sync_outbox.c.sent_at)
            marks = {row.resource_id: row.sent_at for row in connection.execute(query)}
    finally:
        other.dispose()
    assert marks == {"a": NOW, "b": LATER, "c": None}
