"""The sync run: one plain function that the scheduler, the CLI and the tests all call."""

import logging
import os
import socket
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Engine

from adapter.mapping.config import EhrRules, Site, load_ehr_rules
from adapter.settings import Settings
from adapter.store.outbox import Outbox, Outcome, Pending, urgent_queued
from adapter.store.records import RecordStore
from adapter.store.state import read_state, replace_state, write_state
from adapter.store.sync_state import Lease, PatientMatches, SyncRuns
from adapter.sync.auth import ehr_auth
from adapter.sync.capabilities import DeliveryPlan, check_statement, plan_delivery
from adapter.sync.client import Breaker, EhrClient
from adapter.sync.delivery import PARTIAL, Delivery, Staged
from adapter.sync.encounters import EhrEncounters
from adapter.sync.errors import (
    EhrAuthError,
    EhrConfigurationError,
    EhrError,
    EhrForbidden,
    EhrUnavailable,
    TemporaryEhrError,
)
from adapter.sync.outgoing import references
from adapter.sync.patients import PatientResolver

log = logging.getLogger(__name__)
CAPABILITIES = "ehr_capabilities"
BACKOFF = "sync_backoff"
LONGEST_BACKOFF = 3600.0
IN_FLIGHT = 3
"""Batches with the EHR at once: while the EHR works on one, the answers to the others are read
and the next are staged."""
STAGED_AHEAD = 12
"""Batches read and staged at a time, their possible creates noted in one commit (each commit
waits for the disk, and writes the pages it changed, which consecutive batches share): fewer
and larger reads cost the database less (docs/performance.md)."""
RECORDED_EVERY = 3
"""Batches' outcomes recorded in one commit, at most: a process killed loses no more unheard
answers than that (the next run searches the EHR for those creates)."""
InFlight = tuple[set[str], Future[list[Outcome]]]
"""The adapter ids of a batch sent, and its outcomes to come."""
COMPLETION_ROUNDS = 2
"""Rounds of updates, within a run, of resources first delivered without some references."""
ACTED_ON = ("delivered", "delivered_partially", "dead")
"""Outcomes that show the EHR answered: a run with none of these and some of WAITED_FOR
delivered nothing because of the EHR."""
WAITED_FOR = ("retry_later", "unconfirmed", "forbidden")
IN_EHR = ("delivered", "delivered_partially")
NEEDS_NOTICE = ("dead", "forbidden")
REFERENCE_DEPTH = 4
"""Steps of references followed from an urgent item to the due items it needs in the EHR first
(an Observation names its Procedure, which names its Encounter, which names its CarePlan)."""
UNASKED = ("schedule", "event", "resume")
"""Runs nobody asked for: deferred while the sync backs off, idle when nothing is due."""
SCHEDULED = ("schedule", "resume")
"""Runs on a time, not on something queued: they also try the items waiting for the EHR. A
`resume` run comes when a back-off ends or the EHR may be asked whether it is back."""


def utc_now() -> datetime:
    return datetime.now(UTC)


class LeaseLost(Exception):
    """Another process took over the sync: this run stops where it is."""


@dataclass
class SyncReport:
    status: str
    """completed, failed, busy (another run holds the lease), deferred (backing off) or idle
    (a scheduled run with nothing due: not recorded)."""
    run_id: int | None = None
    counts: Counter[str] = field(default_factory=Counter)
    error: str | None = None
    resume_at: datetime | None = None
    """Until when the sync backs off (a failed or deferred run)."""
    probe_at: datetime | None = None
    """When the EHR may next be asked whether it is back, before `resume_at` (`probe_ehr`)."""
    retry_at: datetime | None = None
    """When the first item left to try again later is due (None: none is, or the sync backs
    off, or another process runs it)."""
    own_retry: datetime | None = field(default=None, repr=False)
    """When the first item this run failed is due again."""
    cause: str | None = None
    """Why a failed run failed: `ehr` (unavailable, throttling, failing every request),
    `configuration` (the EHR or the adapter's settings need a person) or `internal`."""
    journeys: list[float] = field(default_factory=list)
    """Seconds from each record's receipt to its resource's first answer in the EHR, for the
    resource versions this run put there."""
    received: dict[str, datetime] = field(default_factory=dict, repr=False)
    """When the record of each item read was received, until its version is in the EHR."""


