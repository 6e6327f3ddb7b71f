"""While the sync backs off from an EHR that was down, it asks the EHR now and then whether it
is back (one request for its CapabilityStatement), and delivery resumes on the first answer
rather than at the back-off's end; never sooner than the EHR asked, and not again after an
answer that misled it. In the service, a run is planned for the moment the back-off ends, the
EHR may next be asked, or an item the EHR failed is due again, so that delivery resumes
without waiting for the schedule."""

import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.outbox import Outcome, enqueue
from adapter.store.sync_state import Lease, SyncRun
from adapter.sync.engine import BackOff, Sync, SyncReport, probe_ehr, sync_once
from adapter.sync.engine import _next_retry as next_retry_of
from adapter.sync.reconcile import reconcile_once
from adapter.worker import LEASE_HELD_RETRY_SECONDS, Worker, sync_runners
from tests.conftest import EXAMPLE_DAY
from tests.sync.expected import expected_in_ehr
from tests.sync.faults import FaultProxy, Faults
from tests.sync.gate import EhrGate
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_corrections import a_heart_rate, delete_at_the_ehr
from tests.sync.test_delivery import load_example_day, sync_with
from tests.sync.test_events import example_day

METADATA = "/fhir/metadata"


class Clock:
    """The sync's clock, moved by the test from the moment it was made."""

    def __init__(self) -> None:
        self.start = self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def proxy(ehr: SandboxEhr) -> Iterator[FaultProxy]:
    proxy = FaultProxy(ehr.origin, Faults())
    yield proxy
    proxy.stop()


def proxied_sync(
    runtime: Runtime, settings: Settings, proxy: FaultProxy, clock: Clock, **changed: float
) -> Sync:
    """A sync to the EHR through `proxy`, on `clock`, backing off 60 s first and asking the EHR
    whether it is back every 10 s, with `changed` settings."""
    through = settings.model_copy(
        update={
            "ehr_base_url": f"{proxy.origin}/fhir",
            "ehr_breaker_failures": 2,
            "ehr_breaker_seconds": 60.0,
            "ehr_probe_seconds": 10.0,
            **changed,
        }
    )
    return sync_with(runtime, through, clock)


def day_through(
    proxy: FaultProxy, runtime: Runtime, settings: Settings, **changed: float
) -> tuple[Clock, Sync]:
    """The example day queued, and a sync of it through `proxy` (`proxied_sync`) on a clock
    started after it, so that its items are due."""
    load_example_day(runtime)
    clock = Clock()
    return clock, proxied_sync(runtime, settings, proxy, clock, **changed)


def hourly_service(runtime: Runtime, **changed: object) -> tuple[Runtime, Worker]:
    """The service on `runtime`'s store, mapping and syncing on hourly schedules (only what
    the service plans itself can run sooner), with `changed` settings; its worker not started."""
    settings = runtime.settings.model_copy(
        update={"mapping_interval_seconds": 3600, "sync_interval_seconds": 3600, **changed}
    )
    service = open_runtime(settings)
    return service, Worker(service)


def example_day_records() -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]


def requests_made(proxy: FaultProxy) -> int:
    return sum(proxy.faults.counts.values())


def test_an_ehr_back_before_the_back_off_ends_answers_a_probe_and_delivery_resumes(
    runtime: Runtime, settings: Settings, proxy: FaultProxy, client: TestClient
) -> None:
    clock, sync = day_through(proxy, runtime, settings)
    proxy.faults.error_503 = 1.0

    failed = sync_once(sync, trigger="schedule")

    assert failed.status == "failed" and failed.cause == "ehr"
    assert failed.resume_at == clock.start + timedelta(seconds=60)
    assert failed.probe_at == clock.start + timedelta(seconds=10)
    made = requests_made(proxy)
    clock.now = clock.start + timedelta(seconds=9)
    assert sync_once(sync, trigger="event").status == "deferred"
    assert requests_made(proxy) == made  # not yet time to ask

    clock.now = clock.start + timedelta(seconds=10)
    still_down = sync_once(sync, trigger="resume")
    assert still_down.status == "deferred"
    assert proxy.faults.counts["503"] == made + 1  # one request, not retried
    assert still_down.probe_at == clock.start + timedelta(seconds=20)
    status = client.get("/api/v1/sync/status").json()
    assert status["backing_off_until"] == failed.resume_at.isoformat()
    assert status["next_probe_at"] == still_down.probe_at.isoformat()
    assert sync_once(sync, trigger="event").status == "deferred"
    assert requests_made(proxy) == made + 1  # asked once per ten seconds, whoever wakes it

    proxy.faults.error_503 = 0.0
    clock.now = clock.start + timedelta(seconds=21)
    resumed = sync_once(sync, trigger="resume")

    assert resumed.status == "completed", resumed.error
    assert resumed.counts["delivered"] == sum(expected_in_ehr(runtime).values())
    assert sync.backoff_state() == BackOff()
    status = client.get("/api/v1/sync/status").json()
    assert status["backing_off_until"] is None and status["next_probe_at"] is None


