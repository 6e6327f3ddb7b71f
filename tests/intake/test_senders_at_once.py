"""Many clinic systems posting at once to the service as users run it."""

import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx2 as httpx
import orjson
import pytest

from adapter.runtime import Runtime
from adapter.settings import Settings
from tests.conftest import vitals
from tests.sync.test_processes import free_port, serve

SENDERS = 20
EACH = 25


def test_twenty_senders_posting_at_once_are_each_answered_and_nothing_is_lost(
    runtime: Runtime, settings: Settings, tmp_path: Path
) -> None:
    """SQLite takes one writer at a time. Twenty senders posting a record a request at once
    to `infusion-adapter serve` (mapping woken by each): every request is answered 200 and
    every record stored. Before writes took turns within the process, each request held a
    pooled connection while it waited on the file: the pool ran dry (500) and transactions met
    a locked file (503); 1,000 such requests took 215 s, with 85 of them refused."""
    if settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL takes concurrent writers; SQLite's case")
    _, key = runtime.clients.add_key_client("test intake", "intake", datetime.now(UTC))
    env = {
        **os.environ,
        "ADAPTER_DATABASE_URL": settings.database_url,
        "ADAPTER_MAPPINGS_DIR": str(settings.mappings_dir),
        "ADAPTER_LOG_LEVEL": "WARNING",
    }
    port = free_port()
    process = serve(env, port, tmp_path)
    statuses: list[int] = []
    started = time.monotonic()

    def send(sender: int) -> None:
        headers = {"Authorization": f"Bearer {key}", "content-type": "application/json"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60) as client:
            for number in range(EACH):
                if time.monotonic() - started > 60:
                    return  # a minute is far beyond what this takes; the count below tells
                record = vitals(id=f"VIT-C{sender:02d}-{number:03d}")
                answer = client.post(
                    "/api/v1/records", content=orjson.dumps(record), headers=headers
                )
                statuses.append(answer.status_code)

    threads = [threading.Thread(target=send, args=[n]) for n in range(SENDERS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=90)
    finally:
        process.terminate()
        process.wait(timeout=30)

    assert len(statuses) == SENDERS * EACH
    assert set(statuses) == {200}, sorted(set(statuses))
    missing = [
        (sender, number)
        for sender in range(SENDERS)
        for number in range(EACH)
        if not runtime.store.exists("vitals", f"VIT-C{sender:02d}-{number:03d}")
    ]
    assert missing == []
