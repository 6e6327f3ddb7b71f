"""A clinic group: each site's EHR gets its site's resources alone, each exactly once, and one
site's EHR being down holds no other site's delivery."""

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from adapter.cli import main
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.sync_state import Lease
from adapter.sync.engine import sync_once
from adapter.worker import EventDelivery, map_now, sync_runners
from tests.conftest import ndjson, session, vitals
from tests.sites import NORTH, SOUTH, add_sites
from tests.sync.sandbox import RECORDS_SYSTEM, SandboxEhr

CLOSED_PORT = "http://127.0.0.1:9/fhir"
"""Nothing listens on the discard port of loopback: an EHR that is down."""


def _group(settings: Settings, urls: dict[str, str]) -> Runtime:
    add_sites(settings.mappings_dir, urls, own_mrn_systems=False)
    runtime = open_runtime(settings)
    for sync in runtime.site_syncs.values():
        sync.client.sleep = lambda _: None  # no test waits out a retry
    return runtime


def _same_day_at_both_sites(runtime: Runtime) -> None:
    records = [session(clinic_site=site, patient={"mrn": "100234"}) for site in (NORTH, SOUTH)] + [
        vitals(clinic_site=site, patient={"mrn": "100234"}) for site in (NORTH, SOUTH)
    ]
    outcomes = runtime.intake.submit([(i, ndjson(r)) for i, r in enumerate(records)])
    assert {o.outcome for o in outcomes} == {"created"}, [o.errors for o in outcomes]
    runtime.mapping.run()


def _sources(ehr: SandboxEhr, resource_type: str) -> set[str]:
    return {r["meta"].get("source", "") for r in ehr.all(resource_type)}


def test_each_sites_ehr_gets_its_sites_resources_exactly_once(
    settings: Settings, ehr: SandboxEhr, second_ehr: SandboxEhr
) -> None:
    runtime = _group(settings, {NORTH: ehr.base, SOUTH: second_ehr.base})
    try:
        _same_day_at_both_sites(runtime)
        assert runtime.sync is None and sorted(runtime.site_syncs) == [NORTH, SOUTH]

        reports = {
            site: sync_once(sync, trigger="test") for site, sync in runtime.site_syncs.items()
        }
        again = {site: sync_once(sync, trigger="test") for site, sync in runtime.site_syncs.items()}
    finally:
        runtime.close()

    for site, report in reports.items():
        assert report.status == "completed", (site, report.error)
        assert report.counts["delivered"] > 0
    assert all(not report.counts for report in again.values()), (reports, again)
    for server, site in ((ehr, NORTH), (second_ehr, SOUTH)):
        for resource_type in ("Procedure", "Observation", "Encounter"):
            copies = server.identifier_counts(resource_type)
            assert copies and set(copies.values()) == {1}, (site, resource_type)
            assert _sources(server, resource_type) == {
                f"https://{site}.ketamine-clinic.example.org/fhir/infusion-adapter"
            }
        [procedure] = server.all("Procedure")
        assert procedure["identifier"][0] == {
            "system": f"{RECORDS_SYSTEM}/infusion_session",
            "value": "SES-1",
        }
        site_tags = {
            t["code"] for t in procedure["meta"].get("tag", []) if t["system"].endswith("/site")
        }
        assert site_tags == {site}


def test_a_site_whose_ehr_is_down_holds_no_other_sites_delivery(
    settings: Settings, ehr: SandboxEhr
) -> None:
    runtime = _group(settings, {NORTH: ehr.base, SOUTH: CLOSED_PORT})
    try:
        _same_day_at_both_sites(runtime)
        north, south = runtime.site_syncs[NORTH], runtime.site_syncs[SOUTH]
        # South's run holds its lease (a run stuck on its EHR): north's sync is not held.
        stuck = Lease(south.engine, south.lease.name, "elsewhere", timedelta(minutes=5))
        assert stuck.acquire(datetime.now(UTC))
        busy = sync_once(south, trigger="test")
        delivered = sync_once(north, trigger="test")
        stuck.release()
        failed = sync_once(south, trigger="test")
        deferred = sync_once(south, trigger="schedule")
        runs = runtime.sync_runs.recent(10)
        north_counts, south_counts = north.outbox.counts(), south.outbox.counts()
        north_backoff, south_backoff = north.backoff_state().until, south.backoff_state().until
    finally:
        runtime.close()

    assert busy.status == "busy"
    assert delivered.status == "completed" and delivered.counts["delivered"] > 0
    assert failed.status == "failed" and failed.cause == "ehr"
    assert deferred.status == "deferred"
    assert north_backoff is None and south_backoff is not None
    assert north_counts["pending"] == 0 and north_counts["delivered"] > 0
    assert south_counts["delivered"] == 0 and south_counts["pending"] > 0
    assert len(ehr.identifier_counts("Procedure")) == 1  # north's alone
    assert {run.site for run in runs} == {NORTH, SOUTH}


def test_the_worker_runs_a_sync_per_site(settings: Settings, ehr: SandboxEhr) -> None:
    runtime = _group(settings, {NORTH: ehr.base, SOUTH: CLOSED_PORT})
    try:
        runners = sync_runners(runtime)
    finally:
        runtime.close()

    assert sorted(r.job_suffix for r in runners) == [f":{NORTH}", f":{SOUTH}"]
    assert len({r.sync.lease.name for r in runners if r.sync}) == 2


