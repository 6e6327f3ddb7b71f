"""A side effect queued while a sync run works through a backlog goes to the EHR before the
batches the run has read ahead, and only its own site's run is told of it; the creates of each
batch are noted in a commit before the batch is sent."""

import threading
from typing import Any

import orjson
import pytest
from sqlalchemy import select

from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.engine import make_engine
from adapter.store.outbox import Outbox, Pending, urgent_queued
from adapter.store.tables import sync_outbox
from adapter.sync import engine
from adapter.sync.delivery import Staged
from adapter.sync.engine import Sync, sync_once
from tests.conftest import adverse_event, ndjson, session, vitals
from tests.sites import NORTH, SOUTH, add_sites
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import in_batches_of
from tests.sync.test_events import breach_session
from tests.sync.test_faults import load_synthetic


class Sends:
    """The batches a run hands to the EHR, in order (as each sender thread starts on one)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.batches: list[set[str]] = []
        self._lock = threading.Lock()
        send = engine._send

        def noted(sync: Sync, delivery: Any, staged: Staged) -> Any:
            with self._lock:
                self.batches.append({p.item.resource_id for p in staged.ready})
            return send(sync, delivery, staged)

        monkeypatch.setattr(engine, "_send", noted)

    def first_with(self, ids: set[str]) -> int:
        return next(n for n, batch in enumerate(self.batches) if batch & ids)

    def last_with(self, ids: set[str]) -> int:
        return max(n for n, batch in enumerate(self.batches) if batch & ids)


class ReadAhead:
    """What a run's outbox has read in delivery order so far."""

    def __init__(self, outbox: Outbox, monkeypatch: pytest.MonkeyPatch) -> None:
        self.ids: set[str] = set()
        self.urgent_reads = 0
        next_due, urgent_due = outbox.next_due, outbox.urgent_due

        def reading(*args: Any) -> tuple[list[Pending], list[Pending]]:
            urgent, following = next_due(*args)
            self.ids.update(p.item.resource_id for p in following)
            return urgent, following

        def reading_urgent(*args: Any) -> list[Pending]:
            self.urgent_reads += 1
            return urgent_due(*args)

        monkeypatch.setattr(outbox, "next_due", reading)
        monkeypatch.setattr(outbox, "urgent_due", reading_urgent)


def _backlog_and_a_breach(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, number: int
) -> tuple[Sync, list[tuple[int, bytes]]]:
    """A backlog of 400 synthetic records mapped and queued, a sync of it in batches of 10, and
    the records of a session that breaks the protocol, to arrive during the run."""
    mrns = load_synthetic(runtime, 400)
    arrival = breach_session(number)
    ehr.add_patients(sorted(mrns | {orjson.loads(arrival[0][1])["patient"]["mrn"]}))
    return in_batches_of(10, runtime, settings), arrival


def _breach_issues(runtime: Runtime, number: int) -> set[str]:
    """The ids of the DetectedIssues of the breaching session."""
    return {
        r.id
        for r in runtime.resources.for_source("protocol", f"SES-{number:08d}")
        if r.resource_type == "DetectedIssue"
    }


