"""Several replicas of the service on one store: each scheduled job runs once per tick across
them, the work jobs one at a time, and a revocation or a mapping change made through one
replica (or the CLI) holds in every other within the stated bound."""

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from fastapi.testclient import TestClient

from adapter import worker as worker_module
from adapter.app import create_app
from adapter.replicas import CacheNotices, SharedJobs, interval_slot, minute_slot
from adapter.runtime import Runtime, open_runtime
from adapter.security import clients as clients_module
from adapter.settings import Settings
from adapter.store.job_ticks import JobTicks
from adapter.store.mapping_queue import PENDING
from adapter.store.sync_state import Lease
from adapter.sync.engine import SyncReport
from adapter.worker import (
    ALERT_JOB,
    EXPIRE_JOB,
    EXPORT_JOB,
    LEASES,
    MAP_JOB,
    RECONCILE_JOB,
    SYNC_JOB,
    Worker,
)
from tests.conftest import grant, ndjson, session

REPLICAS = 3
TICK = 0.4


@pytest.fixture
def replicas(settings: Settings) -> Iterator[list[Runtime]]:
    """Three processes on the same store: each its own engine, mapping and caches."""
    opened = [open_runtime(settings) for _ in range(REPLICAS)]
    yield opened
    for runtime in opened:
        runtime.close()


def test_a_tick_claimed_by_one_process_is_skipped_by_the_others(
    replicas: list[Runtime],
) -> None:
    moment = datetime(2026, 12, 1, 3, 0, 7, tzinfo=UTC)
    shared = [SharedJobs(r.store.engine, clock=lambda: moment) for r in replicas]
    runs: Counter[str] = Counter()
    lock = threading.Lock()

    def counted(name: str) -> Callable[[], None]:
        def run() -> None:
            with lock:
                runs[name] += 1

        return run

    gated = [
        s.once_per_tick("job", lambda now: interval_slot(5, now), counted(s.holder)) for s in shared
    ]
    for _ in range(3):  # the same tick, asked three times by each process at once
        threads = [threading.Thread(target=run) for run in gated]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    shared[2].wake("job")
    gated[2]()  # a run asked for is not a tick: it runs

    assert sum(runs.values()) == 2
    assert runs[shared[2].holder] >= 1
    holders = JobTicks(replicas[0].store.engine).holders("job")
    assert list(holders) == [datetime(2026, 12, 1, 3, 0, 5, tzinfo=UTC)]


def test_ticks_are_counted_from_one_anchor_in_every_process() -> None:
    late = datetime(2026, 12, 1, 2, 30, 0, 900_000, tzinfo=UTC)

    assert interval_slot(60, late) == datetime(2026, 12, 1, 2, 30, tzinfo=UTC)
    assert interval_slot(0.5, late) == datetime(2026, 12, 1, 2, 30, 0, 500_000, tzinfo=UTC)
    assert minute_slot(late + timedelta(seconds=20)) == datetime(2026, 12, 1, 2, 30, tzinfo=UTC)


