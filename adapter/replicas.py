"""Several service processes (replicas) on one store: each scheduled job runs once per tick
across them, the work jobs one at a time under a lease, and what a process keeps in memory
(checked keys and tokens, the mapping in use) follows a change made through another."""

import logging
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from apscheduler.schedulers.base import BaseScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import Engine

from adapter.errors import MappingFileError
from adapter.runtime import Runtime
from adapter.store import notices
from adapter.store.job_ticks import JobTicks
from adapter.store.notices import NoticeListener
from adapter.store.sync_state import Lease
from adapter.wakeups import Wakeup

log = logging.getLogger(__name__)
ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)
"""Where every interval's ticks are counted from: the processes' schedules fire together."""
LEASE_SECONDS = 10.0
"""How long a work job's lease lasts without being renewed: a process that dies mid-run holds
its job for at most this long. A run renews it every third of this time."""


def holder_name() -> str:
    """This process, as it names itself in leases and ticks (64 characters at most)."""
    return f"{socket.gethostname()[:40]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def interval_slot(seconds: float, now: datetime) -> datetime:
    """The tick of an interval that `now` falls in, counted from ANCHOR."""
    period = timedelta(seconds=seconds)
    return ANCHOR + period * ((now - ANCHOR) // period)


def minute_slot(now: datetime) -> datetime:
    """The tick of a crontab schedule (they fire at most once a minute)."""
    return now.replace(second=0, microsecond=0)


class SharedJobs:
    """Keeps the scheduled jobs of the processes on one store to one run per tick: the first
    process to claim a job's tick runs it, the others skip it. A run asked for explicitly
    (`wake`: records arrived, IT asked for a sync) is not a tick and is not skipped. The work
    jobs (mapping, exports) also hold a lease while they run, so that a run asked for and a
    scheduled one in another process never work at once."""

    def __init__(
        self,
        engine: Engine,
        holder: str | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.engine = engine
        self.ticks = JobTicks(engine)
        self.holder = holder or holder_name()
        self.clock = clock
        self._woken: set[str] = set()
        self._lock = threading.Lock()

    def wake(self, job: str) -> None:
        """The job's next run was asked for: it runs whoever ran the tick."""
        with self._lock:
            self._woken.add(job)

    def _take_wake(self, job: str) -> bool:
        with self._lock:
            woken = job in self._woken
            self._woken.discard(job)
        return woken

    def claim(self, job: str, slot: datetime) -> bool:
        return self.ticks.claim(job, slot, self.holder, self.clock())

    def once_per_tick(
        self,
        job: str,
        slot: Callable[[datetime], datetime],
        function: Callable[..., Any],
        has_work: Callable[[], bool] | None = None,
    ) -> Callable[..., None]:
        """`function` wrapped to run only in the process that claims the tick. With `has_work`
        (a read: is there work for the job?), a tick with no work is passed over before it is
        claimed, so that an idle service writes nothing to the store on its ticks."""

        def run(*args: Any, **kwargs: Any) -> None:
            if self._take_wake(job):
                function(*args, **kwargs)
            elif has_work is not None and not has_work():
                log.debug("%s: nothing to do", job)
            elif self.claim(job, slot(self.clock())):
                function(*args, **kwargs)
            else:
                log.debug("%s: this tick runs in another process", job)

        run.__name__ = getattr(function, "__name__", job)
        run.__wrapped__ = function  # type: ignore[attr-defined]
        return run

    def lease(self, name: str, seconds: float = LEASE_SECONDS) -> "HeldLease":
        return HeldLease(Lease(self.engine, name, self.holder, timedelta(seconds=seconds)))

    def share(
        self,
        scheduler: BaseScheduler,
        local: Iterable[str] = (),
        has_work: Mapping[str, Callable[[], bool]] | None = None,
    ) -> None:
        """Make every job of `scheduler` (not yet started) on an interval or a crontab run once
        per tick across the processes, except those named in `local` (work each process does
        for itself); a job named in `has_work` claims a tick only when its function there says
        there is work. An interval's ticks are counted from ANCHOR in every process, so that
        their schedules fire together and a tick is one moment everywhere."""
        has_work = has_work or {}
        kept = set(local)
        for job in scheduler.get_jobs():
            if job.id in kept:
                continue
            if getattr(job, "next_run_time", None) is not None:
                # A job that runs when the process starts catches up on what a stopped process
                # left (its exports, its outbox): that run is no tick, it is not skipped.
                self.wake(job.id)
            trigger = job.trigger
            if isinstance(trigger, IntervalTrigger):
                seconds = trigger.interval.total_seconds()
                aligned = IntervalTrigger(seconds=seconds, start_date=ANCHOR, timezone=UTC)
                changes: dict[str, Any] = {"trigger": aligned}
                slot: Callable[[datetime], datetime] = _interval(seconds)
            elif isinstance(trigger, CronTrigger):
                changes, slot = {}, minute_slot
            else:  # a one-off run (a date): this process's own
                continue
            shared = self.once_per_tick(job.id, slot, job.func, has_work.get(job.id))
            scheduler.modify_job(job.id, func=shared, **changes)


def _interval(seconds: float) -> Callable[[datetime], datetime]:
    return lambda now: interval_slot(seconds, now)


class HeldLease:
    """A lease held while a job runs, renewed by a thread every third of its time, released at
    the end. `run` answers False, without running, when another process holds it, or another
    run of this process."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease
        self._here = threading.Lock()
        """Held by the run under way in this process: the lease's holder is the process, and
        a second run here would take it again and release it under the first."""

    def run(self, work: Callable[[], Any]) -> bool:
        if not self._here.acquire(blocking=False):
            return False
        try:
            return self._run(work)
        finally:
            self._here.release()

    def _run(self, work: Callable[[], Any]) -> bool:
        lease = self.lease
        if not lease.acquire(datetime.now(UTC)):
            return False
        done = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(done,), daemon=True)
        renewer.start()
        try:
            work()
        finally:
            done.set()
            renewer.join()
            lease.release()
        return True

    def _renew(self, done: threading.Event) -> None:
        every = self.lease.ttl.total_seconds() / 3
        while not done.wait(every):
            try:
                kept = self.lease.renew(datetime.now(UTC))
            except Exception as exc:  # the store is down: the run's own writes fail as well
                log.warning("could not renew the %s lease: %s", self.lease.name, type(exc).__name__)
                continue
            if not kept:
                log.warning("the %s lease ran out; another process took it", self.lease.name)


class CacheNotices:
    """On PostgreSQL, a thread that hears a client changed (a revocation) or the mapping
    version changed, in any process, and acts at once: forgets the checked keys and tokens,
    loads the mapping files again (on a thread of its own). Without it (SQLite, or while the
    connection is lost) the caches' own limits hold: CACHE_SECONDS, the mapping interval."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.listener: NoticeListener | None = None
        self.reload: Wakeup | None = None

    def start(self) -> None:
        """Listen (on PostgreSQL); threads of their own each time, as an app may be started
        and stopped more than once (tests do)."""
        engine = self.runtime.store.engine
        if engine.dialect.name != "postgresql" or self.listener is not None:
            return
        runtime = self.runtime
        self.reload = Wakeup("reload-on-notice", lambda: _reload(runtime), gather=0.05)
        reload = self.reload
        actions: dict[str, Callable[[str | None], None]] = {
            notices.CLIENTS: lambda _: runtime.clients.forget(),
            notices.MAPPINGS: lambda _: reload.pulse(),
        }
        self.listener = NoticeListener(engine, actions)
        self.reload.start()
        self.listener.start()

    def stop(self) -> None:
        if self.listener is not None:
            self.listener.stop()
            self.listener = None
        if self.reload is not None:
            self.reload.stop()
            self.reload = None


def _reload(runtime: Runtime) -> bool:
    try:
        runtime.reload_mappings()
    except MappingFileError as exc:
        log.error("the mapping version changed but the files here are broken:\n%s", exc)
    return False
