"""The record of access written by several processes at once (replicas of the service, the CLI
beside them): each batch chains onto the one committed before it, whichever process wrote it,
and `infusion-adapter audit verify` finds the chain whole."""

import os
import subprocess
import sys
from itertools import pairwise

from click.testing import CliRunner
from sqlalchemy import func, select

from adapter.cli import main
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.tables import audit_events

PROCESSES = 4
BATCHES = 25
WRITER = """
import sys
from datetime import UTC, datetime
from adapter.security.audit import AuditEntry, AuditLog
from adapter.store.engine import make_engine

url, secret, name, batches = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
log = AuditLog(make_engine(url), secret)
sys.stdin.readline()  # every writer starts at once
for batch in range(batches):
    log.append([
        AuditEntry(datetime.now(UTC), name, "read", "GET", f"/fhir/Patient/{name}-{batch}-{n}",
                   "Patient", [f"Patient/{name}-{batch}-{n}"], None, 200, "127.0.0.1")
        for n in range(1 + batch % 4)
    ])
"""


def test_entries_written_by_several_processes_at_once_keep_the_chain_whole(
    runtime: Runtime, cli_environment: Settings
) -> None:
    settings = cli_environment
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    writers = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WRITER,
                settings.database_url,
                settings.secret_key,
                f"replica{n}",
                str(BATCHES),
            ],
            stdin=subprocess.PIPE,
            env=env,
        )
        for n in range(PROCESSES)
    ]
    for writer in writers:
        assert writer.stdin is not None
        writer.stdin.write(b"go\n")
        writer.stdin.flush()
    for writer in writers:
        assert writer.wait(timeout=120) == 0

    written = PROCESSES * sum(1 + batch % 4 for batch in range(BATCHES))
    with runtime.store.engine.connect() as connection:
        stored = connection.execute(select(func.count()).select_from(audit_events)).scalar()
        order = list(
            connection.execute(
                select(audit_events.c.client_id).order_by(audit_events.c.id)
            ).scalars()
        )
    turns = sum(1 for before, after in pairwise(order) if before != after)
    result = CliRunner().invoke(main, ["audit", "verify"])

    assert stored == written and len(set(order)) == PROCESSES
    assert turns > PROCESSES  # the writers' batches interleaved: they wrote at once
    assert result.exit_code == 0, result.output
    assert f"the audit record is whole: {written} entries verified" in result.output
