"""Replicas benchmark: intake, mapping and delivery with 1, 2 and 3 replicas of the service on
one PostgreSQL behind a round-robin proxy, the one replica the baseline measured in the same
run; then what each record costs in CPU and in the store, stage by stage.

Each configuration gets a scratch schema of ADAPTER_TEST_POSTGRES_URL and an emptied sandbox EHR
(tests/ehr-server) that knows the records' patients. `infusion-adapter serve` runs as N
processes behind tests/round_robin.py, with the event path on (as deployed): records accepted
wake the mapping, resources mapped wake the sync. `--clients` threads post `--records`
synthetic records (the clinic's mix, benchmarks/synthetic.py) as fast as they are answered, in
requests of `--batch`; the clock starts at the first post. Printed per configuration: records/s
accepted through the proxy (until the last post is answered), records/s mapped (until no record
is pending), resources/s in the EHR (until nothing is left to deliver), and the CPU seconds of
the replicas, of PostgreSQL (the backends of this database, sampled from pg_stat_activity and
/proc), of the sandbox EHR and of this process (the proxy and the clients), and how many
transactions stored versions (each takes its turn on the version clock). The configurations
run `--rounds` times, every other round in reverse order, and each figure is the mean of its
rounds, so that a change in the machine's speed during the run weighs on all of them. The
machine's two cores are shared by all of these processes.

The stages' own costs are measured apart, in this process, on a fresh schema: the same records
through the intake (`Intake.submit`, as an import does, without HTTP), then mapped
(`MappingService.run`), then delivered (`sync_once`), each with the CPU of this process and of
PostgreSQL; and the store's rows and bytes per record once they are done.

    .venv/bin/python -m benchmarks.replicas [--records 6000] [--replicas 1,2,3] [--rounds 2]
"""

import argparse
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
from sqlalchemy import Engine, create_engine, func, select, text

from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.tables import fhir_resource_versions
from adapter.sync.engine import sync_once
from benchmarks.postgres import scratch_schema
from benchmarks.scratch import scratch_folder
from benchmarks.sync import cpu_seconds, new_mrns
from benchmarks.synthetic import records
from tests.replicas import Replicas, replica_environment
from tests.sync.sandbox import SandboxEhr


class PostgresCpu:
    """CPU seconds of the PostgreSQL backends serving one database, from a sample of
    pg_stat_activity and /proc every `every` seconds (a backend that ends between two samples
    loses its last fraction)."""

    def __init__(self, url: str, every: float = 0.25) -> None:
        self.engine: Engine = create_engine(url.split("?")[0])
        self.every = every
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self._stop = threading.Event()
        self._sample(initial=True)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _sample(self, initial: bool = False) -> None:
        query = text("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
        with self.engine.connect() as connection:
            pids = list(connection.execute(query).scalars())
        for pid in pids:
            try:
                used = cpu_seconds(pid)
            except (FileNotFoundError, ProcessLookupError):
                continue
            if pid not in self.first:
                self.first[pid] = used if initial else 0.0
            self.last[pid] = used

    def _loop(self) -> None:
        while not self._stop.wait(self.every):
            self._sample()

    def stop(self) -> float:
        self._stop.set()
        self.thread.join()
        self._sample()
        self.engine.dispose()
        return sum(self.last[pid] - self.first[pid] for pid in self.last)


def own_cpu() -> float:
    return time.process_time()


@dataclass
class Row:
    replicas: int
    posted: float
    mapped: float
    delivered: float
    resources: int
    turns: int
    """Transactions that stored versions (each takes its turn on the version clock)."""
    cpu: dict[str, float]

    def rates(self, records: int) -> tuple[float, float, float]:
        return records / self.posted, records / self.mapped, self.resources / self.delivered


@contextmanager
def fresh_store(mappings: Path, ehr: SandboxEhr) -> Iterator[Runtime]:
    with scratch_schema() as (_, url):
        runtime = open_runtime(
            Settings(database_url=url, mappings_dir=mappings, ehr_base_url=ehr.base)
        )
        try:
            yield runtime
        finally:
            runtime.close()


def post_all(base: str, key: str, lines: list[bytes], batch: int, clients: int) -> None:
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    batches = [lines[i : i + batch] for i in range(0, len(lines), batch)]
    local = threading.local()

    def post(chunk: list[bytes]) -> None:
        if not hasattr(local, "http"):
            local.http = httpx.Client(base_url=base, headers=headers, timeout=300)
        answer = local.http.post("/api/v1/records", content=b"".join(chunk))
        if answer.status_code not in (200, 201):
            raise RuntimeError(f"intake answered {answer.status_code}: {answer.text[:200]}")

    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(post, batches))


