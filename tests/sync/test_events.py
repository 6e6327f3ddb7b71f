"""The event path: records accepted reach the EHR without waiting for the schedule, a burst's
wakes fold into a few passes, and side effects, protocol breaches and records received during a
backlog go ahead of it."""

import random
import threading
import time
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import func, select

from adapter.mapping.service import MappingReport
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.tables import sync_outbox
from adapter.sync.engine import sync_once
from adapter.wakeups import Wakeup
from adapter.worker import Worker
from benchmarks.synthetic import NURSE, records, session_records
from tests.conftest import EXAMPLE_DAY
from tests.sync.expected import expected_in_ehr
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import in_batches_of
from tests.sync.test_faults import load_synthetic


def example_day() -> list[tuple[int, bytes]]:
    lines = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
    return list(enumerate(lines, start=1))


def test_records_accepted_reach_the_ehr_without_waiting_for_the_schedule(
    runtime: Runtime, ehr: SandboxEhr
) -> None:
    """Mapping and the sync on hour-long intervals: only the events can deliver in time."""
    hourly = runtime.settings.model_copy(
        update={"mapping_interval_seconds": 3600, "sync_interval_seconds": 3600}
    )
    service = Runtime(**{**runtime.__dict__, "settings": hourly})
    worker = Worker(service)
    worker.start()
    try:
        time.sleep(2)  # the schedule's first passes, at start, find nothing
        service.intake.submit(example_day())
        worker.wake()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            # The example day is mapped in one batch: all its resources are stored together.
            expected = sum(expected_in_ehr(runtime).values())
            delivered = runtime.outbox.counts()["delivered"]
            if expected and delivered == expected:
                break
            time.sleep(0.05)
    finally:
        worker.stop()

    assert delivered == expected > 0
    runs = runtime.sync_runs.recent(100)
    assert runs and {run.trigger for run in runs} == {"event"}
    for resource_type, count in expected_in_ehr(runtime).items():
        assert set(ehr.identifier_counts(resource_type).values()) == {1}, resource_type
        assert len(ehr.identifier_counts(resource_type)) == count, resource_type


def test_a_burst_of_wakes_makes_a_few_passes_and_no_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    passes: list[float] = []
    working = threading.Event()

    def work() -> bool:
        passes.append(time.monotonic())
        working.set()
        time.sleep(0.5)
        return False

    wakeup = Wakeup("test-wakeup", work, gather=0.01)
    wakeup.start()
    try:
        with caplog.at_level("DEBUG"):
            wakeup.pulse()
            working.wait(5)
            for _ in range(1000):
                wakeup.pulse()
            time.sleep(1.5)
    finally:
        wakeup.stop()

    assert len(passes) == 2  # the first wake's pass, and one for the 1,000 during it
    assert caplog.records == []


def test_a_pass_that_found_the_lease_taken_is_tried_again() -> None:
    answers = [True, True, False]
    tried = threading.Event()

    def work() -> bool:
        again = answers.pop(0)
        if not answers:
            tried.set()
        return again

    wakeup = Wakeup("test-wakeup", work, gather=0.0)
    wakeup.start()
    wakeup.pulse()
    try:
        assert tried.wait(10)
    finally:
        wakeup.stop()
    assert answers == []


def test_a_stop_between_the_gather_and_its_clear_still_stops_the_wakeup() -> None:
    """`stop` sets the stop, then the pulse: one that lands just before the thread clears the
    pulse it gathered loses its pulse to that clear (this reproduces it every time)."""
    passes: list[float] = []
    wakeup = Wakeup("test-wakeup", lambda: bool(passes.append(time.monotonic())), gather=0.0)

    class StoppedBeforeClear(threading.Event):
        def clear(self) -> None:
            wakeup._stop.set()  # as `stop` does, first
            self.set()
            super().clear()

    wakeup._pulsed = StoppedBeforeClear()
    wakeup.start()
    wakeup.pulse()
    wakeup._thread.join(5)

    assert not wakeup._thread.is_alive()
    assert passes == []  # stopped: no pass after the stop


def test_records_received_during_a_mapping_run_go_ahead_of_its_backlog(
    runtime: Runtime,
) -> None:
    """A new side effect is mapped by the batch after it arrived, though the run's key order
    has passed its id: the backlog (a new mapping version, say) does not hold it."""
    runtime.intake.submit(list(enumerate(records(600), start=1)))
    late = {
        "record_type": "adverse_event",
        "id": "AE-00000000-LATE",
        "revision": 1,
        "session_id": "SES-00000000",
        "patient": {"mrn": "100000"},
        "event": "NAUSEA",
        "onset_at": "2026-01-05T09:50:00+00:00",
        "resolved_at": "2026-01-05T10:20:00+00:00",
        "severity": "mild",
        "serious": False,
        "actions": ["RATE_REDUCED"],
        "medications_given": [],
        "outcome": "resolved",
        "recorded_by": NURSE,
    }
    states: list[str] = []

    def batch_done(_: MappingReport) -> None:
        if not states:
            outcome = runtime.intake.submit([(1, orjson.dumps(late))])
            assert outcome[0].outcome == "created", outcome
        states.append(runtime.mapping.queue.state("adverse_event", late["id"])["state"])

    report = runtime.mapping.run(batch_size=100, on_batch=batch_done)

    assert report.records > 500  # six batches and more: the late one is mapped by the second
    assert states[:2] == ["pending", "mapped"]


def breach_session(number: int) -> list[tuple[int, bytes]]:
    """A session whose patient ate an hour before the infusion: a protocol breach."""
    rows = list(session_records(number, random.Random(number)))
    fasting = rows[0]
    start = datetime.fromisoformat(rows[2]["infusion_start"])
    fasting["last_solid_food_at"] = (start - timedelta(hours=1)).isoformat()
    return [(i, orjson.dumps(row)) for i, row in enumerate(rows, start=1)]


def test_a_protocol_breach_arriving_mid_run_goes_to_the_ehr_ahead_of_the_backlog(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    """A breach's DetectedIssue comes last in delivery order; arriving while a run works
    through a backlog, it is in the EHR before most of the backlog."""
    mrns = load_synthetic(runtime, 400)
    number = 500
    arrival = breach_session(number)
    ehr.add_patients(sorted(mrns | {orjson.loads(arrival[0][1])["patient"]["mrn"]}))
    sync = in_batches_of(10, runtime, settings)
    backlog = runtime.outbox.count_due(datetime.now(UTC))
    arrived: list[int] = []

    def progress(done: int) -> None:
        if not arrived:
            arrived.append(done)
            runtime.intake.submit(arrival)
            runtime.mapping.run()

    report = sync_once(sync, trigger="test", progress=progress)

    assert report.status == "completed", report.error
    issues = [
        r
        for r in runtime.resources.for_source("protocol", f"SES-{number:08d}")
        if r.resource_type == "DetectedIssue"
    ]
    assert issues
    journeys = runtime.outbox.journeys([r.id for r in issues])
    answered = max(datetime.fromisoformat(j["answered"]) for j in journeys.values())
    assert all(j["urgent"] for j in journeys.values())
    later = _answered_after(runtime, answered)
    assert later > backlog / 2, (later, backlog)


def _answered_after(runtime: Runtime, moment: datetime) -> int:
    query = select(func.count()).where(sync_outbox.c.answered_at > moment)
    with runtime.store.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())
