"""The service's background work: mapping pending records, picking up edited mapping files,
exports, the sync to the EHR and the alert checks; each scheduled job once per tick across the
processes on the store (adapter/replicas.py)."""

import logging
import threading
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger
from apscheduler.triggers.interval import IntervalTrigger

from adapter.errors import MappingFileError
from adapter.mapping.service import MappingReport
from adapter.operations.alerts import AlertWatch
from adapter.operations.metrics import Metrics
from adapter.replicas import HeldLease, SharedJobs
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store import notices
from adapter.store.notices import NoticeListener
from adapter.sync.engine import Sync, SyncReport, sync_once
from adapter.sync.reconcile import reconcile_once
from adapter.wakeups import Wakeup

log = logging.getLogger(__name__)
MAP_JOB = "map-pending-records"
LARGE_LOAD = 10_000
"""Resources created in one mapping pass after which the planner statistics are refreshed."""
SERVICE_BATCH = 100
"""Records per mapping batch in the service: a record received while a backlog is mapped waits
for at most the batch under way, and the sync starts on each batch as it is stored."""
EXPORT_JOB = "run-exports"
EXPIRE_JOB = "expire-exports"
RELOAD_JOB = "reload-mapping-files"
SYNC_JOB = "sync-to-ehr"
RECONCILE_JOB = "reconcile-with-ehr"
RESUME_JOB = "sync-resume"
RETRY_FOLD_SECONDS = 1.0
"""Items left to try again are tried up to a second after the first of them is due, with those
due meanwhile: one run, not one per item (their waits are spread, so that an outage's items do
not all come back at once)."""
LEASE_HELD_RETRY_SECONDS = 5.0
"""How soon a planned run that found another process holding the sync's lease is tried again."""
ALERT_JOB = "check-alerts"
LOCAL_JOBS = (RELOAD_JOB,)
"""Jobs every process runs for itself; the others run once per tick across the processes."""
LEASES = {
    MAP_JOB: "job:map-pending-records",
    EXPORT_JOB: "job:run-exports",
    ALERT_JOB: "job:check-alerts",
}
"""The work jobs held by one process at a time (the sync and the reconciliation hold the
sync's own lease)."""
RECONCILE_PATIENCE_SECONDS = 600.0
RECONCILE_RETRY_SECONDS = 5.0
"""How long the nightly reconciliation waits for a sync run under way (its lease), asking again
at this pace, rather than skip the night."""


SitesQueued = Callable[[Collection[str | None]], None]
"""Told the clinic sites whose resources were queued for the EHR (None: of no site)."""


def reload_mapping_files(runtime: Runtime) -> None:
    """Load changed mapping files (each process reads its own)."""
    try:
        runtime.reload_mappings()
    except MappingFileError as exc:
        log.error(
            "mapping files changed but are broken; the previous mapping stays in use:\n%s", exc
        )


def map_leased(lease: HeldLease, runtime: Runtime, on_queued: SitesQueued | None) -> bool:
    """A mapping pass in one process at a time; False when another process maps now."""
    return lease.run(lambda: map_pending(runtime, on_queued))


def map_pending(runtime: Runtime, on_queued: SitesQueued | None = None) -> None:
    """One scheduled mapping pass: map what is pending."""
    map_now(runtime, on_queued)


def map_now(
    runtime: Runtime, on_queued: SitesQueued | None = None, level: int = logging.INFO
) -> None:
    """Map what is pending; `on_queued` is called with the sites of each batch that queued
    resources for the EHR (it wakes their syncs while the rest is mapped)."""

    def batch_done(so_far: MappingReport) -> None:
        if so_far.batch_queued_sites and on_queued is not None:
            on_queued(so_far.batch_queued_sites)

    report = runtime.mapping.run(SERVICE_BATCH, on_batch=batch_done)
    if report.resources.created >= LARGE_LOAD:
        runtime.resources.refresh_statistics()
    if report.records:
        log.log(
            level if not report.failed else logging.INFO,
            "mapped %d records: %d mapped, %d waiting for a mapping, %d failed; resources: "
            "%d created, %d updated, %d unchanged, %d withdrawn",
            report.records,
            report.mapped,
            report.waiting,
            report.failed,
            report.resources.created,
            report.resources.updated,
            report.resources.unchanged,
            report.resources.withdrawn,
        )


