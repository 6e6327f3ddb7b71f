"""Alerts fire once per incident and once more when it ends, never once per run; the webhook
is told each once, retried when it fails, and what it did not take is sent at the next check."""

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from adapter.operations.alerts import (
    CODE_PENDING,
    DEAD_LETTERS,
    EHR_UNREACHABLE,
    SAFETY_FACT_LATE,
    AlertWatch,
)
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.alerts import AlertStore
from adapter.store.operations import OperationsReadings
from adapter.sync.engine import BackOff, Sync, sync_once
from tests.conftest import adverse_event, ndjson, session
from tests.operations.conftest import Webhook
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import load_example_day, sync_with


class Clock:
    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now


def closed_port() -> int:
    """A loopback port nothing listens on: connections to it are refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def watch_of(runtime: Runtime, settings: Settings, sync: Sync | None) -> AlertWatch:
    engine = runtime.store.engine
    return AlertWatch(
        settings,
        OperationsReadings(engine),
        runtime.outbox,
        AlertStore(engine),
        sync.backoff_state if sync else None,
        sleep=lambda _: None,
    )


@pytest.fixture
def outage(database_url: str, mappings_dir: Path, webhook: Webhook) -> Settings:
    return Settings(
        database_url=database_url,
        mappings_dir=mappings_dir,
        ehr_base_url=f"http://127.0.0.1:{closed_port()}/fhir",
        alert_webhook_url=webhook.url,
        alert_ehr_down_minutes=5,
    )


def test_an_outage_spanning_twenty_runs_sends_exactly_two_notifications(
    outage: Settings, webhook: Webhook, ehr: SandboxEhr
) -> None:
    runtime = open_runtime(outage)
    load_example_day(runtime)
    clock = Clock()
    sync = sync_with(runtime, outage, clock)
    watch = watch_of(runtime, outage, sync)

    reports = []
    for _ in range(20):
        reports.append(sync_once(sync, trigger="cli"))
        clock.now += timedelta(minutes=1)
        watch.check(clock.now)
    firing = list(webhook.states)
    sync.client.base_url = ehr.base
    recovered = sync_once(sync, trigger="cli")
    watch.check(clock.now)
    watch.check(clock.now + timedelta(minutes=1))

    assert [r.status for r in reports] == ["failed"] * 20
    assert firing == ["firing"]
    assert recovered.status == "completed" and recovered.counts["delivered"] > 0
    assert webhook.states == ["firing", "resolved"]
    assert webhook.attempts == 2
    assert {body["kind"] for body in webhook.received} == {EHR_UNREACHABLE}
    assert "no answer from the EHR" in webhook.received[0]["summary"]
    assert webhook.received[0]["alert_id"] == webhook.received[1]["alert_id"]
    assert AlertStore(runtime.store.engine).firing() == []
    runtime.close()


def test_a_webhook_that_fails_is_retried_and_told_each_change_once(
    outage: Settings, webhook: Webhook
) -> None:
    runtime = open_runtime(outage)
    clock = Clock()
    sync = sync_with(runtime, outage, clock)
    watch = watch_of(runtime, outage, sync)
    runtime.intake.submit([(1, ndjson(session()).strip())])
    runtime.mapping.run()
    sync_once(sync, trigger="cli")
    webhook.answers = [503, 500, 503, 502, 500, 503, 502, 500]  # two checks' attempts spent

    first = watch.check(clock.now + timedelta(minutes=10))
    second = watch.check(clock.now + timedelta(minutes=11))
    webhook.answers = [503]
    third = watch.check(clock.now + timedelta(minutes=12))
    fourth = watch.check(clock.now + timedelta(minutes=13))

    assert (first.opened, first.notified, second.notified) == (1, 0, 0)
    assert (third.notified, fourth.notified) == (1, 0)
    assert webhook.states == ["firing"]
    assert webhook.attempts == 10
    runtime.close()


def test_late_safety_facts_dead_letters_and_waiting_codes_are_incidents(
    runtime: Runtime, settings: Settings
) -> None:
    unmapped = session(drug="KETAMINE HCL", id="SES-9")
    serious = adverse_event(serious=True, severity="severe", session_id="SES-9")
    runtime.intake.submit(list(enumerate(ndjson(unmapped, serious).splitlines(), start=1)))
    runtime.mapping.run()
    no_ehr = {
        c.kind
        for c in watch_of(runtime, settings, None).conditions(
            datetime.now(UTC) + timedelta(hours=25)
        )
    }
    watch = watch_of(runtime, settings, None)
    watch.backoff = BackOff  # an EHR that was never reached: no back-off
    now = datetime.now(UTC)

    soon = {c.kind for c in watch.conditions(now + timedelta(minutes=5))}
    later = {c.key: c for c in watch.conditions(now + timedelta(hours=25))}
    with runtime.store.engine.begin() as connection:
        connection.exec_driver_sql("UPDATE sync_outbox SET state = 'dead'")
    dead = {c.kind for c in watch.conditions(now)}

    assert soon == set()
    assert no_ehr == {CODE_PENDING}
    assert later[(SAFETY_FACT_LATE, "adverse_event/AE-1")].summary.startswith(
        "The serious side effect AE-1 is not in the EHR after 25 h"
    )
    assert later[(CODE_PENDING, "drugs:KETAMINE HCL")].summary == (
        "The code KETAMINE HCL has no row in codes/drugs.yaml for 25 h 0 min; it holds 1 record(s)"
    )
    assert DEAD_LETTERS in dead