def test_sync_once_takes_a_site_and_runs_show_it(
    settings: Settings, ehr: SandboxEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = _group(settings, {NORTH: ehr.base, SOUTH: CLOSED_PORT})
    try:
        _same_day_at_both_sites(runtime)
    finally:
        runtime.close()
    monkeypatch.setenv("ADAPTER_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("ADAPTER_MAPPINGS_DIR", str(settings.mappings_dir))
    from adapter.settings import get_settings

    get_settings.cache_clear()
    try:
        once = CliRunner().invoke(main, ["sync", "--once", "--quiet", "--site", NORTH])
        unnamed = CliRunner().invoke(main, ["sync", "--once", "--quiet"])
        runs = CliRunner().invoke(main, ["sync", "runs"])
    finally:
        get_settings.cache_clear()

    assert once.exit_code == 0, once.output
    assert unnamed.exit_code == 2 and "--site" in unnamed.output
    assert f"site {NORTH}" in runs.output
    assert len(ehr.identifier_counts("Procedure")) == 1


def test_a_site_bearer_token_is_read_from_the_variable_it_names(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    add_sites(settings.mappings_dir)
    (settings.mappings_dir / "sites" / NORTH / "ehr.yaml").write_text(
        "connection: {base_url: 'http://127.0.0.1:9/fhir', auth: bearer, "
        "bearer_token_env: NORTH_EHR_TOKEN}\n"
    )
    from adapter.errors import MappingFileError

    with pytest.raises(MappingFileError, match="NORTH_EHR_TOKEN is not set"):
        open_runtime(settings)
    monkeypatch.setenv("NORTH_EHR_TOKEN", "token-from-the-environment")
    runtime = open_runtime(settings)
    try:
        token = runtime.site_syncs[NORTH].settings.ehr_bearer_token
    finally:
        runtime.close()
    assert token is not None and token.get_secret_value() == "token-from-the-environment"


class _Pulses:
    """Stands in for a site's sync wakeup: counts its pulses."""

    def __init__(self) -> None:
        self.count = 0
        self.pulsed = threading.Event()

    def pulse(self) -> None:
        self.count += 1
        self.pulsed.set()

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


def test_resources_queued_wake_the_sync_of_their_site_alone(
    settings: Settings, ehr: SandboxEhr, second_ehr: SandboxEhr
) -> None:
    runtime = _group(settings, {NORTH: ehr.base, SOUTH: second_ehr.base})
    events = EventDelivery(runtime, sync_runners(runtime), mapping=False)
    pulses = {NORTH: _Pulses(), SOUTH: _Pulses()}
    events.syncs = dict(pulses)  # type: ignore[arg-type]
    heard: dict[str, int] = {}
    try:
        north = [session(clinic_site=NORTH), vitals(clinic_site=NORTH)]
        runtime.intake.submit([(i, ndjson(r)) for i, r in enumerate(north)])
        map_now(runtime, events.resources_queued)
        in_process = {site: p.count for site, p in pulses.items()}
        if events.listener is not None:  # PostgreSQL: another process's queue, by its notice
            events.listener.start()
            assert events.listener.listening.wait(10)
            assert pulses[NORTH].pulsed.wait(10)  # listening anew wakes every sync once
            assert pulses[SOUTH].pulsed.wait(10)
            for p in pulses.values():
                p.count = 0
                p.pulsed.clear()
            runtime.intake.submit([(0, ndjson(session(clinic_site=SOUTH)))])
            runtime.mapping.run()  # told no one in this process: only the notice says it
            assert pulses[SOUTH].pulsed.wait(10)
            assert not pulses[NORTH].pulsed.wait(0.5)
            heard = {site: p.count for site, p in pulses.items()}
    finally:
        events.stop()
        runtime.close()

    assert in_process[NORTH] >= 1 and in_process[SOUTH] == 0, in_process
    if settings.database_url.startswith("postgresql"):
        assert heard[SOUTH] >= 1 and heard[NORTH] == 0, heard


def test_a_sites_run_names_the_last_problem_of_its_own_sites_items_alone(
    settings: Settings, ehr: SandboxEhr
) -> None:
    from sqlalchemy import update

    from adapter.store.tables import sync_outbox as outbox

    runtime = _group(settings, {NORTH: ehr.base, SOUTH: CLOSED_PORT})
    try:
        _same_day_at_both_sites(runtime)
        started = datetime.now(UTC) - timedelta(seconds=1)
        north_run = runtime.sync_runs.start("test", "here", started, NORTH)
        south_run = runtime.sync_runs.start("test", "here", started, SOUTH)
        with runtime.store.engine.begin() as connection:
            connection.execute(
                update(outbox)
                .where(outbox.c.site == SOUTH)
                .values(
                    state="waiting",
                    detail='{"reason": "no Patient in the EHR has this MRN"}',
                    updated_at=datetime.now(UTC),
                )
            )
        now = datetime.now(UTC)
        runtime.sync_runs.finish(north_run, "completed", {}, None, now)
        runtime.sync_runs.finish(south_run, "completed", {}, None, now)
        runs = {run.site: run for run in runtime.sync_runs.recent(10)}
    finally:
        runtime.close()

    assert runs[NORTH].last_error is None
    assert runs[SOUTH].last_error == "no Patient in the EHR has this MRN"
