"""The sync as separate processes: killed with SIGKILL mid-run and restarted (the sync alone,
and the service delivering by the event path), or two at once on PostgreSQL woken by its
notices. Either way every resource reaches the EHR exactly once."""

import itertools
import os
import random
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest
from sqlalchemy import text

from adapter.runtime import Runtime
from adapter.settings import Settings
from benchmarks.synthetic import records
from tests.replicas import healthy
from tests.sync.expected import expected_in_ehr, not_for_ehr
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_faults import load_synthetic

RECORDS = 2000
CLI = [sys.executable, "-m", "adapter.cli"]


def environment(settings: Settings, ehr: SandboxEhr, lease_seconds: float) -> dict[str, str]:
    return {
        **os.environ,
        "ADAPTER_DATABASE_URL": settings.database_url,
        "ADAPTER_MAPPINGS_DIR": str(settings.mappings_dir),
        "ADAPTER_EHR_BASE_URL": ehr.base,
        "ADAPTER_SYNC_LEASE_SECONDS": str(lease_seconds),
        "ADAPTER_SYNC_INTERVAL_SECONDS": "0.2",
        "ADAPTER_LOG_LEVEL": "WARNING",
    }


def assert_exactly_once(runtime: Runtime, ehr: SandboxEhr, site: str | None = None) -> None:
    """The EHR holds each resource once and nothing else of the adapter's; with `site`, the
    EHR is that site's of a clinic group, and its share is the site's resources."""
    sync = runtime.sync_of(site) if site is not None else None
    counts = (sync.outbox if sync is not None else runtime.outbox).counts()
    expected = expected_in_ehr(runtime, site=site)
    assert counts["delivered"] == sum(expected.values()), (site, counts)
    assert counts["skipped"] == not_for_ehr(runtime, site=site), (site, counts)
    for resource_type, count in expected.items():
        copies = ehr.identifier_counts(resource_type)
        assert len(copies) == count, (site, resource_type)
        assert set(copies.values()) == {1}, (site, resource_type)


def test_a_sync_killed_three_times_and_restarted_delivers_everything_once(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, tmp_path: Path
) -> None:
    if settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's run of processes is the two-worker test below")
    ehr.add_patients(sorted(load_synthetic(runtime, RECORDS)))
    env = environment(settings, ehr, lease_seconds=1.0)
    total = sum(expected_in_ehr(runtime).values())
    chance = random.Random(11)
    # Random points of the run, by how much of it is done: a kill lands mid-run however fast
    # the sync is (a run of these records takes about two seconds).
    points = sorted(chance.uniform(0.1, 0.8) for _ in range(3))
    kills = 0
    for point in points:
        process = subprocess.Popen([*CLI, "sync", "--once", "--quiet"], env=env, cwd=tmp_path)
        while process.poll() is None and runtime.outbox.counts()["delivered"] < point * total:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
        time.sleep(1.1)  # the dead process's lease runs out
    finished = subprocess.run(
        [*CLI, "sync", "--once", "--quiet"], env=env, cwd=tmp_path, timeout=600, check=False
    )

    assert kills == 3
    assert finished.returncode == 0
    assert_exactly_once(runtime, ehr)