def run_exports(lease: HeldLease, runtime: Runtime) -> None:
    """Write the files of queued $export jobs, in one process at a time: the jobs a stopped
    process left running are queued again first (no other process runs one meanwhile)."""
    done = 0

    def work() -> None:
        nonlocal done
        runtime.exports.resume()
        done = runtime.exports.run()

    lease.run(work)
    if done:
        log.info("exports: %d completed", done)


def expire_exports(runtime: Runtime) -> None:
    """Remove the files of expired $export jobs."""
    expired = runtime.exports.expire()
    if expired:
        log.info("exports: %d expired", expired)


Resume = Callable[["SyncRunner", datetime], None]
"""Told when a runner's sync should run again: its back-off ends, the EHR may be asked whether
it is back, or an item left to try again is due."""


class SyncRunner:
    """Runs the sync for this process, one run at a time whoever asks (the schedule, an event):
    a run asked for while another runs here waits for it rather than finding the lease taken.
    A run that backs off, is deferred by a back-off or leaves items to try again tells
    `resume` when to run again."""

    def __init__(
        self, runtime: Runtime, metrics: Metrics | None = None, sync: Sync | None = None
    ) -> None:
        self.runtime = runtime
        self.metrics = metrics
        self.sync = sync or runtime.sync
        """The sync this runner runs: the deployment's, or one site's of a group."""
        self.resume: Resume | None = None
        self._lock = threading.Lock()

    @property
    def job_suffix(self) -> str:
        site = self.sync.site_id if self.sync is not None else None
        return f":{site}" if site else ""

    def run(self, trigger: str, wait: bool = True) -> SyncReport | None:
        """A run; without `wait`, none (None) if a run of this process is under way (it plans
        what follows it)."""
        if self.sync is None:
            return None
        if not self._lock.acquire(blocking=wait):
            return None
        try:
            started = time.monotonic()
            report = sync_once(self.sync, trigger=trigger)
        finally:
            self._lock.release()
        if self.metrics is not None:
            self.metrics.run(trigger, report, started)
        self.plan_after(report)
        return report

    def plan_after(self, report: SyncReport) -> None:
        """Tell `resume` when a run should follow this report's, if one should."""
        later = _next_run(report)
        if self.resume is not None and later is not None:
            self.resume(self, later)


def _next_run(report: SyncReport) -> datetime | None:
    """When a run should follow this one: when its back-off ends or the EHR may be asked
    whether it is back; soon, if another process held the lease (a reconciliation, say, that
    plans nothing); or when the first item left to try again is due."""
    if report.probe_at or report.resume_at:
        return report.probe_at or report.resume_at
    if report.status == "busy":
        return datetime.now(UTC) + timedelta(seconds=LEASE_HELD_RETRY_SECONDS)
    if report.retry_at is not None:
        return report.retry_at + timedelta(seconds=RETRY_FOLD_SECONDS)
    return None


def resume_sync(runner: SyncRunner) -> None:
    """A run when the sync's back-off ends, when the EHR may be asked whether it is back, or
    when an item left to try again is due; none if a run of this process is under way (it
    plans the next when it ends), so that no scheduler thread waits for it."""
    runner.run("resume", wait=False)


def sync_to_ehr(runner: SyncRunner) -> None:
    """One scheduled sync run (the lease keeps it to one at a time across processes)."""
    runner.run("schedule")


def check_alerts(watch: AlertWatch, lease: HeldLease) -> None:
    """Check the alert conditions in one process at a time (a check that waits on the webhook
    may outlast its tick, and no incident is opened or told of twice)."""
    try:
        lease.run(watch.check)
    except Exception as exc:  # the store is down: the next check tries again
        log.error("the alert check failed: %s", type(exc).__name__)