class Sync:
    """What a sync run works with: the store's outbox and runs, the EHR's client."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        records: RecordStore,
        site: Callable[[], Site],
        client: EhrClient | None = None,
        clock: Callable[[], datetime] = utc_now,
        sleep: Callable[[float], None] = time.sleep,
        site_id: str | None = None,
        rules: Callable[[], EhrRules] | None = None,
    ) -> None:
        if not settings.ehr_base_url:
            raise ValueError("ADAPTER_EHR_BASE_URL is not set: there is no EHR to sync to")
        self.settings = settings
        self.engine = engine
        self.records = records
        self.site = site
        self.site_id = site_id
        """The clinic site of a group whose resources this sync delivers to its EHR, with a
        lease, a back-off, runs and patient matches of its own; None: the one EHR of a
        single-site deployment."""
        self.ehr_rules = rules or (lambda: load_ehr_rules(settings.mappings_dir))
        self.clock = clock
        self.outbox = Outbox(engine, site_id)
        self.runs = SyncRuns(engine)
        self.patient_matches = PatientMatches(engine, site_id)
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = Lease(
            engine,
            self.state_name("sync"),
            self.holder,
            timedelta(seconds=settings.sync_lease_seconds),
        )
        self.client = client or EhrClient(
            base_url=settings.ehr_base_url,
            auth=ehr_auth(settings),
            timeout=settings.ehr_timeout_seconds,
            attempts=settings.ehr_retry_attempts,
            max_wait=settings.ehr_retry_max_wait_seconds,
            breaker=Breaker(settings.ehr_breaker_failures),
            proxy=settings.ehr_proxy_url,
            max_response_bytes=settings.ehr_max_response_bytes,
            sleep=sleep,
        )

    def state_name(self, name: str) -> str:
        """The name of a lease or a stored fact of this sync: a site's are its own."""
        return name if self.site_id is None else f"{name}:{self.site_id}"

    def plans(self, now: datetime, rules: EhrRules) -> dict[str, DeliveryPlan]:
        """Delivery plans from the EHR's CapabilityStatement (`statement`)."""
        return plan_delivery(self.statement(now, rules), rules)

    def statement(self, now: datetime, rules: EhrRules) -> dict[str, Any]:
        """The EHR's CapabilityStatement, read again when the cached copy is older than the
        refresh setting; an EHR that cannot answer now, or answers something else, leaves the
        cached copy in use. Only a CapabilityStatement is cached, and one announcing a FHIR
        version the site does not accept stops the run."""
        with self.engine.connect() as connection:
            cached = read_state(connection, self.state_name(CAPABILITIES))
        stored = orjson.loads(cached) if cached else None
        age = timedelta(minutes=self.settings.ehr_capabilities_refresh_minutes)
        if stored is None or now - datetime.fromisoformat(stored["fetched_at"]) >= age:
            try:
                statement = check_statement(self.client.request("GET", "metadata").body, rules)
            except TemporaryEhrError:
                if stored is None:
                    raise
            else:
                stored = {"fetched_at": now.isoformat(), "statement": statement}
                with self.engine.begin() as connection:
                    write_state(
                        connection, self.state_name(CAPABILITIES), orjson.dumps(stored).decode()
                    )
        return check_statement(stored["statement"], rules)

    def delivery(self, plans: dict[str, DeliveryPlan], rules: EhrRules) -> Delivery:
        """A run's deliveries, with what it learns of the EHR kept for the run."""
        refresh = timedelta(minutes=self.settings.ehr_patient_refresh_minutes)
        site = self.site()
        return Delivery(
            client=self.client,
            outbox=self.outbox,
            records=self.records,
            patients=PatientResolver(
                self.client, self.patient_matches, site.identifier_systems.mrn, refresh
            ),
            plans=plans,
            site=site,
            rules=rules,
            clock=self.clock,
            settle=timedelta(seconds=self.settings.ehr_settle_seconds),
            item_retry=self.settings.ehr_item_retry_seconds,
            encounters=self._ehr_encounters(rules),
        )

    def _ehr_encounters(self, rules: EhrRules) -> EhrEncounters | None:
        """The EHR's own Encounters, where ehr.yaml says its visits are the EHR's to keep."""
        system = rules.encounters.identifier_system
        if rules.encounters.use != "ehr" or system is None:
            return None
        return EhrEncounters(self.client, self.outbox, system)

    def backoff_state(self) -> "BackOff":
        with self.engine.connect() as connection:
            return BackOff.parse(read_state(connection, self.state_name(BACKOFF)))

    def store_backoff(self, state: "BackOff") -> None:
        with self.engine.begin() as connection:
            write_state(connection, self.state_name(BACKOFF), state.dumps())

    def replace_backoff(self, old: "BackOff", new: "BackOff") -> bool:
        """Store `new` if the back-off is still `old`: False when another process changed it."""
        with self.engine.begin() as connection:
            return replace_state(connection, self.state_name(BACKOFF), old.dumps(), new.dumps())