def test_the_schedulers_of_three_replicas_run_each_job_once_per_tick(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three workers with their schedulers running on one store, every job on a short tick:
    each tick of each job ran in one of them alone (counted inside the job's lease, by the
    tick its process claimed)."""
    fast = settings.model_copy(
        update={
            "mapping_interval_seconds": TICK,
            "alert_interval_seconds": TICK,
            "sync_interval_seconds": TICK,
            "ehr_base_url": "http://127.0.0.1:9/fhir",  # never called: the sync is counted
        }
    )
    ran: list[tuple[str, datetime]] = []
    lock = threading.Lock()
    claiming = threading.local()
    claim = SharedJobs.claim

    def claim_noted(shared: SharedJobs, job: str, slot: datetime) -> bool:
        claiming.slot = slot  # the run that follows in this thread is this tick's
        return claim(shared, job, slot)

    def count(job: str) -> None:
        slot = claiming.__dict__.pop("slot", None)
        if slot is not None:  # not the catch-up pass of a process starting
            with lock:
                ran.append((job, slot))

    monkeypatch.setattr(SharedJobs, "claim", claim_noted)
    always_work(monkeypatch)
    monkeypatch.setattr(worker_module, "map_pending", lambda *_: count(MAP_JOB))
    monkeypatch.setattr(worker_module, "sync_to_ehr", lambda *_: count(SYNC_JOB))
    monkeypatch.setattr(
        "adapter.export.service.ExportService.run", lambda *_: count(EXPORT_JOB) or 0
    )
    monkeypatch.setattr(
        "adapter.export.service.ExportService.expire", lambda *_: count(EXPIRE_JOB) or 0
    )

    class Watch:
        def check(self) -> None:
            count(ALERT_JOB)

    runtimes = [open_runtime(fast) for _ in range(REPLICAS)]
    workers = [Worker(r, alerts=Watch()) for r in runtimes]  # type: ignore[arg-type]
    try:
        for one in workers:
            one.start()
        time.sleep(TICK * 10)
    finally:
        for one in workers:
            one.stop()
        for r in runtimes:
            r.close()

    per_tick = Counter(ran)
    jobs = {job for job, _ in ran}
    assert jobs == {MAP_JOB, SYNC_JOB, EXPORT_JOB, EXPIRE_JOB, ALERT_JOB}
    assert [key for key, times in per_tick.items() if times > 1] == []
    for job in jobs:
        assert sum(1 for key in per_tick if key[0] == job) >= 3, job
    ticks = JobTicks(runtimes[0].store.engine)
    assert len(set(ticks.holders(MAP_JOB).values()) | set(ticks.holders(ALERT_JOB).values())) > 1


def always_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """The work jobs find work at every tick (they claim ticks only when they do)."""
    monkeypatch.setattr("adapter.store.mapping_queue.MappingQueue.any_to_map", lambda *_: True)
    monkeypatch.setattr("adapter.export.service.ExportService.any_to_run", lambda *_: True)
    monkeypatch.setattr("adapter.export.service.ExportService.any_expired", lambda *_: True)


def test_an_idle_service_claims_no_tick_of_a_work_job_and_maps_what_comes_at_the_next(
    settings: Settings, example_lines: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The mapping and the exports, with nothing to do, pass their ticks over after a read: no
    tick claimed, no lease taken, nothing written. A record stored without waking the service
    (by another replica, on SQLite that has no notices) is mapped at the next tick."""
    fast = settings.model_copy(
        update={
            "mapping_interval_seconds": TICK,
            "alert_interval_seconds": TICK,
            "event_delivery": False,
        }
    )
    checks: list[float] = []

    class Watch:
        def check(self) -> None:
            checks.append(time.monotonic())

    taken: list[str] = []
    acquire = Lease.acquire

    def acquire_noted(lease: Lease, now: datetime) -> bool:
        taken.append(lease.name)
        return acquire(lease, now)

    monkeypatch.setattr(Lease, "acquire", acquire_noted)
    runtime = open_runtime(fast)
    worker = Worker(runtime, alerts=Watch())  # type: ignore[arg-type]
    ticks = JobTicks(runtime.store.engine)
    try:
        worker.start()
        time.sleep(TICK * 1.5)  # the first pass of each job, a catch-up and no tick, is over
        taken.clear()
        time.sleep(TICK * 3.5)
        idle = {job: ticks.holders(job) for job in (MAP_JOB, EXPORT_JOB, EXPIRE_JOB)}
        alert_ticks = len(ticks.holders(ALERT_JOB))
        leases_taken = set(taken)

        runtime.intake.submit(list(enumerate(example_lines[:3], start=1)))
        deadline = time.monotonic() + TICK * 10
        while runtime.mapping.queue.counts().get(PENDING) and time.monotonic() < deadline:
            time.sleep(TICK / 4)
        mapped = runtime.mapping.queue.counts()
        claimed = ticks.holders(MAP_JOB)
    finally:
        worker.stop()
        runtime.close()

    assert idle == {MAP_JOB: {}, EXPORT_JOB: {}, EXPIRE_JOB: {}}
    assert leases_taken == {LEASES[ALERT_JOB]}
    assert alert_ticks >= 3  # the ticks came, and a job without a read of its work claimed them
    assert mapped.get(PENDING, 0) == 0 and sum(mapped.values()) == 3
    assert len(claimed) == 1


def test_every_shared_job_is_ticked_and_the_reload_is_each_process_own(
    settings: Settings,
) -> None:
    runtime = open_runtime(settings.model_copy(update={"ehr_base_url": "http://127.0.0.1:9"}))
    try:
        worker = Worker(runtime, alerts=object())  # type: ignore[arg-type]
        jobs = {job.id: job for job in worker.scheduler.get_jobs()}
    finally:
        runtime.close()

    assert set(jobs) >= {MAP_JOB, EXPORT_JOB, EXPIRE_JOB, SYNC_JOB, RECONCILE_JOB, ALERT_JOB}
    for job_id, job in jobs.items():
        ticked = hasattr(job.func, "__wrapped__")
        assert ticked == (job_id != worker_module.RELOAD_JOB), job_id
    assert set(LEASES) == {MAP_JOB, EXPORT_JOB, ALERT_JOB}


def test_a_work_job_runs_in_one_process_at_a_time_and_keeps_its_lease_while_it_runs(
    replicas: list[Runtime],
) -> None:
    first, second = (SharedJobs(r.store.engine).lease(LEASES[MAP_JOB], 0.3) for r in replicas[:2])
    inside, release = threading.Event(), threading.Event()
    answers: list[bool] = []

    def long_pass() -> None:
        inside.set()
        release.wait(5)

    holder = threading.Thread(target=lambda: answers.append(first.run(long_pass)))
    holder.start()
    assert inside.wait(5)
    refused = [second.run(lambda: None)]
    time.sleep(0.5)  # longer than the lease lasts unrenewed: the run keeps it all the same
    refused.append(second.run(lambda: None))
    refused.append(first.run(lambda: None))  # another run in the holder's own process
    release.set()
    holder.join()

    assert refused == [False, False, False]
    assert answers == [True]
    assert second.run(lambda: None) is True


def test_a_dead_holder_lets_go_of_a_work_job_when_its_lease_runs_out(
    replicas: list[Runtime],
) -> None:
    dead = SharedJobs(replicas[0].store.engine).lease(LEASES[EXPORT_JOB], 30)
    alive = SharedJobs(replicas[1].store.engine).lease(LEASES[EXPORT_JOB], 30)
    now = datetime.now(UTC)
    assert dead.lease.acquire(now)  # and the process dies without releasing it

    assert alive.lease.acquire(now + timedelta(seconds=29)) is False
    assert alive.lease.acquire(now + timedelta(seconds=31)) is True


def _wait_until(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class _Clock:
    """time.monotonic as the clients module reads it, moved on by the test."""

    def __init__(self) -> None:
        self.ahead = 0.0

    def monotonic(self) -> float:
        return time.monotonic() + self.ahead


def test_a_revocation_through_one_replica_is_refused_by_another_within_the_bound(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On PostgreSQL the other replica hears of it at once (well within CACHE_SECONDS); on
    SQLite its cache holds the key CACHE_SECONDS at most."""
    clock = _Clock()
    monkeypatch.setattr(clients_module, "time", clock)
    one, other = create_app(settings, background=False), create_app(settings, background=False)
    with TestClient(one) as first, TestClient(other) as second:
        credentials = grant(first.app.state.runtime)  # type: ignore[attr-defined]
        key = {"Authorization": f"Bearer {credentials.api_key}"}
        token = {"Authorization": f"Bearer {credentials.token}"}
        notices = second.app.state.cache_notices  # type: ignore[attr-defined]
        if notices.listener is not None:
            assert notices.listener.listening.wait(10)
        assert second.get("/api/v1/mapping/status", headers=key).status_code == 200
        assert second.get("/fhir/Patient", headers=token).status_code == 200

        # Revoked through the first replica (the CLI does the same on its own engine).
        runtime: Runtime = first.app.state.runtime  # type: ignore[attr-defined]
        client = runtime.clients.by_key(credentials.api_key)
        assert client is not None
        runtime.clients.revoke(client.id, datetime.now(UTC))
        runtime.clients.revoke(credentials.smart.id, datetime.now(UTC))

        def refused() -> bool:
            return (
                second.get("/api/v1/mapping/status", headers=key).status_code == 401
                and second.get("/fhir/Patient", headers=token).status_code == 401
            )

        if notices.listener is not None:
            assert _wait_until(refused, clients_module.CACHE_SECONDS / 4)
        else:
            clock.ahead = clients_module.CACHE_SECONDS + 0.1
            assert refused()


def _edit_mapping(settings: Settings) -> None:
    table = settings.mappings_dir / "codes" / "events.yaml"
    table.write_text(table.read_text() + "\n# reviewed again\n")


def test_a_replica_with_another_mapping_version_maps_nothing_until_it_loads_it(
    settings: Settings, replicas: list[Runtime]
) -> None:
    """One replica loads edited mapping files; another, still on the old version, stores
    nothing made with it until it loads them (at once on PostgreSQL, the next test; at its
    next look at the files otherwise)."""
    edited, stale = replicas[0], replicas[1]
    old = stale.mapping.version
    _edit_mapping(settings)
    assert edited.reload_mappings()
    edited.intake.submit([(1, ndjson(session(id="SES-R1")).strip())])

    report = stale.mapping.run()

    assert stale.mapping.version == old != edited.mapping.version
    assert report.mapped == 0
    assert stale.mapping.queue.state("infusion_session", "SES-R1")["state"] == PENDING
    assert stale.reload_mappings()  # the reload job's next look at the files
    assert stale.mapping.run().mapped == 1
    assert stale.mapping.queue.state("infusion_session", "SES-R1")["version"] == (
        edited.mapping.version
    )


def test_on_postgresql_a_replica_loads_a_new_mapping_version_when_it_hears_of_it(
    settings: Settings, replicas: list[Runtime]
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("notices are PostgreSQL's")
    edited, other = replicas[0], replicas[1]
    heard = CacheNotices(other)
    heard.start()
    try:
        assert heard.listener is not None and heard.listener.listening.wait(10)
        _edit_mapping(settings)
        edited.reload_mappings()

        assert _wait_until(lambda: other.mapping.version == edited.mapping.version, 5)
    finally:
        heard.stop()


def test_the_nightly_reconciliation_waits_for_a_sync_run_rather_than_skip_the_night(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers = ["busy", "busy", "completed"]
    waits: list[float] = []
    monkeypatch.setattr(worker_module, "reconcile_once", lambda _: SyncReport(answers.pop(0)))
    runner = worker_module.SyncRunner(SimpleNamespace(), sync=object())  # type: ignore[arg-type]

    worker_module.reconcile_with_ehr(runner, sleep=waits.append)  # type: ignore[arg-type]
    answers[:] = ["busy"] * 1000
    worker_module.reconcile_with_ehr(runner, patience=20, sleep=waits.append)  # type: ignore[arg-type]

    assert waits[:2] == [worker_module.RECONCILE_RETRY_SECONDS] * 2
    assert len(waits) == 2 + 20 / worker_module.RECONCILE_RETRY_SECONDS