def test_a_side_effect_queued_mid_run_is_sent_before_the_batches_read_ahead(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run reads the urgent items again only before every few batches; the hint that
    this process queued one brings it in before the next batch instead."""
    number = 300
    sync, arrival = _backlog_and_a_breach(runtime, settings, ehr, number)
    sends = Sends(monkeypatch)
    read = ReadAhead(sync.outbox, monkeypatch)
    read_before: set[str] = set()

    def progress(_: int) -> None:
        if not read_before:
            # In the run's thread, while batches it read ahead wait to be sent.
            read_before.update(read.ids - set().union(*sends.batches))
            runtime.intake.submit(arrival)
            runtime.mapping.run()

    report = sync_once(sync, trigger="test", progress=progress)

    assert report.status == "completed", report.error
    issues = _breach_issues(runtime, number)
    assert issues and read_before
    assert sends.first_with(issues) < sends.last_with(read_before), (
        sends.first_with(issues),
        sends.last_with(read_before),
    )
    assert read.urgent_reads >= 1


def test_a_read_made_ahead_of_time_sends_no_urgent_item_twice(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The run asks the store for its next batches while it sends the ones before. When a side
    effect is queued meanwhile, the urgent read the hint brings takes it and more of the
    backlog's urgent items; the read made ahead of time, made before that and answered after
    it, holds some of the same items, and the run sends each once."""
    number = 301
    sync, arrival = _backlog_and_a_breach(runtime, settings, ehr, number)
    sends = Sends(monkeypatch)
    urgent_read = threading.Event()
    taken_by_urgent: set[str] = set()
    ahead: set[str] = set()
    next_due, urgent_due = sync.outbox.next_due, sync.outbox.urgent_due

    def reading(*args: Any) -> tuple[list[Pending], list[Pending]]:
        if threading.current_thread().name.startswith("sync-read"):
            urgent, following = next_due(*args)
            urgent_read.wait(timeout=30)  # answered only after the hint's urgent read
            ahead.update(p.item.resource_id for p in urgent)
            return urgent, following
        return next_due(*args)

    def reading_urgent(*args: Any) -> list[Pending]:
        urgent = urgent_due(*args)
        taken_by_urgent.update(p.item.resource_id for p in urgent)
        urgent_read.set()
        return urgent

    monkeypatch.setattr(sync.outbox, "next_due", reading)
    monkeypatch.setattr(sync.outbox, "urgent_due", reading_urgent)

    def progress(_: int) -> None:
        if not urgent_read.is_set() and not taken_by_urgent:
            runtime.intake.submit(arrival)
            runtime.mapping.run()

    report = sync_once(sync, trigger="test", progress=progress)

    assert report.status == "completed", report.error
    assert ahead & taken_by_urgent  # the two reads held some of the same items
    sent = [resource_id for batch in sends.batches for resource_id in batch]
    assert len(sent) == len(set(sent))
    issues = _breach_issues(runtime, number)
    assert issues and issues <= set(sent)


def test_each_batchs_creates_are_noted_in_a_commit_before_it_is_sent(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Read from another engine, as the next run would after this process were killed the
    moment a batch went out: every create in it is marked as perhaps in the EHR."""
    ehr.add_patients(sorted(load_synthetic(runtime, 60)))
    sync = in_batches_of(10, runtime, settings)
    other = make_engine(settings.database_url)
    unmarked: list[str] = []
    checked: list[str] = []
    send = engine._send

    def checking(sync: Sync, delivery: Any, staged: Staged) -> Any:
        creates = [p.item.resource_id for p in staged.ready if p.item.ehr_id is None]
        query = select(sync_outbox.c.resource_id).where(
            sync_outbox.c.resource_id.in_(creates), sync_outbox.c.sent_at.is_(None)
        )
        with other.connect() as connection:
            unmarked.extend(connection.execute(query).scalars())
        checked.extend(creates)
        return send(sync, delivery, staged)

    monkeypatch.setattr(engine, "_send", checking)
    try:
        report = sync_once(sync, trigger="test")
    finally:
        other.dispose()

    assert report.status == "completed", report.error
    assert len(checked) > 50
    assert unmarked == []


def _group(settings: Settings, ehr: SandboxEhr) -> Runtime:
    add_sites(settings.mappings_dir, {NORTH: ehr.base, SOUTH: ehr.base}, own_mrn_systems=False)
    runtime = open_runtime(settings.model_copy(update={"sync_batch_size": 2}))
    for sync in runtime.site_syncs.values():
        sync.client.sleep = lambda _: None  # no test waits out a retry
    return runtime


def _north_backlog(runtime: Runtime) -> None:
    records = [session(clinic_site=NORTH, patient={"mrn": "100234"})] + [
        vitals(clinic_site=NORTH, patient={"mrn": "100234"}, id=f"VIT-{n}", heart_rate=80 + n)
        for n in range(12)
    ]
    outcomes = runtime.intake.submit([(i, ndjson(r)) for i, r in enumerate(records)])
    assert {o.outcome for o in outcomes} == {"created"}, [o.errors for o in outcomes]
    runtime.mapping.run()


@pytest.mark.parametrize("site", [SOUTH, NORTH])
def test_a_side_effect_queued_at_one_site_hurries_that_sites_run_alone(
    settings: Settings, ehr: SandboxEhr, monkeypatch: pytest.MonkeyPatch, site: str
) -> None:
    runtime = _group(settings, ehr)
    try:
        _north_backlog(runtime)
        north = runtime.site_syncs[NORTH]
        read = ReadAhead(north.outbox, monkeypatch)
        for name in (NORTH, SOUTH):
            urgent_queued(name).clear()
        queued: list[bool] = []

        def progress(_: int) -> None:
            if not queued:
                queued.append(True)
                event = adverse_event(clinic_site=site, patient={"mrn": "100234"})
                outcomes = runtime.intake.submit([(1, ndjson(event))])
                assert outcomes[0].outcome == "created", outcomes[0].errors
                runtime.mapping.run()
                assert urgent_queued(site).is_set()

        report = sync_once(north, trigger="test", progress=progress)
    finally:
        runtime.close()

    assert report.status == "completed", report.error
    assert queued
    if site == NORTH:
        assert read.urgent_reads >= 1
    else:
        assert read.urgent_reads == 0
        assert urgent_queued(SOUTH).is_set()  # for south's run, which has not run
    urgent_queued(SOUTH).clear()