def test_the_ehr_is_asked_no_sooner_than_its_retry_after(
    runtime: Runtime, settings: Settings, proxy: FaultProxy
) -> None:
    clock, sync = day_through(proxy, runtime, settings)
    proxy.faults.error_503 = 1.0
    assert sync_once(sync, trigger="schedule").status == "failed"

    proxy.faults.error_503, proxy.faults.throttle_429, proxy.faults.retry_after = 0.0, 1.0, 30
    clock.now = clock.start + timedelta(seconds=10)
    throttled = sync_once(sync, trigger="schedule")

    assert throttled.status == "deferred"
    assert throttled.probe_at == clock.start + timedelta(seconds=40)
    made = requests_made(proxy)
    clock.now = clock.start + timedelta(seconds=39)
    assert sync_once(sync, trigger="event").status == "deferred"
    assert requests_made(proxy) == made

    # Asked to wait beyond the back-off: the back-off lasts as long, and no probe comes first.
    clock.now = clock.start + timedelta(seconds=40)
    proxy.faults.retry_after = 600
    asked_longer = sync_once(sync, trigger="schedule")
    assert asked_longer.probe_at is None
    assert asked_longer.resume_at == clock.now + timedelta(seconds=600)
    clock.now = clock.start + timedelta(seconds=639)
    assert sync_once(sync, trigger="schedule").status == "deferred"
    assert requests_made(proxy) == made + 1


def test_a_run_the_ehr_throttled_backs_off_and_probes_no_sooner_than_its_retry_after(
    runtime: Runtime, settings: Settings, proxy: FaultProxy
) -> None:
    """The CapabilityStatement answered 429 with Retry-After: 20 at every attempt: the run
    fails on it, and the first probe waits those 20 s, not the probe's 10."""
    clock, sync = day_through(proxy, runtime, settings)
    proxy.faults.throttle_429, proxy.faults.retry_after = 1.0, 20

    throttled = sync_once(sync, trigger="schedule")

    assert throttled.status == "failed" and throttled.cause == "ehr"
    assert throttled.probe_at == clock.start + timedelta(seconds=20)


def test_of_two_processes_only_one_asks_the_ehr(
    runtime: Runtime, settings: Settings, proxy: FaultProxy
) -> None:
    """Two syncs on one store, as two replicas' are: each wakes when the probe is due, the
    second after the first has claimed it, or having read the back-off before that claim."""
    clock, first = day_through(proxy, runtime, settings)
    second = proxied_sync(runtime, settings, proxy, clock)
    proxy.faults.error_503 = 1.0
    assert sync_once(first, trigger="schedule").status == "failed"
    clock.now = clock.start + timedelta(seconds=10)
    read_before = second.backoff_state()
    made = requests_made(proxy)

    assert sync_once(first, trigger="event").status == "deferred"
    assert sync_once(second, trigger="event").status == "deferred"
    assert probe_ehr(second, read_before) == first.backoff_state()

    assert requests_made(proxy) == made + 1


def test_a_run_that_fails_after_a_probe_was_answered_backs_off_without_asking_again(
    runtime: Runtime, settings: Settings, proxy: FaultProxy
) -> None:
    """An EHR whose front answers (its CapabilityStatement) while it fails every write."""
    clock, sync = day_through(proxy, runtime, settings)
    proxy.faults.error_503, proxy.faults.spared = 1.0, (METADATA,)
    assert sync_once(sync, trigger="schedule").status == "failed"

    clock.now = clock.start + timedelta(seconds=10)
    misled = sync_once(sync, trigger="event")

    assert misled.status == "failed" and misled.cause == "ehr"
    assert misled.resume_at == clock.now + timedelta(seconds=120)
    assert misled.probe_at is None
    made = requests_made(proxy)
    clock.now += timedelta(seconds=119)
    assert sync_once(sync, trigger="schedule").status == "deferred"
    assert requests_made(proxy) == made
    clock.now += timedelta(seconds=1)
    again = sync_once(sync, trigger="schedule")
    assert again.status == "failed" and again.probe_at is None  # still none until a run succeeds

    proxy.faults.error_503 = 0.0
    clock.now += timedelta(seconds=240)
    assert sync_once(sync, trigger="schedule").status == "completed"
    assert sync.backoff_state() == BackOff()  # the next back-off asks the EHR again


