"""Logs say one line per run and per notable event: nothing on an idle tick of the scheduler,
no warning each tick a long job is still running, and a command prints what was asked for."""

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from adapter.logs import quiet_url_loggers
from adapter.runtime import Runtime
from adapter.store import migrate
from adapter.worker import Worker
from tests.conftest import EXAMPLE_DAY


class Kept(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name}: {record.getMessage()}")


@pytest.fixture
def kept() -> Iterator[Kept]:
    """Every line that reaches the root logger at INFO, as the service's logging passes them."""
    root = logging.getLogger()
    handler, level = Kept(), root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    quiet_url_loggers()
    yield handler
    root.removeHandler(handler)
    root.setLevel(level)


def test_idle_ticks_of_the_service_log_nothing(runtime: Runtime, kept: Kept) -> None:
    fast = runtime.settings.model_copy(update={"mapping_interval_seconds": 0.02})
    worker = Worker(Runtime(**{**runtime.__dict__, "settings": fast}))

    worker.start()
    time.sleep(0.5)  # some twenty idle ticks of the mapping and export jobs
    worker.stop()

    assert kept.lines == []


def test_a_tick_while_the_job_still_runs_is_not_warned_of(kept: Kept) -> None:
    scheduler = BackgroundScheduler(timezone=UTC)
    release = threading.Event()
    scheduler.add_job(
        release.wait, "interval", seconds=0.02, max_instances=1, next_run_time=datetime.now(UTC)
    )

    scheduler.start()
    time.sleep(0.3)
    release.set()
    scheduler.shutdown(wait=True)

    assert [line for line in kept.lines if "maximum number of running instances" in line] == []


def test_a_job_that_fails_is_logged_with_its_type_and_frames_never_its_text(
    kept: Kept,
) -> None:
    """APScheduler logs a failing job with its traceback, whose last line quotes the
    exception's text (a store's error, a value a record held)."""
    formatted: list[str] = []

    class Formatted(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            formatted.append(logging.Formatter().format(record))

    handler = Formatted(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    scheduler = BackgroundScheduler(timezone=UTC)
    done = threading.Event()

    said = "MRN 100234, Rivera, heart rate 212"  # not on the line that raises, which is shown

    def failing() -> None:
        done.set()
        raise ValueError(said)

    scheduler.add_job(failing, next_run_time=datetime.now(UTC))
    try:
        scheduler.start()
        assert done.wait(5)
        time.sleep(0.2)
    finally:
        scheduler.shutdown(wait=True)
        logging.getLogger().removeHandler(handler)

    failed = [line for line in formatted if "raised an exception" in line]
    assert len(failed) == 1 and "ValueError" in failed[0] and "in failing" in failed[0]
    assert not any("100234" in line or "Rivera" in line for line in formatted)


def command(database: Path, *args: str, exits: int = 0, **settings: str) -> list[str]:
    """The lines `infusion-adapter ARGS` prints, standard output and error together, with
    these ADAPTER_ settings; it must exit with `exits`."""
    environment = {
        **os.environ,
        "ADAPTER_DATABASE_URL": f"sqlite:///{database}",
        **{f"ADAPTER_{name.upper()}": value for name, value in settings.items()},
    }
    done = subprocess.run(
        [sys.executable, "-c", "from adapter.cli import entry; entry()", *args],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=False,
    )
    assert done.returncode == exits, done.stdout + done.stderr
    return (done.stdout + done.stderr).splitlines()


def test_commands_print_what_was_asked_and_migrations_only_a_change(tmp_path: Path) -> None:
    database = tmp_path / "adapter.db"

    first = command(database, "db", "upgrade")
    again = command(database, "db", "upgrade")
    runs = command(database, "sync", "runs")

    newest = migrate.newest()
    assert len(first) == 1 and first[0].endswith(f"store schema upgraded from empty to {newest}")
    assert again == [f"store schema is up to date ({newest})"]
    assert runs == []


def test_a_run_that_cannot_reach_the_ehr_exits_non_zero_and_says_why(tmp_path: Path) -> None:
    database = tmp_path / "adapter.db"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    unreachable = {
        "ehr_base_url": f"http://127.0.0.1:{closed}/fhir",
        "ehr_retry_attempts": "1",
        "ehr_retry_max_wait_seconds": "0.01",
    }
    command(database, "db", "upgrade")
    command(database, "import", str(EXAMPLE_DAY), "--quiet")

    once = command(database, "sync", "--once", "--quiet", exits=3, **unreachable)
    runs = command(database, "sync", "runs", **unreachable)

    why = "the EHR is unavailable (no answer from the EHR (ConnectionError))"
    assert len(once) == 1 and once[0].startswith(f"run 1 failed: {why}; the sync backs off")
    assert runs[0].split()[:2] == ["1", "cli"] and "failed" in runs[0]
    assert runs[1].strip().startswith(why)


@pytest.mark.parametrize("event_delivery", [True, False], ids=["events", "schedule"])
def test_wakes_from_concurrent_requests_during_a_mapping_pass_log_nothing(
    runtime: Runtime, kept: Kept, monkeypatch: pytest.MonkeyPatch, event_delivery: bool
) -> None:
    """Every intake request wakes the mapping; while a pass runs, hundreds of wakes from
    requests at once are coalesced without a line each, by the event path or, with it off, by
    the scheduler's job (APScheduler warns of each by itself)."""
    monkeypatch.setattr(runtime.settings, "event_delivery", event_delivery)
    running, release = threading.Event(), threading.Event()
    passes: list[int] = []

    def slow_pass(_: Runtime, on_queued: object = None) -> None:
        passes.append(1)
        running.set()
        release.wait(timeout=10)

    monkeypatch.setattr("adapter.worker.map_pending", slow_pass)
    worker = Worker(runtime)
    worker.start()
    assert running.wait(timeout=10)

    def requests() -> None:
        for _ in range(100):
            worker.wake()
            time.sleep(0.001)

    threads = [threading.Thread(target=requests) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    time.sleep(0.1)  # the scheduler's thread acts on the last wakes
    release.set()
    worker.stop()

    assert len(passes) >= 1
    assert [line for line in kept.lines if "apscheduler" in line] == []
