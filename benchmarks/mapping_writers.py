"""Mapping with one and with two processes on one PostgreSQL store: records mapped and stored
per second, the one process the baseline measured in the same run.

The same N synthetic records (the intake benchmark's mix) are loaded into two scratch schemas;
one process maps the first, two processes started together map the second. Each process opens
its own runtime (its own connections), as a replica or an `infusion-adapter import` would; the
two share the pending records by claim and store their batches in turn on the version clock.
It asserts that the two mapped every record once and made no second version of any resource.

    .venv/bin/python -m benchmarks.mapping_writers --records 3000
"""

import argparse
import multiprocessing
import time
from datetime import datetime
from itertools import islice
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from sqlalchemy import Connection, event, func, select

from adapter.runtime import open_runtime
from adapter.settings import Settings
from adapter.store import resources
from adapter.store.clock import take_turn
from adapter.store.tables import fhir_resource_versions, source_records
from benchmarks.postgres import scratch_schema
from benchmarks.synthetic import records

ROOT = Path(__file__).resolve().parent.parent


def _settings(url: str) -> Settings:
    return Settings(database_url=url, mappings_dir=ROOT / "mappings")


def _load(url: str, count: int) -> None:
    runtime = open_runtime(_settings(url))
    lines = enumerate(line.strip() for line in records(count))
    while batch := list(islice(lines, 1000)):
        runtime.intake.submit(batch)
    runtime.close()


Timing = tuple[int, float, float, float, float]
"""(records mapped, when it started, when it ended, seconds waiting for the turn, seconds
holding it)."""


def _map(url: str, start: Barrier, results: "Queue[Timing]") -> None:
    """Maps every pending record it can claim, and puts its Timing."""
    runtime = open_runtime(_settings(url))
    waited: list[float] = []
    held: list[float] = []
    turns: dict[int, float] = {}

    def timed_turn(connection: Connection, wanted: datetime) -> datetime:
        asked = time.perf_counter()
        moment = take_turn(connection, wanted)
        turns[id(connection)] = time.perf_counter()
        waited.append(turns[id(connection)] - asked)
        return moment

    def committed(connection: Connection) -> None:
        if (taken := turns.pop(id(connection), None)) is not None:
            held.append(time.perf_counter() - taken)

    resources.take_turn = timed_turn  # type: ignore[assignment]
    event.listen(runtime.store.engine, "commit", committed)
    start.wait()
    began = time.perf_counter()
    report = runtime.mapping.run()
    ended = time.perf_counter()
    runtime.close()
    results.put((report.records, began, ended, sum(waited), sum(held)))


def _run(url: str, processes: int) -> tuple[float, list[Timing]]:
    context = multiprocessing.get_context("spawn")
    start = context.Barrier(processes)
    results: Queue[Timing] = context.Queue()
    workers = [context.Process(target=_map, args=(url, start, results)) for _ in range(processes)]
    for worker in workers:
        worker.start()
    done = [results.get(timeout=600) for _ in workers]
    for worker in workers:
        worker.join()
    seconds = max(r[2] for r in done) - min(r[1] for r in done)
    return seconds, done


def _check(url: str, count: int) -> None:
    runtime = open_runtime(_settings(url))
    with runtime.store.engine.connect() as connection:
        pending = connection.execute(
            select(func.count()).where(source_records.c.mapping_state == "pending")
        ).scalar_one()
        most = connection.execute(select(func.max(fhir_resource_versions.c.version_id)))
        assert pending == 0, f"{pending} records left pending"
        assert most.scalar_one() == 1, "a resource got a second version"
    runtime.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=3000)
    args = parser.parse_args()
    rows = []
    for processes in (1, 2):
        with scratch_schema() as (_, url):
            _load(url, args.records)
            seconds, timings = _run(url, processes)
            assert sum(t[0] for t in timings) == args.records, timings
            _check(url, args.records)
            rows.append((processes, seconds, timings))
    baseline = args.records / rows[0][1]
    print(f"{args.records} records mapped and stored on PostgreSQL")
    print(
        f"{'processes':>9}  {'seconds':>8}  {'records/s':>9}  {'ratio':>5}  "
        "per process: records, share of its time waiting for the turn / holding it"
    )
    for processes, seconds, timings in rows:
        rate = args.records / seconds
        each = "; ".join(
            f"{t[0]}, {t[3] / (t[2] - t[1]):.0%} / {t[4] / (t[2] - t[1]):.0%}" for t in timings
        )
        print(f"{processes:>9}  {seconds:>8.2f}  {rate:>9.0f}  {rate / baseline:>5.2f}  {each}")


if __name__ == "__main__":
    main()