@dataclass(frozen=True)
class BackOff:
    """The whole sync's back-off from an EHR that is down, as stored."""

    until: datetime | None = None
    seconds: float = 0.0
    """The length of the last back-off: the next one is twice as long."""
    probe_at: datetime | None = None
    """When the EHR may be asked whether it is back, before `until` (None: it is not asked)."""
    probed: bool = False
    """The last back-off ended early, on the EHR's answer to a probe."""
    since: datetime | None = None
    """When the first run that the EHR failed for being down started, of those since the last
    run that succeeded: what the EHR failed since then is due again when the sync resumes
    (None: nothing is owed that)."""

    @classmethod
    def parse(cls, value: str | None) -> "BackOff":
        if not value:
            return cls()
        state = orjson.loads(value)
        return cls(
            _instant(state["until"]),
            state["seconds"],
            _instant(state.get("probe_at")),
            state.get("probed", False),
            _instant(state.get("since")),
        )

    def dumps(self) -> str:
        value = {
            "until": self.until.isoformat() if self.until else None,
            "seconds": self.seconds,
            "probe_at": self.probe_at.isoformat() if self.probe_at else None,
            "probed": self.probed,
            "since": self.since.isoformat() if self.since else None,
        }
        return orjson.dumps(value).decode()


def _instant(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def sync_once(
    sync: Sync, trigger: str = "schedule", progress: Callable[[int], None] | None = None
) -> SyncReport:
    """One run: deliver every due outbox item, in delivery order, in batches, the urgent ones
    first (`_run`). A run nobody asked for while the sync backs off from a down EHR is
    deferred, unless the EHR answers a probe (`probe_ehr`), and one with nothing due is idle;
    a run while another holds the lease does nothing. Every run that starts is recorded with
    its counts."""
    state = sync.backoff_state()
    unasked = trigger in UNASKED
    if unasked and state.until is not None and state.until > sync.clock():
        state = probe_ehr(sync, state)
        if state.until is not None:
            return SyncReport("deferred", resume_at=state.until, probe_at=state.probe_at)
    # Waiting items (a patient not in the EHR yet) are tried by every scheduled run, but do not
    # make an event's run by themselves: a wake with nothing new due does nothing. An item that
    # waits only for what it references makes no run either (the run delivering that does).
    # The first run after a back-off from a down EHR always starts (`_owed_after_outage`).
    if state.since is not None:
        idle = False
    elif trigger in SCHEDULED:
        idle = not sync.outbox.run_wanted(sync.clock())
    else:
        idle = unasked and not sync.outbox.any_due(sync.clock())
    report = (
        SyncReport("idle")
        if idle
        else leased_run(sync, trigger, lambda report: _run(sync, report, progress or _quiet))
    )
    # An event's wake with nothing due changes no item's wait: the runs before it planned what
    # to try again (a MIN over the waiting items, tens of milliseconds over a large backlog).
    planned = report.status == "busy" or (report.status == "idle" and trigger not in SCHEDULED)
    if not planned and report.resume_at is None:
        report.retry_at = _next_retry(sync, report)
    return report


def _next_retry(sync: Sync, report: SyncReport) -> datetime | None:
    """When the sync has something to try again: the first item that waits to be tried again
    (the run's own, also one whose wait ended while the run went on, and any other), or None.
    A store that cannot say is left to the schedule."""
    now = sync.clock()
    try:
        waiting = sync.outbox.next_retry(now)
    except Exception as exc:  # the store is down: the schedule tries again
        log.warning("the next retry could not be read: %s", type(exc).__name__)
        return None
    own = report.own_retry
    if own is not None and own <= now:
        own = now  # due while the run went on, after it had read past the item
    return min((found for found in (waiting, own) if found is not None), default=None)


def probe_ehr(sync: Sync, state: BackOff) -> BackOff:
    """While the sync backs off from an EHR that was down, ask the EHR whether it is back: one
    request for its CapabilityStatement once `state.probe_at` has come, neither retried nor
    counted by the breaker, by one of the processes on the store (it claims the probe in the
    store first, for as long as the request may take). Answers the back-off after it: over
    (`until` None) when the EHR answered, its length kept (a run that fails again backs off
    twice as long, and asks no more until a run succeeds); a Retry-After in the answer moves
    the next probe, and the back-off's end if it asks for longer."""
    now = sync.clock()
    if state.until is None or state.probe_at is None or state.probe_at > now:
        return state
    every = timedelta(seconds=sync.settings.ehr_probe_seconds)
    longest = timedelta(seconds=sync.client.timeout)
    claimed = replace(state, probe_at=_before(now + every + longest, state.until))
    if not sync.replace_backoff(state, claimed):
        return sync.backoff_state()  # another process asks the EHR now
    try:
        sync.client.probe()
    except TemporaryEhrError as exc:
        after = sync.clock()
        asked = timedelta(seconds=exc.retry_after or 0.0)
        until = max(state.until, after + asked)
        later = replace(claimed, until=until, probe_at=_before(after + max(every, asked), until))
        return later if sync.replace_backoff(claimed, later) else sync.backoff_state()
    except EhrError:
        pass  # a refusal is an answer: the run that follows tells what is wrong
    over = replace(state, until=None, probe_at=None, probed=True)
    if not sync.replace_backoff(claimed, over):
        return sync.backoff_state()
    log.info("the EHR answered while the sync backed off: delivery resumes")
    return over


def _before(moment: datetime, until: datetime) -> datetime | None:
    return moment if moment < until else None


def _quiet(_: int) -> None:
    return None


def leased_run(sync: Sync, trigger: str, work: Callable[[SyncReport], None]) -> SyncReport:
    """Run `work` holding the sync lease, recorded in the runs table; an EHR that is down,
    and a configuration the EHR refuses, set the whole sync's back-off (the EHR's Retry-After
    at least), and a successful run clears it."""
    if not sync.lease.acquire(sync.clock()):
        return SyncReport("busy")
    started = sync.clock()
    run_id = sync.runs.start(trigger, sync.holder, started, sync.site_id)
    report = SyncReport("completed", run_id=run_id)
    sync.client.start_run()
    try:
        work(report)
        # Over; what the EHR failed while down stays owed if this run did not make it due
        # (a reconciliation). Written only if it changes: most runs follow no back-off.
        last = sync.backoff_state()
        if last != BackOff(since=last.since):
            sync.store_backoff(BackOff(since=last.since))
    except (EhrUnavailable, TemporaryEhrError) as exc:
        until = _back_off(sync, report, exc.retry_after, outage=started)
        report.status, report.cause = "failed", "ehr"
        report.error = f"the EHR is unavailable ({exc}); the sync backs off until {until}"
    except EhrConfigurationError as exc:
        until = _back_off(sync, report, None, outage=None)
        report.status, report.cause = "failed", "configuration"
        report.error = f"{exc}; the sync backs off until {until}"
    except EhrAuthError as exc:
        report.status, report.cause, report.error = "failed", "configuration", str(exc)
    except LeaseLost:
        report.status, report.error = "failed", "another process took over the sync lease"
        report.cause = "internal"
    except Exception as exc:
        report.status, report.error = "failed", f"{type(exc).__name__} (see the service log)"
        report.cause = "internal"
        log.exception("sync run %d failed", report.run_id)
    finally:
        assert report.run_id is not None
        counts = dict(report.counts)
        sync.runs.finish(report.run_id, report.status, counts, report.error, sync.clock())
        sync.lease.release()
    # Runs woken by events are many and alike: logged at DEBUG unless one failed or the EHR
    # refused something in it (what waits is listed for IT, not logged by every run).
    plain = report.status == "completed" and not set(report.counts) & set(NEEDS_NOTICE)
    if report.status == "failed":
        log.warning("%s run %d failed: %s %s", trigger, report.run_id, report.error, counts)
    else:
        level = logging.DEBUG if trigger == "event" and plain else logging.INFO
        log.log(level, "%s run %d %s: %s", trigger, report.run_id, report.status, counts)
    return report


def _back_off(sync: Sync, report: SyncReport, asked: float | None, outage: datetime | None) -> str:
    """The whole sync backs off: the first back-off, doubled on each failed run up to an hour,
    and at least what the EHR asked for. With `outage` (the start of a run the EHR failed for
    being down, not for refusing the configuration), the EHR is asked whether it is back every
    ADAPTER_EHR_PROBE_SECONDS meanwhile, never before what it asked for, and not after a probe
    it answered misled the sync (the run after it failed again); what it failed from the
    first such run on is due when the sync resumes."""
    last = sync.backoff_state()
    seconds = min(LONGEST_BACKOFF, last.seconds * 2 or sync.settings.ehr_breaker_seconds)
    seconds = max(seconds, asked or 0.0)
    now = sync.clock()
    report.resume_at = now + timedelta(seconds=seconds)
    if outage is not None and not last.probed:
        first = max(sync.settings.ehr_probe_seconds, asked or 0.0)
        report.probe_at = _before(now + timedelta(seconds=first), report.resume_at)
    since = last.since or outage
    sync.store_backoff(BackOff(report.resume_at, seconds, report.probe_at, last.probed, since))
    return f"{report.resume_at:%Y-%m-%dT%H:%M:%SZ}"


def _owed_after_outage(sync: Sync) -> None:
    """A run after a back-off from a down EHR, holding the lease: what the EHR failed while it
    was down is due now, though each item had been given a wait of its own, doubled at each
    attempt, that the outage stretched past the EHR's return (`Outbox.due_after_outage`).
    Done once: a run that fails again owes only what it failed itself."""
    state = sync.backoff_state()
    if state.since is None:
        return
    settle = timedelta(seconds=sync.settings.ehr_settle_seconds)
    sync.outbox.due_after_outage(sync.clock(), settle, state.since)
    sync.replace_backoff(state, replace(state, since=None))


def _run(sync: Sync, report: SyncReport, progress: Callable[[int], None]) -> None:
    _owed_after_outage(sync)
    rules = sync.ehr_rules()
    plans = sync.plans(sync.clock(), rules)
    delivery = sync.delivery(plans, rules)
    deliverable = [t for t, plan in plans.items() if plan.deliver]
    sync.outbox.requeue(sync.clock(), ["skipped"], kinds=deliverable)
    sync.outbox.wake_waiting(sync.clock())
    size = sync.settings.sync_batch_size
    unrecorded: list[Outcome] = []
    in_flight: deque[InFlight] = deque()
    ready: deque[Staged] = deque()
    """Batches staged, their creates noted, in delivery order."""

    def answered() -> None:
        """The oldest batch in flight, waited for: its outcomes join those to record."""
        _, sending = in_flight.popleft()
        outcomes = sending.result()
        unrecorded.extend(outcomes)
        progress(len(outcomes))
        if len(unrecorded) >= size * RECORDED_EVERY:
            record_answered()
        if sync.client.breaker.open:
            raise EhrUnavailable("the EHR failed too many requests in a row")
        if sync.client.asked_to_wait is not None:
            asked = sync.client.asked_to_wait
            raise EhrUnavailable(f"the EHR asked the sync to wait {asked:.0f} s", asked)

    recording: deque[tuple[list[Outcome], Future[None]]] = deque()
    """Outcomes being recorded (by `recorder`), in the order they were answered."""
    stopping = threading.Event()
    """Set when the run stops on an error: the reader notes no more creates."""

    def record_answered(wait: bool = False) -> None:
        """The outcomes answered so far recorded by `recorder`, one commit after another, while
        this thread stages and sends; with `wait`, every recording finished. A recording that
        failed fails the run, which records those outcomes again on its way out."""
        if unrecorded:
            outcomes = list(unrecorded)
            recording.append((outcomes, recorder.submit(_settle, sync, report, outcomes)))
            unrecorded.clear()
        while recording and (wait or recording[0][1].done()):
            recording[0][1].result()
            recording.popleft()

    position: tuple[int, str] | None = None
    """The key of the last item read in delivery order."""
    taken: set[str] = set()
    """The items read by this run: each is read once, whichever way it was found."""
    hint = urgent_queued(sync.outbox.site)
    prefetched: Future[tuple[list[Pending], list[Pending]]] | None = None
    """The next read in delivery order, after `position`, asked of the store (by `reader`) as
    soon as the one before it was read, so that the run does not wait for it when it stages the
    next batches."""

    def read_noted(
        now: datetime, after: tuple[int, str] | None, limit: int, passed: set[str]
    ) -> tuple[list[Pending], list[Pending]]:
        """The next items due (`Outbox.next_due`), the creates among them noted and committed
        before they are handed over (`Delivery.note_ahead`): the commit waits for the disk, and
        is made here, ahead of time, rather than where the run stages and sends."""
        urgent, following = sync.outbox.next_due(now, after, limit, passed)
        if not stopping.is_set():  # else read for nothing: the run stops
            delivery.note_ahead(urgent + following)
        return urgent, following

    def read_ahead(urgent_only: bool = False) -> None:
        """The urgent items due (side effects, protocol breaches, vitals outside their
        thresholds, queued whenever) and the next STAGED_AHEAD batches in delivery order, read
        and staged, the urgent first; their possible creates noted and committed before any
        of them is sent (`Delivery.note_ahead`). With `urgent_only`, the urgent items
        alone, staged ahead of the batches read before."""
        nonlocal position, prefetched
        hint.clear()
        if urgent_only:
            urgent = sync.outbox.urgent_due(sync.clock(), size * STAGED_AHEAD, taken)
            if not urgent:
                return
            following: list[Pending] = []
        elif prefetched is not None:
            urgent, following = prefetched.result()
            prefetched = None
        else:
            urgent, following = read_noted(sync.clock(), position, size * STAGED_AHEAD, taken)
        # A read made ahead of time may hold urgent items that a read since has taken.
        urgent = [p for p in urgent if p.item.resource_id not in taken]
        urgent = _with_references(sync, urgent, taken)
        taken.update(p.item.resource_id for p in urgent)
        if following:
            position = following[-1].item.key
        following = [p for p in following if p.item.resource_id not in taken]
        taken.update(p.item.resource_id for p in following)
        if following and not urgent_only:
            prefetched = reader.submit(
                read_noted,
                sync.clock(),
                position,
                size * STAGED_AHEAD,
                taken,  # only looked up, never walked: growing meanwhile, it passes over more
            )
        read = urgent + following
        report.received.update(
            (p.item.resource_id, p.item.received_at) for p in read if p.item.received_at
        )
        # What this thread read itself (urgent items, what they reference) is noted here.
        delivery.note_ahead(read)
        while in_flight and in_flight[0][1].done():
            answered()
        record_answered()
        delivery.read_facts(read)
        staged = [
            delivery.stage(part[start : start + size])
            for part in (urgent, following)
            for start in range(0, len(part), size)
        ]
        if urgent_only:
            # Ahead of the batches read before, after those of them holding what they reference.
            needed = {target for batch in staged for target in batch.targets}
            first = [b for b in ready if any(p.item.resource_id in needed for p in b.ready)]
            rest = [b for b in ready if all(b is not f for f in first)]
            ready.clear()
            ready.extend(first + staged + rest)
        else:
            ready.extend(staged)

    # A pipeline: while the EHR works on up to IN_FLIGHT batches (in sender threads), this
    # thread stages the next, the reader reads the ones after them and notes their possible
    # creates in a commit that lands before they are handed over, and the recorder records the
    # outcomes answered, in the order they were answered.
    # A batch that references a resource of a batch in flight waits for that batch's answer,
    # which brings the EHR's id to put in the reference.
    with (
        ThreadPoolExecutor(max_workers=IN_FLIGHT, thread_name_prefix="sync-send") as sender,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-read") as reader,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="sync-record") as recorder,
    ):
        try:
            read_ahead()
            while ready:
                if not sync.lease.renew(sync.clock()):
                    raise LeaseLost  # what this run did is kept all the same, below
                if hint.is_set():
                    read_ahead(urgent_only=True)
                staged = ready.popleft()
                while in_flight and (len(in_flight) == IN_FLIGHT or _waits_for(staged, in_flight)):
                    answered()
                ids = {p.item.resource_id for p in staged.ready}
                in_flight.append((ids, sender.submit(_send, sync, delivery, staged)))
                if not ready:
                    read_ahead()
            while in_flight:
                answered()
            record_answered(wait=True)
        except BaseException:
            # What the EHR answered is kept before the run stops.
            stopping.set()
            for outcomes, pending in recording:
                try:
                    pending.result()
                except Exception as exc:
                    log.warning(
                        "sync run %s: recording %d outcomes failed (%s); recorded again",
                        report.run_id,
                        len(outcomes),
                        type(exc).__name__,
                    )
                    with suppress(Exception):
                        _settle(sync, report, outcomes)
            with suppress(Exception):
                _settle(sync, report, unrecorded)
            for _, sending in in_flight:
                with suppress(Exception):
                    _settle(sync, report, sending.result())
            raise
    for _ in range(COMPLETION_ROUNDS):
        late = delivery.completable()
        if late:
            sync.outbox.requeue(sync.clock(), ["waiting"], ids=late)
        partial = sorted(delivery.partial.union(late))
        delivery.partial.clear()
        for start in range(0, len(partial), sync.settings.sync_batch_size):
            chunk = partial[start : start + sync.settings.sync_batch_size]
            batch = sync.outbox.due(sync.clock(), None, len(chunk), ids=chunk)
            _settle(sync, report, delivery.deliver(batch))
    _stopped_by_the_ehr(report, delivery, sync.client.asked_to_wait)


def _stopped_by_the_ehr(report: SyncReport, delivery: Delivery, asked: float | None) -> None:
    """A run that the EHR forbade writes to fails as a configuration error; one whose every
    item waits for the EHR (nothing delivered, nothing refused) fails as the EHR's."""
    if delivery.forbidden:
        types = ", ".join(sorted(delivery.forbidden))
        reason = next(iter(delivery.forbidden.values()))
        raise EhrForbidden(f"the EHR forbids the adapter to write {types}: {reason}")
    waited = sum(report.counts[kind] for kind in WAITED_FOR)
    if waited and not any(report.counts[kind] for kind in ACTED_ON):
        last = delivery.failures[-1] if delivery.failures else "no answer"
        raise EhrUnavailable(
            f"nothing was delivered; {waited} resources wait for it: {last}", asked
        )


def _with_references(sync: Sync, urgent: list[Pending], taken: set[str]) -> list[Pending]:
    """The urgent items with the due items they reference (an Encounter, a Procedure, and
    what those reference), which must be in the EHR first, in delivery order."""
    found = {p.item.resource_id: p for p in urgent}
    wanted = references(p.content for p in urgent) - found.keys() - taken
    for _ in range(REFERENCE_DEPTH):
        if not wanted:
            break
        more = sync.outbox.due(sync.clock(), None, len(wanted), ids=sorted(wanted))
        found.update((p.item.resource_id, p) for p in more)
        wanted = references(p.content for p in more) - found.keys() - taken
    return sorted(found.values(), key=lambda p: p.item.key)


def _send(sync: Sync, delivery: Delivery, staged: Staged) -> list[Outcome]:
    """A staged batch sent (in a sender thread); its outcomes say when it was sent, but for
    those settled without a request (`Outcome.sent`)."""
    sent = sync.clock()
    return [o._replace(requested_at=sent) if o.sent else o for o in delivery.send(staged)]


def _waits_for(staged: Staged, in_flight: Iterable[InFlight]) -> bool:
    """Whether the staged batch references a resource whose EHR id a batch in flight brings."""
    return any(not ids.isdisjoint(staged.targets) for ids, _ in in_flight)


def _settle(sync: Sync, report: SyncReport, outcomes: Sequence[Outcome]) -> None:
    now = sync.clock()
    sync.outbox.record(outcomes, now)
    for outcome in outcomes:
        kind = _kind(outcome)
        report.counts[kind] += 1
        if kind in WAITED_FOR and (
            report.own_retry is None or outcome.next_attempt_at < report.own_retry
        ):
            report.own_retry = outcome.next_attempt_at
        if kind in IN_EHR:
            received = report.received.pop(outcome.resource_id, None)
            if received is not None:
                report.journeys.append((now - received).total_seconds())


def _kind(outcome: Outcome) -> str:
    if outcome.state != "pending":
        return outcome.state
    detail: dict[str, Any] = outcome.detail or {}
    if detail.get("reason") == PARTIAL:
        return "delivered_partially"
    if detail.get("forbidden"):
        return "forbidden"
    return "unconfirmed" if detail.get("unconfirmed") else "retry_later"