OUTAGE: dict[str, float] = {
    "ehr_item_retry_seconds": 1200.0,
    "ehr_settle_seconds": 100.0,
    "ehr_breaker_failures": 8,
    "ehr_retry_attempts": 1,
}
"""Items the EHR fails wait twenty minutes or more of their own; the sync backs off a minute; a
create whose answer was lost is looked for after 100 s."""


def assert_in_ehr_once(runtime: Runtime, ehr: SandboxEhr) -> None:
    assert runtime.outbox.counts()["delivered"] == sum(expected_in_ehr(runtime).values())
    for resource_type, count in expected_in_ehr(runtime).items():
        assert set(ehr.identifier_counts(resource_type).values()) == {1}, resource_type
        assert len(ehr.identifier_counts(resource_type)) == count, resource_type


def test_what_the_ehr_failed_while_down_is_due_when_the_sync_resumes(
    runtime: Runtime, settings: Settings, proxy: FaultProxy, ehr: SandboxEhr
) -> None:
    clock, sync = day_through(proxy, runtime, settings, **OUTAGE)
    proxy.faults.error_503, proxy.faults.spared = 1.0, (METADATA,)
    failed = sync_once(sync, trigger="schedule")
    assert failed.status == "failed" and failed.counts["retry_later"] > 0

    proxy.faults.error_503 = 0.0
    clock.now = clock.start + timedelta(seconds=61)
    assert sync_once(sync, trigger="schedule").status == "completed"

    assert_in_ehr_once(runtime, ehr)


def test_a_reconciliation_after_an_outage_leaves_what_the_ehr_failed_owed_to_the_next_run(
    runtime: Runtime, settings: Settings, proxy: FaultProxy, ehr: SandboxEhr
) -> None:
    """The nightly reconciliation is the first run to succeed after the outage: it ends the
    back-off, and the sync run after it still makes due what the EHR failed while down."""
    clock, sync = day_through(proxy, runtime, settings, **OUTAGE)
    proxy.faults.error_503, proxy.faults.spared = 1.0, (METADATA,)
    assert sync_once(sync, trigger="schedule").status == "failed"

    proxy.faults.error_503 = 0.0
    clock.now = clock.start + timedelta(seconds=61)
    assert reconcile_once(sync).status == "completed"
    assert sync.backoff_state().until is None and sync.backoff_state().since is not None
    assert sync_once(sync, trigger="schedule").status == "completed"

    assert_in_ehr_once(runtime, ehr)
    assert sync.backoff_state() == BackOff()


def answers_lost_in_an_outage(
    runtime: Runtime, proxy: FaultProxy, sync: Sync, clock: Clock, records: list[dict[str, Any]]
) -> SyncReport:
    """The records stored and mapped, then sent while every connection is reset after the EHR
    took the Bundle (the answers lost): that failed run. The EHR answers again, and the sync's
    back-off is over, 61 s later."""
    runtime.intake.submit([(n, orjson.dumps(record)) for n, record in enumerate(records, 1)])
    runtime.mapping.run()
    clock.now = datetime.now(UTC)
    proxy.faults.reset_after, proxy.faults.methods = 1.0, ("POST",)
    failed = sync_once(sync, trigger="schedule")
    assert failed.status == "failed" and failed.counts["unconfirmed"] > 0, failed.counts
    proxy.faults.reset_after = 0.0
    clock.now += timedelta(seconds=61)
    return failed


def test_a_create_whose_answer_an_outage_lost_is_looked_for_once_the_ehr_has_settled(
    runtime: Runtime, settings: Settings, proxy: FaultProxy, ehr: SandboxEhr
) -> None:
    """Connections reset after the EHR took each Bundle: the creates may be in the EHR. They
    are due when the EHR has had its settle time, not before, and are found there rather than
    sent again."""
    clock, sync = day_through(proxy, runtime, settings, **OUTAGE)
    assert sync_once(sync, trigger="test").status == "completed"  # its patients are known
    taken = next(line for line in example_day_records() if line["record_type"] == "vitals")
    later = [{**taken, "id": f"VIT-LATE-{n}", "heart_rate": 70 + n} for n in range(5)]
    failed = answers_lost_in_an_outage(runtime, proxy, sync, clock, later)

    resumed = sync_once(sync, trigger="schedule")
    assert resumed.status == "completed" and not resumed.counts  # they settle meanwhile
    clock.now += timedelta(seconds=38)
    assert sync_once(sync, trigger="schedule").status == "idle"
    clock.now += timedelta(seconds=1)
    settled = sync_once(sync, trigger="schedule")
    assert settled.status == "completed"
    assert settled.counts["delivered"] == failed.counts["unconfirmed"]

    assert_in_ehr_once(runtime, ehr)


