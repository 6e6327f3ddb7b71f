"""Every run keeps its last error: a run that completed but could not deliver says why (the
reason was only in the outbox before), and `sync runs` shows it with what the counts mean."""

import socket
from datetime import UTC, datetime, timedelta

import orjson
from click.testing import CliRunner

from adapter.cli import main
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.tables import sync_outbox
from adapter.sync.engine import Sync, sync_once
from tests.sync.test_delivery import load_example_day


def unreachable(settings: Settings) -> Settings:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return settings.model_copy(
        update={"ehr_base_url": f"http://127.0.0.1:{port}/fhir", "ehr_breaker_failures": 1000}
    )


def test_a_run_that_delivered_nothing_keeps_why(
    runtime: Runtime, settings: Settings, cli_environment: Settings, ehr: object
) -> None:
    load_example_day(runtime)
    sync = Sync(
        settings, runtime.store.engine, runtime.store, lambda: runtime.mapping.mapper.mappings.site
    )
    sync_once(sync, trigger="cli")  # the EHR's capabilities are read while it answers
    runtime.outbox.requeue(
        sync.clock(),
        ["delivered"],
        [i.resource_id for i in runtime.outbox.listed(("delivered",), 5)],
    )
    down = Sync(
        unreachable(settings),
        runtime.store.engine,
        runtime.store,
        lambda: runtime.mapping.mapper.mappings.site,
        sleep=lambda _: None,
    )

    report = sync_once(down, trigger="cli")
    run = runtime.sync_runs.recent(1)[0]
    printed = CliRunner().invoke(main, ["sync", "runs", "--limit", "1"]).output

    # Nothing could be delivered for want of the EHR: the run says so, and why.
    assert report.status == "failed" and report.counts["retry_later"] == 5, report
    assert run.error and "EHR" in run.error
    assert run.last_error and "no answer from the EHR" in run.last_error
    assert "no answer from the EHR" in printed


def test_a_resource_delivered_without_its_references_is_no_error(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    run_id = runtime.sync_runs.start("cli", "me", now)
    with runtime.store.engine.begin() as connection:
        connection.execute(
            sync_outbox.insert().values(
                resource_id="a",
                resource_type="Observation",
                rank=3,
                version_id=1,
                state="pending",
                next_attempt_at=now,
                detail=orjson.dumps({"reason": "later", "left_out": ["Procedure/p"]}).decode(),
                updated_at=now + timedelta(seconds=1),
            )
        )

    runtime.sync_runs.finish(run_id, "completed", {"delivered_partially": 1}, None, now)

    assert runtime.sync_runs.recent(1)[0].last_error is None