def reconcile_with_ehr(
    runner: SyncRunner,
    patience: float = RECONCILE_PATIENCE_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """The nightly reconciliation of a sync (the deployment's, or a site's); a run of that sync
    under way (here or in another process) is waited for, up to `patience` seconds."""
    if runner.sync is None:
        return
    waited = 0.0
    while (report := reconcile_once(runner.sync)).status == "busy" and waited < patience:
        sleep(RECONCILE_RETRY_SECONDS)
        waited += RECONCILE_RETRY_SECONDS
    if report.status != "busy":
        runner.plan_after(report)  # it found the EHR down, say: the sync resumes when it may


def sync_runners(runtime: Runtime, metrics: Metrics | None = None) -> list[SyncRunner]:
    """A runner per sync: the deployment's one, or each site's, run apart so that one site's
    EHR being slow or down holds no other site's delivery."""
    return [SyncRunner(runtime, metrics, sync) for sync in runtime.syncs()]


def sync_trigger(settings: Settings) -> BaseTrigger:
    if settings.sync_cron:
        return CronTrigger.from_crontab(settings.sync_cron, timezone=UTC)
    return IntervalTrigger(seconds=settings.sync_interval_seconds, timezone=UTC)


def add_sync_jobs(scheduler: BaseScheduler, runner: SyncRunner) -> None:
    """The sync on its interval or cron, from now on, and the nightly reconciliation."""
    runtime = runner.runtime
    scheduler.add_job(
        sync_to_ehr,
        sync_trigger(runtime.settings),
        args=[runner],
        id=SYNC_JOB + runner.job_suffix,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.add_job(
        reconcile_with_ehr,
        CronTrigger.from_crontab(runtime.settings.reconcile_cron, timezone=UTC),
        args=[runner],
        id=RECONCILE_JOB + runner.job_suffix,
        max_instances=1,
        coalesce=True,
    )


class EventDelivery:
    """The event path (`ADAPTER_EVENT_DELIVERY`): records accepted wake the mapping (with
    `mapping`), resources queued wake the sync of their site (with an EHR), in this process
    directly and, on PostgreSQL, from any process through LISTEN/NOTIFY."""

    def __init__(
        self,
        runtime: Runtime,
        runners: SyncRunner | list[SyncRunner],
        mapping: bool,
        lease: HeldLease | None = None,
    ) -> None:
        gather = runtime.settings.event_gather_seconds
        # A wakeup per sync (per site of a group): each runs on its own thread, so that a
        # site whose EHR is slow holds no other site's run.
        self.syncs = {
            runner.sync.site_id: Wakeup(
                f"sync-on-event{runner.job_suffix}", _on_event(runner), gather
            )
            for runner in (runners if isinstance(runners, list) else [runners])
            if runner.sync is not None
        }
        self.mapping = (
            Wakeup(
                "map-on-event",
                lambda: _map_on_event(
                    runtime, self.resources_queued if self.syncs else None, lease
                ),
                gather,
            )
            if mapping
            else None
        )
        channels: dict[str, Callable[[str | None], None]] = {}
        if self.mapping is not None:
            channels[notices.RECORDS] = lambda _payload: self._wake_mapping()
        if self.syncs:
            channels[notices.OUTBOX] = self._outbox_notice
        engine = runtime.store.engine
        self.listener = (
            NoticeListener(engine, channels)
            if channels and engine.dialect.name == "postgresql"
            else None
        )

    def start(self) -> None:
        for part in (self.mapping, *self.syncs.values(), self.listener):
            if part is not None:
                part.start()

    def stop(self) -> None:
        for part in (self.listener, self.mapping, *self.syncs.values()):
            if part is not None:
                part.stop()

    def resources_queued(self, sites: Collection[str | None] | None = None) -> None:
        """Wake the syncs of the sites whose resources were queued (None: every sync); the
        one sync of a single-site deployment delivers whatever was queued."""
        for site, wakeup in self.syncs.items():
            if sites is None or site is None or site in sites:
                wakeup.pulse()

    def _wake_mapping(self) -> None:
        if self.mapping is not None:
            self.mapping.pulse()

    def _outbox_notice(self, payload: str | None) -> None:
        """A notice's payload names the site whose resources were queued ("": of no site);
        None (listening again after a lost connection) wakes every sync."""
        self.resources_queued(None if payload is None else {payload or None})


def _map_on_event(runtime: Runtime, on_queued: SitesQueued | None, lease: HeldLease | None) -> bool:
    """An event's mapping pass; True (try again soon) when another process maps now."""
    if lease is None:
        map_now(runtime, on_queued, level=logging.DEBUG)
        return False
    return not lease.run(lambda: map_now(runtime, on_queued, level=logging.DEBUG))


def _on_event(runner: SyncRunner) -> Callable[[], bool]:
    return lambda: _sync_on_event(runner)


def _sync_on_event(runner: SyncRunner) -> bool:
    """An event's run; True (try again soon) when another process holds the lease."""
    report = runner.run("event")
    return report is not None and report.status == "busy"


class Worker:
    """APScheduler in the service process: mapping, exports and the sync to the EHR, one pass
    of each at a time, woken early by intake, by export requests and by IT asking for a run;
    with the event path on, mapping and the sync are woken by what arrives, and the schedule
    is the safety net (and runs the nightly reconciliation). Each scheduled job runs once per
    tick across the processes on the store; the mapping pass, the export runs and the alert
    check also hold a lease while they run (docs/replicas.md)."""

    def __init__(
        self, runtime: Runtime, metrics: Metrics | None = None, alerts: AlertWatch | None = None
    ) -> None:
        self.scheduler = BackgroundScheduler(timezone=UTC)
        self.shared = SharedJobs(runtime.store.engine)
        leases = {job: self.shared.lease(name) for job, name in LEASES.items()}
        runners = sync_runners(runtime, metrics)
        self.events = (
            EventDelivery(runtime, runners, mapping=True, lease=leases[MAP_JOB])
            if runtime.settings.event_delivery
            else None
        )
        self._planning = threading.Lock()
        self._stopping = False
        for runner in runners:
            add_sync_jobs(self.scheduler, runner)
            runner.resume = self._resume
        if alerts is not None:
            self.scheduler.add_job(
                check_alerts,
                "interval",
                args=[alerts, leases[ALERT_JOB]],
                seconds=runtime.settings.alert_interval_seconds,
                id=ALERT_JOB,
                max_instances=1,
                coalesce=True,
            )
        queued = self.events.resources_queued if self.events is not None else None
        jobs = (
            (RELOAD_JOB, reload_mapping_files, [runtime]),
            (MAP_JOB, map_leased, [leases[MAP_JOB], runtime, queued]),
            (EXPORT_JOB, run_exports, [leases[EXPORT_JOB], runtime]),
            (EXPIRE_JOB, expire_exports, [runtime]),
        )
        for job_id, function, args in jobs:
            self.scheduler.add_job(
                function,
                "interval",
                args=args,
                seconds=runtime.settings.mapping_interval_seconds,
                id=job_id,
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )
        # A tick of these jobs with nothing to do is passed over after a read: an idle service
        # claims no tick and takes no lease, each a commit that waits for the disk.
        has_work = {
            MAP_JOB: lambda: runtime.mapping.queue.any_to_map(datetime.now(UTC)),
            EXPORT_JOB: runtime.exports.any_to_run,
            EXPIRE_JOB: runtime.exports.any_expired,
        }
        self.shared.share(self.scheduler, local=LOCAL_JOBS, has_work=has_work)

    def start(self) -> None:
        self.scheduler.start()
        if self.events is not None:
            self.events.start()

    def wake(self, job: str = MAP_JOB) -> None:
        """Run a job soon: records have just arrived, or an export or a sync was asked for."""
        if job == MAP_JOB and self.events is not None and self.events.mapping is not None:
            self.events.mapping.pulse()
        elif self.scheduler.running:
            # The sync of each site of a group is a job of its own (`sync-to-ehr:<site>`).
            for found in self.scheduler.get_jobs():
                if found.id == job or (job == SYNC_JOB and found.id.startswith(f"{job}:")):
                    self.shared.wake(found.id)
                    self.scheduler.modify_job(found.id, next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        # No run is planned once stopping: a job that plans one while the scheduler shuts
        # down would wait for the lock that the shutdown holds while it waits for the job.
        with self._planning:
            self._stopping = True
        if self.events is not None:
            self.events.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)

    def _resume(self, runner: SyncRunner, at: datetime) -> None:
        """Run the sync at `at`, not at the schedule's next tick: delivery resumes as soon as
        the back-off allows, and an item the EHR failed is tried again when its wait is over.
        One such run per sync is planned in this process, the earliest (a run too early for a
        back-off is deferred, and plans the next)."""
        job_id = RESUME_JOB + runner.job_suffix
        with self._planning:
            if self._stopping:
                return
            planned = self.scheduler.get_job(job_id)
            planned_at = getattr(planned, "next_run_time", None)
            if planned_at is not None and planned_at <= at:
                return
            self.scheduler.add_job(
                resume_sync,
                DateTrigger(at, timezone=UTC),
                args=[runner],
                id=job_id,
                replace_existing=True,
                misfire_grace_time=None,
                # The run that plans the next is itself this job: the next may start before
                # it has returned (and then finds it under way and leaves, `resume_sync`).
                max_instances=2,
            )
