"""The service's background work: mapping pending records, picking up edited mapping files,
exports, the sync to the EHR and the alert checks."""

import logging
import time
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from adapter.errors import MappingFileError
from adapter.operations.alerts import AlertWatch
from adapter.operations.metrics import Metrics
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.sync.engine import sync_once
from adapter.sync.reconcile import reconcile_once

log = logging.getLogger(__name__)
MAP_JOB = "map-pending-records"
LARGE_LOAD = 10_000
"""Resources created in one mapping pass after which the planner statistics are refreshed."""
EXPORT_JOB = "run-exports"
SYNC_JOB = "sync-to-ehr"
RECONCILE_JOB = "reconcile-with-ehr"
ALERT_JOB = "check-alerts"


def map_pending(runtime: Runtime) -> None:
    """One mapping pass: reload changed mapping files, then map what is pending."""
    try:
        runtime.reload_mappings()
    except MappingFileError as exc:
        log.error(
            "mapping files changed but are broken; the previous mapping stays in use:\n%s", exc
        )
    report = runtime.mapping.run()
    if report.resources.created >= LARGE_LOAD:
        runtime.resources.refresh_statistics()
    if report.records:
        log.info(
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


def run_exports(runtime: Runtime) -> None:
    """Write the files of queued $export jobs; remove the files of expired ones."""
    done = runtime.exports.run()
    expired = runtime.exports.expire()
    if done or expired:
        log.info("exports: %d completed, %d expired", done, expired)


def sync_to_ehr(runtime: Runtime, metrics: Metrics | None = None) -> None:
    """One scheduled sync run (the lease keeps it to one at a time across processes)."""
    if runtime.sync is not None:
        started = time.monotonic()
        report = sync_once(runtime.sync, trigger="schedule")
        if metrics is not None:
            metrics.run("schedule", report, started)


def check_alerts(watch: AlertWatch) -> None:
    try:
        watch.check()
    except Exception as exc:  # the store is down: the next check tries again
        log.error("the alert check failed: %s", type(exc).__name__)


def reconcile_with_ehr(runtime: Runtime) -> None:
    if runtime.sync is not None:
        reconcile_once(runtime.sync)


def sync_trigger(settings: Settings) -> BaseTrigger:
    if settings.sync_cron:
        return CronTrigger.from_crontab(settings.sync_cron, timezone=UTC)
    return IntervalTrigger(seconds=settings.sync_interval_seconds, timezone=UTC)


def add_sync_jobs(
    scheduler: BaseScheduler, runtime: Runtime, metrics: Metrics | None = None
) -> None:
    """The sync on its interval or cron, from now on, and the nightly reconciliation."""
    scheduler.add_job(
        sync_to_ehr,
        sync_trigger(runtime.settings),
        args=[runtime, metrics],
        id=SYNC_JOB,
        max_instances=1,
        coalesce=True,
        next_run_time=datetime.now(UTC),
    )
    scheduler.add_job(
        reconcile_with_ehr,
        CronTrigger.from_crontab(runtime.settings.reconcile_cron, timezone=UTC),
        args=[runtime],
        id=RECONCILE_JOB,
        max_instances=1,
        coalesce=True,
    )


class Worker:
    """APScheduler in the service process: mapping, exports and the sync to the EHR, one pass
    of each at a time, woken early by intake, by export requests and by IT asking for a run."""

    def __init__(
        self, runtime: Runtime, metrics: Metrics | None = None, alerts: AlertWatch | None = None
    ) -> None:
        self.scheduler = BackgroundScheduler(timezone=UTC)
        runtime.exports.resume()
        if runtime.sync is not None:
            add_sync_jobs(self.scheduler, runtime, metrics)
        if alerts is not None:
            self.scheduler.add_job(
                check_alerts,
                "interval",
                args=[alerts],
                seconds=runtime.settings.alert_interval_seconds,
                id=ALERT_JOB,
                max_instances=1,
                coalesce=True,
            )
        for job_id, function in ((MAP_JOB, map_pending), (EXPORT_JOB, run_exports)):
            self.scheduler.add_job(
                function,
                "interval",
                args=[runtime],
                seconds=runtime.settings.mapping_interval_seconds,
                id=job_id,
                max_instances=1,
                coalesce=True,
                next_run_time=datetime.now(UTC),
            )

    def start(self) -> None:
        self.scheduler.start()

    def wake(self, job: str = MAP_JOB) -> None:
        """Run a job soon: records have just arrived, or an export or a sync was asked for."""
        if self.scheduler.running and self.scheduler.get_job(job) is not None:
            self.scheduler.modify_job(job, next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
