"""Reconciliation finds what the EHR lost or changed, and the next run puts it right; an EHR
that is down stops the run and defers the schedule instead of being hammered."""

from datetime import timedelta
from pathlib import Path

import orjson
import requests

from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.sync.engine import Sync, sync_once
from adapter.sync.reconcile import reconcile_once
from tests.sync.expected import expected_in_ehr
from tests.sync.faults import FaultProxy, Faults
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import load_example_day


def test_a_copy_deleted_or_changed_in_the_ehr_is_found_and_put_right(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, settings_mappings: Path
) -> None:
    """Where the site chose to undo changes made at the EHR (mappings/ehr.yaml)."""
    (settings_mappings / "ehr.yaml").write_text(
        "edited_in_ehr: overwrite\ndeleted_in_ehr: recreate\n"
    )
    load_example_day(runtime)
    sync_once(sync, trigger="test")
    # Two heart rates: nothing references them (a protocol breach's evidence would follow).
    heart_rates = [
        o for o in ehr.all("Observation") if o["identifier"][0]["value"].endswith("heart_rate")
    ]
    deleted, changed = heart_rates[:2]
    requests.delete(f"{ehr.base}/Observation/{deleted['id']}", timeout=10).raise_for_status()
    changed["status"] = "amended"
    requests.put(
        f"{ehr.base}/Observation/{changed['id']}",
        data=orjson.dumps(changed),
        headers={"Content-Type": "application/fhir+json"},
        timeout=10,
    ).raise_for_status()

    report = reconcile_once(sync)

    assert report.status == "completed", report.error
    assert report.counts["missing"] == 1 and report.counts["different"] == 1
    assert report.counts["matching"] == sum(expected_in_ehr(runtime).values()) - 2
    sync_once(sync, trigger="test")
    again = reconcile_once(sync)
    assert again.counts["matching"] == sum(expected_in_ehr(runtime).values())
    identifiers = ehr.identifier_counts("Observation")
    assert set(identifiers.values()) == {1}
    restored = [o for o in ehr.all("Observation") if o["identifier"] == changed["identifier"]]
    assert restored[0]["status"] != "amended"


def test_an_ehr_that_is_down_stops_the_run_and_defers_the_schedule(
    runtime: Runtime, settings: Settings
) -> None:
    down = settings.model_copy(
        update={"ehr_base_url": "http://127.0.0.1:9/fhir", "ehr_breaker_failures": 3}
    )
    sleeps: list[float] = []
    sync = Sync(
        down,
        runtime.store.engine,
        runtime.store,
        lambda: runtime.mapping.mapper.mappings.site,
        sleep=sleeps.append,
    )
    load_example_day(runtime)

    report = sync_once(sync, trigger="test")

    assert report.status == "failed" and report.resume_at is not None
    assert report.error and "unavailable" in report.error
    assert len(sleeps) == down.ehr_retry_attempts - 1
    assert runtime.outbox.counts()["dead"] == 0
    deferred = sync_once(sync, trigger="schedule")
    assert deferred.status == "deferred"
    sync.clock = lambda: report.resume_at + timedelta(seconds=1)  # type: ignore[operator]
    again = sync_once(sync, trigger="schedule")
    assert again.status == "failed"
    state = sync.backoff_state()
    until, seconds = state.until, state.seconds
    assert seconds == 2 * down.ehr_breaker_seconds
    assert until is not None and until > report.resume_at


def test_an_ehr_that_goes_down_mid_run_opens_the_breaker_instead_of_being_hammered(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    proxy = FaultProxy(ehr.origin, Faults())
    try:
        through = settings.model_copy(
            update={
                "ehr_base_url": f"{proxy.origin}/fhir",
                "ehr_breaker_failures": 2,
                "sync_batch_size": 10,
            }
        )
        sync = Sync(
            through,
            runtime.store.engine,
            runtime.store,
            lambda: runtime.mapping.mapper.mappings.site,
            sleep=lambda _: None,
        )
        assert sync_once(sync, trigger="test").status == "completed"  # capabilities cached
        load_example_day(runtime)
        proxy.faults.error_503 = 1.0
        proxy.faults.counts.clear()

        report = sync_once(sync, trigger="test")
    finally:
        proxy.stop()

    assert report.status == "failed" and report.error and "unavailable" in report.error
    assert proxy.faults.counts == {"503": 2 * through.ehr_retry_attempts}
    counts = runtime.outbox.counts()
    assert counts["dead"] == 0 and counts["delivered"] == 0
    assert sync_once(sync, trigger="schedule").status == "deferred"