def test_an_update_whose_answer_an_outage_lost_is_sent_again_as_soon_as_the_sync_resumes(
    runtime: Runtime, settings: Settings, proxy: FaultProxy, ehr: SandboxEhr
) -> None:
    """Connections reset after the EHR took each Bundle of updates: unlike a create, an update
    sent again does no harm, so it waits for no settle time."""
    clock, sync = day_through(proxy, runtime, settings, **OUTAGE)
    assert sync_once(sync, trigger="test").status == "completed"
    taken = [line for line in example_day_records() if line["record_type"] == "vitals"][:3]
    amended = [{**line, "revision": line["revision"] + 1, "heart_rate": 61} for line in taken]
    failed = answers_lost_in_an_outage(runtime, proxy, sync, clock, amended)

    resumed = sync_once(sync, trigger="schedule")

    assert resumed.status == "completed"
    assert resumed.counts["delivered"] == failed.counts["unconfirmed"]
    assert_in_ehr_once(runtime, ehr)
    heart_rates = {f"{line['id']}/heart_rate" for line in taken}
    rates = [
        observation["valueQuantity"]["value"]
        for observation in ehr.all("Observation")
        if observation["identifier"][0]["value"] in heart_rates
    ]
    assert rates == [61] * len(taken)


def test_a_create_sent_again_after_the_ehr_deleted_its_copy_waits_to_settle_after_an_outage(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    """A copy deleted in the EHR, found by reconciliation and replayed: the create sent again
    has its answer lost. Its row still holds the deleted copy's id, yet it is a create: due
    after an outage only once the EHR has had its settle time, or it could be created twice."""
    load_example_day(runtime)
    clock = Clock()
    sync = sync_with(runtime, settings, clock)
    assert sync_once(sync, trigger="test").status == "completed"
    copy = a_heart_rate(ehr)
    delete_at_the_ehr(ehr, copy)
    clock.now += timedelta(seconds=1)
    assert reconcile_once(sync).counts["deleted_in_ehr"] == 1
    (dead,) = runtime.outbox.listed(("dead",), 10)
    since = clock.now
    assert runtime.outbox.requeue(clock.now, ["dead"], ids=[dead.resource_id]) == 1
    ehr.quirk(lateCommit=True)  # the EHR stores it only later: the answer never comes
    sync.client.timeout = 0.3
    sync_once(sync, trigger="test")
    ehr.quirk()
    row = runtime.outbox.items([dead.resource_id])[dead.resource_id]
    assert row.ehr_id == copy["id"] and (row.detail or {}).get("unconfirmed") == "create"

    clock.now += timedelta(seconds=61)
    runtime.outbox.due_after_outage(clock.now, timedelta(seconds=300), since)

    row = runtime.outbox.items([dead.resource_id])[dead.resource_id]
    assert row.next_attempt_at > clock.now + timedelta(seconds=200)


def test_a_configuration_the_ehr_refuses_is_not_probed(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    """A redirect needs a person: that the EHR answers its CapabilityStatement tells nothing."""
    load_example_day(runtime)
    clock = Clock()
    sync = sync_with(runtime, settings, clock)
    ehr.quirk(redirect=True)  # every request but GET metadata

    refused = sync_once(sync, trigger="schedule")

    assert refused.status == "failed" and refused.cause == "configuration"
    assert refused.resume_at is not None and refused.probe_at is None
    clock.now = clock.start + timedelta(seconds=30)
    assert sync_once(sync, trigger="schedule").status == "deferred"


@pytest.mark.parametrize(
    ("breaker_seconds", "probe_seconds"),
    [(1.0, 3600.0), (3600.0, 1.0)],
    ids=["at-the-back-off-end", "on-a-probe"],
)
def test_the_service_resumes_delivery_without_a_tick_or_a_record(
    runtime: Runtime, ehr: SandboxEhr, breaker_seconds: float, probe_seconds: float
) -> None:
    """The schedule hourly, no record arriving after the EHR comes back: only the run the
    service plans at the back-off's end, or at the next probe, can deliver."""
    gate = EhrGate(ehr.base)
    service, worker = hourly_service(
        runtime,
        ehr_base_url=gate.base,
        ehr_retry_attempts=1,
        ehr_breaker_seconds=breaker_seconds,
        ehr_probe_seconds=probe_seconds,
    )
    gate.set("refuse")
    worker.start()
    try:
        service.intake.submit(example_day())
        worker.wake()
        deadline = time.monotonic() + 30
        while not runtime.sync_runs.recent(1) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(2.5)
        gate.set("open")
        reopened = time.monotonic()
        expected = sum(expected_in_ehr(runtime).values())
        while runtime.outbox.counts()["delivered"] < expected and time.monotonic() < deadline:
            time.sleep(0.05)
        resumed = time.monotonic() - reopened
    finally:
        worker.stop()
        service.close()
        gate.stop()

    assert runtime.outbox.counts()["delivered"] == expected > 0
    runs = runtime.sync_runs.recent(100)
    assert runs[0].trigger == "resume" and runs[0].status == "completed"
    assert resumed < 10, resumed


def failed_runs(runtime: Runtime) -> list[str]:
    return [run.status for run in runtime.sync_runs.recent(100) if run.status == "failed"]


def finished_runs(runtime: Runtime) -> list[SyncRun]:
    """The runs that have ended, the latest first."""
    return [run for run in runtime.sync_runs.recent(100) if run.status != "running"]


def test_the_service_stops_while_it_asks_an_ehr_that_does_not_answer(
    runtime: Runtime, ehr: SandboxEhr
) -> None:
    """A probe in flight when the service stops: the job that asked plans no next run, and the
    scheduler's shutdown, which waits for that job, is not left waiting on it."""
    gate = EhrGate(ehr.base)
    service, worker = hourly_service(
        runtime,
        ehr_base_url=gate.base,
        ehr_timeout_seconds=2.0,
        ehr_retry_attempts=1,
        ehr_breaker_seconds=3600.0,
        ehr_probe_seconds=0.2,
    )
    gate.set("hang")
    worker.start()
    stopper = threading.Thread(target=worker.stop, daemon=True)
    try:
        service.intake.submit(example_day())
        worker.wake()
        deadline = time.monotonic() + 30
        while not failed_runs(runtime) and time.monotonic() < deadline:
            time.sleep(0.05)
        before = gate.accepted
        while gate.accepted == before and time.monotonic() < deadline:
            time.sleep(0.01)
        assert gate.accepted > before, "no probe was sent"
        stopper.start()
        stopper.join(timeout=15)
    finally:
        gate.stop()
        stopper.join(timeout=15)
        service.close()

    assert not stopper.is_alive()
    assert [run.status for run in runtime.sync_runs.recent(100)] == ["failed"]


def test_the_service_tries_what_the_ehr_failed_again_when_its_wait_is_over(
    runtime: Runtime, ehr: SandboxEhr
) -> None:
    """Every other Bundle answered 503 in the first run, the EHR well after it; the
    schedule hourly, a back-off and its probes an hour away: only the run the service plans for
    the failed items' retry (a second after) can deliver them."""
    spared = (METADATA, "/fhir/Patient/_search")
    faults = Faults(error_503=1.0, alternate=True, methods=("POST",), spared=spared)
    proxy = FaultProxy(ehr.origin, faults)
    service, worker = hourly_service(
        runtime,
        ehr_base_url=f"{proxy.origin}/fhir",
        ehr_retry_attempts=1,
        ehr_breaker_failures=1000,
        ehr_breaker_seconds=3600.0,
        ehr_probe_seconds=3600.0,
        ehr_item_retry_seconds=1.0,
    )
    worker.start()
    try:
        service.intake.submit(example_day())
        worker.wake()
        deadline = time.monotonic() + 30
        while not finished_runs(runtime) and time.monotonic() < deadline:
            time.sleep(0.02)
        proxy.faults.error_503 = 0.0
        expected = sum(expected_in_ehr(runtime).values())
        while runtime.outbox.counts()["delivered"] < expected and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        worker.stop()
        service.close()
        proxy.stop()

    first = finished_runs(runtime)[-1]
    assert first.status == "completed" and first.counts["retry_later"] > 0, first
    assert runtime.outbox.counts()["delivered"] == expected
    retries = [run for run in finished_runs(runtime) if run.trigger == "resume"]
    assert retries and finished_runs(runtime)[0] == retries[0]
    # The items whose waits end within a second of each other go in one run.
    assert len(retries) <= first.counts["retry_later"] / 5


def test_a_planned_run_that_finds_another_process_at_the_sync_plans_itself_again(
    runtime: Runtime, ehr: SandboxEhr
) -> None:
    """Another process (a reconciliation, which plans nothing) holds the sync's lease: the run
    planned for a retry comes back a few seconds later rather than leave it to the tick."""
    service = open_runtime(runtime.settings)
    other = Lease(runtime.store.engine, "sync", "another process", timedelta(minutes=5))
    assert other.acquire(datetime.now(UTC))
    (runner,) = sync_runners(service)
    planned: list[datetime] = []
    runner.resume = lambda _runner, at: planned.append(at)
    service.intake.submit(example_day())
    service.mapping.run()
    before = datetime.now(UTC)
    try:
        report = runner.run("resume")
        after = datetime.now(UTC)
    finally:
        service.close()

    assert report is not None and report.status == "busy"
    soon = timedelta(seconds=LEASE_HELD_RETRY_SECONDS)
    assert len(planned) == 1 and before + soon <= planned[0] <= after + soon


def test_an_item_whose_wait_ended_during_the_run_is_tried_again_at_once(
    runtime: Runtime, sync: Sync
) -> None:
    """The run failed an item early and went on past the end of its wait: the next run comes
    now, not when the next item that waits is due (there is none)."""
    report = SyncReport("completed")
    report.own_retry = sync.clock() - timedelta(seconds=5)
    before = sync.clock()

    due = next_retry_of(sync, report)

    assert due is not None and before <= due <= sync.clock()
    assert next_retry_of(sync, SyncReport("completed")) is None


def test_an_events_wake_with_nothing_due_plans_nothing_and_the_schedule_does(
    runtime: Runtime, sync: Sync
) -> None:
    """An item waits to be tried again: a wake with nothing due leaves the plan to the runs
    before it (no read of the waits); a scheduled run, as after a restart, plans it."""
    now = sync.clock()
    later = now + timedelta(minutes=5)
    with runtime.store.engine.begin() as connection:
        enqueue(connection, [("obs-1", "Observation", 1, "Observation")], now)
    runtime.outbox.record([Outcome("obs-1", 1, "pending", later, {"reason": "busy"})], now)

    woken = sync_once(sync, trigger="event")
    scheduled = sync_once(sync, trigger="schedule")

    assert (woken.status, woken.retry_at) == ("idle", None)
    assert (scheduled.status, scheduled.retry_at) == ("idle", later)


def test_updates_the_ehr_took_without_saying_so_are_unconfirmed_updates_not_creates(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    """A Bundle of updates that the EHR stored but answered without its entries, and whose
    copies could not be looked for since (its searches fail): each is an update that may have
    been stored, due again without the settle time a create waits for, and sent over whatever
    version the EHR holds."""
    load_example_day(runtime)
    clock = Clock()
    sync = sync_with(runtime, settings, clock, ehr_settle_seconds=300)
    assert sync_once(sync, trigger="test").status == "completed"
    taken = [line for line in example_day_records() if line["record_type"] == "vitals"][:3]
    amended = [{**line, "revision": line["revision"] + 1, "heart_rate": 61} for line in taken]
    runtime.intake.submit([(n, orjson.dumps(record)) for n, record in enumerate(amended, 1)])
    runtime.mapping.run()
    clock.now = datetime.now(UTC)
    ehr.quirk(unreadableBundle="empty", unavailable="searches")
    sync_once(sync, trigger="test")
    ehr.quirk()

    heart_rates = {f"{line['id']}/heart_rate" for line in taken}
    rows = [
        item
        for item in runtime.outbox.listed(("pending",), 100)
        if item.resource_type == "Observation" and item.detail
    ]
    assert rows and {row.detail["unconfirmed"] for row in rows} == {"update"}, rows
    for row in rows:
        assert row.ehr_id is not None
        assert row.next_attempt_at < clock.now + timedelta(seconds=settings.ehr_item_retry_seconds)
        assert "searched for by identifier" not in row.detail["reason"]
    rates = [
        observation["valueQuantity"]["value"]
        for observation in ehr.all("Observation")
        if observation["identifier"][0]["value"] in heart_rates
    ]
    assert rates == [61] * len(taken)  # the EHR did store them