def wait_for(done: Callable[[], bool], seconds: float = 900) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError("the service did not finish in time")
        time.sleep(0.25)


def measure(
    replicas: int, lines: list[bytes], ehr: SandboxEhr, workdir: Path, args: argparse.Namespace
) -> Row:
    with fresh_store(workdir / "mappings", ehr) as runtime:
        _, key = runtime.clients.add_key_client("bench intake", "intake", datetime.now(UTC))
        env = replica_environment(
            runtime.settings.database_url, workdir / "mappings", ehr.base, sync_lease_seconds="10"
        )
        group = Replicas(replicas, env, workdir)
        try:
            postgres = PostgresCpu(runtime.settings.database_url)
            served = {pid: cpu_seconds(pid) for pid in group.pids()}
            ehr_cpu, mine = cpu_seconds(ehr.process.pid), own_cpu()
            started = time.monotonic()
            post_all(group.url, key, lines, args.batch, args.clients)
            posted = time.monotonic() - started

            def mapped() -> bool:
                counts = runtime.mapping.queue.counts()
                return sum(counts.values()) == len(lines) and not counts.get("pending")

            wait_for(mapped)
            mapped_at = time.monotonic() - started

            def delivered() -> bool:
                counts = runtime.outbox.counts()
                return counts["delivered"] > 0 and not counts["pending"] + counts["waiting"]

            wait_for(delivered)
            delivered_at = time.monotonic() - started
            cpu = {
                "replicas": sum(cpu_seconds(pid) - used for pid, used in served.items()),
                "PostgreSQL": postgres.stop(),
                "EHR": cpu_seconds(ehr.process.pid) - ehr_cpu,
                "proxy+clients": own_cpu() - mine,
            }
            answered = group.proxy.answered()
        finally:
            group.stop()
        resources = runtime.outbox.counts()["delivered"]
        turns = count_turns(runtime)
    print(
        f"  {replicas} replica(s): {delivered_at:.1f} s, requests answered per replica {answered}",
        flush=True,
    )
    return Row(replicas, posted, mapped_at, delivered_at, resources, turns, cpu)


def count_turns(runtime: Runtime) -> int:
    query = select(func.count(fhir_resource_versions.c.last_updated.distinct()))
    with runtime.store.engine.connect() as connection:
        return int(connection.execute(query).scalar_one())


def stage_costs(lines: list[bytes], ehr: SandboxEhr, workdir: Path, batch: int) -> None:
    """Intake, mapping and delivery one after another in this process: CPU per record."""
    with fresh_store(workdir / "mappings", ehr) as runtime:
        sync = runtime.sync
        assert sync is not None
        stages: list[tuple[str, float, float, float, float]] = []

        def stage(name: str, work: Callable[[], Any]) -> None:
            postgres = PostgresCpu(runtime.settings.database_url)
            ehr_cpu, mine, started = cpu_seconds(ehr.process.pid), own_cpu(), time.monotonic()
            work()
            seconds = time.monotonic() - started
            spent = own_cpu() - mine
            stages.append(
                (name, seconds, spent, postgres.stop(), cpu_seconds(ehr.process.pid) - ehr_cpu)
            )

        def intake() -> None:
            numbered = list(enumerate(lines, start=1))
            for start in range(0, len(numbered), batch):
                runtime.intake.submit(numbered[start : start + batch])

        stage("intake (in process)", intake)
        stage("mapping", runtime.mapping.run)
        runtime.resources.refresh_statistics()  # as an import of this size does
        stage("delivery (sync)", lambda: sync_once(sync, trigger="benchmark"))
        resources = runtime.outbox.counts()["delivered"]
        print(f"\nStages apart, in one process: {len(lines):,} records, {resources:,} resources")
        print(
            f"{'stage':<22}{'seconds':>8}  {'adapter CPU ms/record':>21}  "
            f"{'PostgreSQL CPU ms/record':>24}  {'EHR CPU ms/record':>17}"
        )
        for name, seconds, spent, postgres, ehr_spent in stages:
            per = 1000 / len(lines)
            print(
                f"{name:<22}{seconds:>8.1f}  {spent * per:>21.2f}  {postgres * per:>24.2f}  "
                f"{ehr_spent * per:>17.2f}"
            )
        print(f"resources per record: {resources / len(lines):.2f}")
        store_sizes(runtime, len(lines))


