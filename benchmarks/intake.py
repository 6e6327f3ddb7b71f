"""Intake benchmark: N synthetic records through `infusion-adapter import`, SQLite and PostgreSQL.

Prints records/s and peak RSS of the import process for each store, beside an anchor measured
in the same run: the same lines written by a bare driver loop (no validation, no revision rules,
one table), so that the ratio says what intake costs on this machine today.

    .venv/bin/python -m benchmarks.intake --records 1000000
"""

import argparse
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

import psycopg
from sqlalchemy import create_engine, text

from benchmarks.postgres import POSTGRES_URL, scratch_schema
from benchmarks.synthetic import records

ROOT = Path(__file__).resolve().parent.parent
BATCH = 1000


def _lines(path: Path) -> Iterator[list[tuple[int, str]]]:
    with path.open("rb") as handle:
        numbered = ((n, line.decode()) for n, line in enumerate(handle))
        while batch := list(islice(numbered, BATCH)):
            yield batch


def anchor_sqlite(path: Path, workdir: Path) -> float:
    db = sqlite3.connect(workdir / f"anchor-{uuid.uuid4().hex}.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE raw (line INTEGER PRIMARY KEY, body TEXT NOT NULL)")
    started = time.perf_counter()
    for batch in _lines(path):
        db.executemany("INSERT INTO raw VALUES (?, ?)", batch)
        db.commit()
    elapsed = time.perf_counter() - started
    db.close()
    return elapsed


def anchor_postgres(path: Path, schema: str) -> float:
    conninfo = POSTGRES_URL.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(conninfo, options=f"-csearch_path={schema}") as db:
        db.execute("CREATE TABLE raw (line INTEGER PRIMARY KEY, body TEXT NOT NULL)")
        db.commit()
        started = time.perf_counter()
        with db.cursor() as cursor:
            for batch in _lines(path):
                cursor.executemany("INSERT INTO raw VALUES (%s, %s)", batch)
                db.commit()
        return time.perf_counter() - started


def run_import(path: Path, database_url: str) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of `infusion-adapter import` as a process of its own."""
    env = {
        **os.environ,
        "ADAPTER_DATABASE_URL": database_url,
        "ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings"),
        "ADAPTER_LOG_LEVEL": "WARNING",
    }
    command = [sys.executable, "-m", "adapter.cli", "import", str(path), "--quiet", "--no-map"]
    started = time.perf_counter()
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(process.pid, 0)
    elapsed = time.perf_counter() - started
    output = process.stdout.read().decode() if process.stdout else ""
    if os.waitstatus_to_exitcode(status) != 0:
        error = process.stderr.read().decode() if process.stderr else ""
        raise SystemExit(f"import failed:\n{output}\n{error}")
    return elapsed, usage.ru_maxrss / 1024


def stored_count(database_url: str) -> int:
    engine = create_engine(database_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.connect() as connection:
        count = connection.execute(text("SELECT count(*) FROM source_record_revisions")).scalar()
    engine.dispose()
    return int(count or 0)


def report(store: str, count: int, seconds: float, rss: float, anchor: float) -> None:
    rate, anchor_rate = count / seconds, count / anchor
    print(
        f"{store:<10} {rate:>9,.0f} records/s  peak RSS {rss:6.1f} MB  "
        f"anchor (bare driver inserts) {anchor_rate:>9,.0f} records/s  "
        f"ratio {rate / anchor_rate:.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        source = workdir / "records.ndjson"
        with source.open("wb") as handle:
            handle.writelines(records(args.records))
        print(
            f"{args.records:,} synthetic records, {source.stat().st_size / 1e6:,.0f} MB of NDJSON"
        )

        if args.store in ("sqlite", "both"):
            url = f"sqlite:///{workdir / 'adapter.db'}"
            seconds, rss = run_import(source, url)
            assert stored_count(url) == args.records, "not every record was stored"
            report("sqlite", args.records, seconds, rss, anchor_sqlite(source, workdir))

        if args.store in ("postgresql", "both"):
            with scratch_schema() as (schema, url):
                seconds, rss = run_import(source, url)
                assert stored_count(url) == args.records, "not every record was stored"
                report("postgresql", args.records, seconds, rss, anchor_postgres(source, schema))


if __name__ == "__main__":
    main()
