"""Log lines of the idle service: `infusion-adapter serve` as `scripts/run` starts it (the example
day in a fresh SQLite store, the sandbox EHR on loopback, a sync every 10 s), left alone once
its start-up work is done, and the lines it logs in `--seconds` counted, by logger. Lines per
minute are printed; the service should log nothing when nothing happens.

    .venv/bin/python -m benchmarks.idle_logs --seconds 60
"""

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from tests.sync.sandbox import SandboxEhr

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_DAY = ROOT / "tests" / "fixtures" / "clinic-export" / "day-2026-11-20.ndjson"
SETTLE_SECONDS = 15.0
"""Start-up work (migrations, the first mapping pass and sync run) ends well within this."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def command(*args: str) -> list[str]:
    """The `infusion-adapter` of the code this benchmark runs from, as a process of its own."""
    return [sys.executable, "-c", "from adapter.cli import entry; entry()", *args]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    options = parser.parse_args()
    ehr = SandboxEhr()
    ehr.reset()
    folder = Path(tempfile.mkdtemp(prefix="idle-logs-"))
    environment = {
        **os.environ,
        "ADAPTER_DATABASE_URL": f"sqlite:///{folder / 'adapter.db'}",
        "ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings"),
        "ADAPTER_EHR_BASE_URL": ehr.base,
        "ADAPTER_SYNC_INTERVAL_SECONDS": "10",
        "ADAPTER_EXPORT_DIR": str(folder / "exports"),
        "PYTHONPATH": str(ROOT),
    }
    try:
        subprocess.run(
            command("import", str(EXAMPLE_DAY), "--quiet"),
            env=environment,
            check=True,
            capture_output=True,
        )
        log = folder / "service.log"
        with log.open("w") as output:
            service = subprocess.Popen(
                command("serve", "--port", str(free_port())),
                env=environment,
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        time.sleep(SETTLE_SECONDS)
        settled = len(log.read_text().splitlines())
        time.sleep(options.seconds)
        lines = log.read_text().splitlines()[settled:]
        service.send_signal(signal.SIGINT)
        service.wait(timeout=30)
    finally:
        ehr.stop()
        shutil.rmtree(folder, ignore_errors=True)
    by_logger = Counter(
        line.split(" ")[3].rstrip(":") if line.count(" ") > 3 else line for line in lines
    )
    per_minute = len(lines) * 60 / options.seconds
    print(f"{len(lines)} lines in {options.seconds:g} s idle: {per_minute:.0f} a minute")
    for name, count in by_logger.most_common():
        print(f"  {count:6d}  {name}")


if __name__ == "__main__":
    main()