def store_sizes(runtime: Runtime, count: int) -> None:
    query = text(
        "SELECT c.relname, pg_total_relation_size(c.oid) FROM pg_class c "
        "JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = current_schema() AND c.relkind = 'r' ORDER BY 2 DESC"
    )
    with runtime.store.engine.connect() as connection:
        connection.execute(text("ANALYZE"))
        sizes = connection.execute(query).all()
        rows = {
            name: connection.execute(text(f'SELECT count(*) FROM "{name}"')).scalar_one()
            for name, _ in sizes
        }
    print("\nThe store once they are delivered (tables with their indexes and TOAST):")
    print(f"{'table':<32}{'rows/record':>12}{'bytes/record':>14}")
    total_rows = total_bytes = 0
    for name, size in sizes:
        if rows[name] == 0:
            continue
        total_rows += rows[name]
        total_bytes += size
        print(f"{name:<32}{rows[name] / count:>12.2f}{size / count:>14,.0f}")
    print(f"{'all tables':<32}{total_rows / count:>12.2f}{total_bytes / count:>14,.0f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=6000)
    parser.add_argument("--replicas", default="1,2,3")
    parser.add_argument("--batch", type=int, default=100, help="records per request")
    parser.add_argument("--clients", type=int, default=4, help="concurrent posting clients")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds over the configurations, every other reversed"
    )
    args = parser.parse_args()
    counts = [int(n) for n in args.replicas.split(",")]
    lines = list(records(args.records))
    mrns = sorted({orjson.loads(line)["patient"]["mrn"] for line in lines})
    workdir = scratch_folder("replicas-bench-")
    ehr = SandboxEhr()
    try:
        measured: dict[int, list[Row]] = {replicas: [] for replicas in counts}
        for round_ in range(args.rounds):
            for replicas in counts if round_ % 2 == 0 else counts[::-1]:
                ehr.reset()
                ehr.add_patients(new_mrns(ehr, mrns))
                measured[replicas].append(measure(replicas, lines, ehr, workdir, args))
        report([mean(rows) for rows in measured.values()], args)
        ehr.reset()
        ehr.add_patients(new_mrns(ehr, mrns))
        stage_costs(lines, ehr, workdir, args.batch)
    finally:
        ehr.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def mean(rows: list[Row]) -> Row:
    """The configuration's rounds as one: the mean of each time and CPU figure."""
    n = len(rows)
    return Row(
        rows[0].replicas,
        sum(r.posted for r in rows) / n,
        sum(r.mapped for r in rows) / n,
        sum(r.delivered for r in rows) / n,
        rows[0].resources,
        round(sum(r.turns for r in rows) / n),
        {key: sum(r.cpu[key] for r in rows) / n for key in rows[0].cpu},
    )


def report(rows: list[Row], args: argparse.Namespace) -> None:
    base = rows[0].rates(args.records)
    print(
        f"\n{args.records:,} records posted by {args.clients} clients in requests of "
        f"{args.batch}, through the proxy, on PostgreSQL ({os.cpu_count()} cores); the mean "
        f"of {args.rounds} round(s), load average {os.getloadavg()[0]:.1f} at the end"
    )
    print(
        f"{'replicas':>8}  {'accepted/s':>10} {'ratio':>5}  {'mapped/s':>8} {'ratio':>5}  "
        f"{'resources in EHR/s':>18} {'ratio':>5}   CPU s: replicas / PostgreSQL / EHR / "
        "proxy+clients, of wall s"
    )
    for row in rows:
        rates = row.rates(args.records)
        cpu = " / ".join(f"{value:.1f}" for value in row.cpu.values())
        print(
            f"{row.replicas:>8}  {rates[0]:>10,.0f} {rates[0] / base[0]:>5.2f}  "
            f"{rates[1]:>8,.0f} {rates[1] / base[1]:>5.2f}  {rates[2]:>18,.0f} "
            f"{rates[2] / base[2]:>5.2f}   {cpu} of {row.delivered:.1f}"
        )
    for row in rows:
        per = 1000 / args.records
        print(
            f"{row.replicas} replica(s), whole pipeline per record: replicas "
            f"{row.cpu['replicas'] * per:.2f} ms CPU, PostgreSQL {row.cpu['PostgreSQL'] * per:.2f} "
            f"ms; {row.resources / args.records:.2f} resources a record; {row.turns:,} store "
            f"transactions, {args.records / max(row.turns, 1):.1f} records each"
        )


if __name__ == "__main__":
    main()
