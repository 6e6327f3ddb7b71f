"""The service's background work: mapping pending records, picking up edited mapping files."""

import logging
from datetime import UTC, datetime

from apscheduler.schedulers.background import BackgroundScheduler

from adapter.errors import MappingFileError
from adapter.runtime import Runtime

log = logging.getLogger(__name__)
MAP_JOB = "map-pending-records"
LARGE_LOAD = 10_000
"""Resources created in one mapping pass after which the planner statistics are refreshed."""
EXPORT_JOB = "run-exports"


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


class Worker:
    """APScheduler in the service process: mapping and exports, one pass of each at a time,
    woken early by intake and by export requests."""

    def __init__(self, runtime: Runtime) -> None:
        self.scheduler = BackgroundScheduler(timezone=UTC)
        runtime.exports.resume()
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
        """Run a job soon: records have just arrived, or an export was asked for."""
        if self.scheduler.running:
            self.scheduler.modify_job(job, next_run_time=datetime.now(UTC))

    def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=True)