def wait_listening(runtime: Runtime, since: datetime, count: int) -> None:
    """Until `count` processes started since `since` listen for PostgreSQL's notices: a worker
    listens once its schedule has started, whose first run comes at once (adapter/worker.py)."""
    listening = text(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
        "AND query LIKE 'LISTEN %' AND backend_start >= :since"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with runtime.store.engine.connect() as connection:
            if connection.execute(listening, {"since": since}).scalar_one() >= count:
                time.sleep(0.5)  # the first runs, with nothing due, end in milliseconds
                return
        time.sleep(0.1)
    raise AssertionError(f"{count} workers did not listen for notices within a minute")


def test_two_sync_workers_on_postgresql_deliver_everything_once(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, tmp_path: Path
) -> None:
    """The workers' schedule is hourly: the resources mapped here, after they started, reach
    them as PostgreSQL's notices (the event path), batch after batch."""
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("processes on SQLite share nothing but a file; the lease is PostgreSQL's case")
    ehr.add_patients(sorted(synthetic_mrns(RECORDS)))
    env = {**environment(settings, ehr, lease_seconds=5.0), "ADAPTER_SYNC_INTERVAL_SECONDS": "3600"}
    spawned = datetime.now(UTC)
    workers = [
        subprocess.Popen([*CLI, "sync"], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL)
        for _ in range(2)
    ]
    try:
        # Started: their first scheduled runs found nothing (however long a loaded machine
        # takes to start them, the records come after).
        wait_listening(runtime, spawned, len(workers))
        load_synthetic(runtime, RECORDS)
        deadline = time.monotonic() + 300
        while runtime.outbox.count_due(datetime.now(UTC)) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(timeout=60)

    assert_exactly_once(runtime, ehr)
    runs = sorted(runtime.sync_runs.recent(1000), key=lambda run: run.started_at)
    for earlier, later in itertools.pairwise(runs):
        assert earlier.ended_at is not None and earlier.ended_at <= later.started_at
    assert {run.trigger for run in runs} == {"event"}


def synthetic_mrns(count: int) -> set[str]:
    return {orjson.loads(line)["patient"]["mrn"] for line in records(count)}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def serve(env: dict[str, str], port: int, cwd: Path) -> subprocess.Popen[bytes]:
    """`infusion-adapter serve`, answering its health check."""
    process = subprocess.Popen(
        [*CLI, "serve", "--port", str(port)], env=env, cwd=cwd, stdout=subprocess.DEVNULL
    )
    if healthy(process, port):
        return process
    process.kill()
    raise AssertionError("the service did not start")


def test_a_service_killed_while_events_deliver_and_restarted_delivers_everything_once(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, tmp_path: Path
) -> None:
    """The service as users run it, mapping and the sync on hour-long schedules: records posted
    to it are delivered by the event path. Killed with SIGKILL while it delivers, three times,
    and started again, it delivers everything once."""
    if settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL's run of processes is the two-worker test above")
    lines = list(records(RECORDS))
    ehr.add_patients(sorted(synthetic_mrns(RECORDS)))
    _, key = runtime.clients.add_key_client("test intake", "intake", datetime.now(UTC))
    env = {
        **environment(settings, ehr, lease_seconds=1.0),
        "ADAPTER_SYNC_INTERVAL_SECONDS": "3600",
        # The schedule's mapping pass maps what a killed process had claimed, once its claim
        # ends: events wake nothing for records that arrived before the restart.
        "ADAPTER_MAPPING_INTERVAL_SECONDS": "2",
        "ADAPTER_MAPPING_CLAIM_SECONDS": "5",
    }
    port = free_port()
    kills = 0
    for part in range(3):
        process = serve(env, port, tmp_path)
        before = runtime.outbox.counts()["delivered"]
        chunk = lines[part::3]
        answer = httpx.post(
            f"http://127.0.0.1:{port}/api/v1/records",
            content=b"".join(chunk),
            headers={"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"},
            timeout=120,
        )
        assert answer.status_code in (200, 201, 207), answer.text
        deadline = time.monotonic() + 60
        while runtime.outbox.counts()["delivered"] < before + 300 and time.monotonic() < deadline:
            time.sleep(0.01)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=30)
        time.sleep(1.1)  # the dead process's lease runs out
    process = serve(env, port, tmp_path)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            pending = runtime.mapping.queue.counts().get("pending", 0)
            if not pending and not runtime.outbox.count_due(datetime.now(UTC)):
                break
            time.sleep(0.2)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)

    assert kills == 3
    assert runtime.mapping.queue.counts().get("pending", 0) == 0
    assert_exactly_once(runtime, ehr)
