"""Alerts across replicas: checks of several processes that overlap (a slow store, a slow
webhook, ticks that came close) open an incident once and tell the webhook once."""

import threading
import time
from collections.abc import Iterator
from datetime import datetime

import pytest

from adapter.app import alert_watch
from adapter.operations.alerts import DEAD_LETTERS, AlertWatch, Condition
from adapter.replicas import SharedJobs
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.alerts import AlertStore
from adapter.worker import ALERT_JOB, LEASES, check_alerts
from tests.operations.conftest import Webhook

REPLICAS = 3


@pytest.fixture
def replicas(settings: Settings, webhook: Webhook) -> Iterator[list[Runtime]]:
    hooked = settings.model_copy(update={"alert_webhook_url": webhook.url})
    opened = [open_runtime(hooked) for _ in range(REPLICAS)]
    yield opened
    for runtime in opened:
        runtime.close()


def _check_at_once(replicas: list[Runtime]) -> None:
    """One check in each replica, all begun together, each under its replica's lease."""
    start = threading.Barrier(len(replicas))

    def check(runtime: Runtime) -> None:
        lease = SharedJobs(runtime.store.engine).lease(LEASES[ALERT_JOB])
        watch = alert_watch(runtime)
        start.wait(10)
        check_alerts(watch, lease)

    threads = [threading.Thread(target=check, args=(r,)) for r in replicas]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_overlapping_checks_of_several_replicas_fire_and_end_an_incident_once(
    replicas: list[Runtime], webhook: Webhook, monkeypatch: pytest.MonkeyPatch
) -> None:
    holding = [Condition(DEAD_LETTERS, "outbox", "The EHR refused 1 resource(s)", {"dead": 1})]

    def slow_conditions(_: AlertWatch, now: datetime) -> list[Condition]:
        time.sleep(0.2)  # a slow store: the replicas' checks overlap
        return list(holding)

    monkeypatch.setattr(AlertWatch, "conditions", slow_conditions)
    _check_at_once(replicas)
    opened = AlertStore(replicas[0].store.engine).recent()
    holding.clear()
    _check_at_once(replicas)
    ended = AlertStore(replicas[0].store.engine).recent()

    assert [(a.kind, a.closed_at is None) for a in opened] == [(DEAD_LETTERS, True)]
    assert len(ended) == 1 and ended[0].closed_at is not None
    assert webhook.states == ["firing", "resolved"]
