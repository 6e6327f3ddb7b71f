"""Sync benchmark: pending resources delivered to the sandbox EHR per second, beside the peer's
limit, and the sync process's peak memory.

Synthetic records are imported and mapped into a SQLite store (or, with `--store postgresql`,
a scratch schema of the test PostgreSQL) until about `--resources` are pending. The baseline,
measured in the same run against a fresh sandbox EHR (Medplum's FhirRouter in Node,
tests/ehr-server): a plain client posting the same resources straight to the server as
transaction Bundles of the same size, with nothing else (no lookups, no bookkeeping). It runs
once before the sync and once after, each time into an emptied EHR, and the baseline is the mean
of the two, so that a change in the machine's speed during the run weighs on both sides.
`infusion-adapter sync --once` runs in its own process, whose peak RSS (VmHWM) is read from
/proc while it runs, and its CPU time, the sandbox's and the whole machine's are printed beside
the run's length: on a machine of few cores the sync, the EHR and the database share them. Every
run ends with every resource in the EHR, which is counted after the sync.

    .venv/bin/python -m benchmarks.sync --resources 100000 [--store postgresql]
"""

import argparse
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import orjson
import requests

from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.resources import StoredResource
from benchmarks.postgres import scratch_schema
from benchmarks.scratch import scratch_folder
from benchmarks.synthetic import records
from tests.sync.sandbox import SandboxEhr

CORES = os.cpu_count() or 1
RESOURCES_PER_RECORD = 5.6
"""About how many resources one synthetic record maps to (vitals give several)."""


def cpu_seconds(pid: int) -> float:
    """User and system CPU time a process has used so far (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy so far, on every core (/proc/stat): the
    sync, the sandbox EHR and the database share it."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def plain_client(ehr: SandboxEhr, bodies: list[bytes], batch: int) -> float:
    """Transaction Bundles of the stored resources, posted one after another, with the sync's
    own `Prefer: return=minimal`: resources/s."""
    session = requests.Session()
    session.trust_env = False
    server_cpu = cpu_seconds(ehr.process.pid)
    busy = machine_busy()
    started = time.perf_counter()
    for start in range(0, len(bodies), batch):
        entries = b",".join(bodies[start : start + batch])
        bundle = b'{"resourceType":"Bundle","type":"transaction","entry":[' + entries + b"]}"
        answer = session.post(
            ehr.base,
            data=bundle,
            headers={"Content-Type": "application/fhir+json", "Prefer": "return=minimal"},
        )
        answer.raise_for_status()
    seconds = time.perf_counter() - started
    server_cpu = cpu_seconds(ehr.process.pid) - server_cpu
    busy = machine_busy() - busy
    print(
        f"  (sandbox server CPU {server_cpu:.1f} s of {seconds:.1f} s; "
        f"machine busy {busy:.1f} of {seconds * CORES:.1f} CPU s)"
    )
    return len(bodies) / seconds


def entry(content: str, mrn_to_patient: dict[str, str]) -> bytes:
    """The stored resource as a create entry, its patient as a literal reference."""
    resource = orjson.loads(content)
    resource.pop("id")
    subject = resource.get("subject") or {}
    mrn = subject.get("identifier", {}).get("value")
    if mrn in mrn_to_patient:
        resource["subject"] = {**subject, "reference": mrn_to_patient[mrn]}
    request = {"method": "POST", "url": resource["resourceType"]}
    return orjson.dumps({"resource": resource, "request": request})


def _plain_bodies(ehr: SandboxEhr, mrns: list[str], stored: list[StoredResource]) -> list[bytes]:
    """An emptied EHR with the patients, and the plain client's entries for it."""
    ehr.reset()
    ehr.add_patients(new_mrns(ehr, mrns))
    patients = {p["identifier"][0]["value"]: f"Patient/{p['id']}" for p in ehr.all("Patient")}
    return [entry(resource.content, patients) for resource in stored]


def new_mrns(ehr: SandboxEhr, mrns: list[str]) -> list[str]:
    """The MRNs the sandbox's own patients do not already have (two Patients with one MRN
    would rightly hold that patient's resources back)."""
    known = {p["identifier"][0]["value"] for p in ehr.all("Patient")}
    return [mrn for mrn in mrns if mrn not in known]


def high_water_kb(pid: int) -> int:
    """VmHWM of a running process: its own peak resident memory. (getrusage's ru_maxrss of a
    child would also count the memory of this process, which it had before exec.)"""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--resources", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=50)
    parser.add_argument("--store", choices=["sqlite", "postgresql"], default="sqlite")
    args = parser.parse_args()
    if args.store == "postgresql":
        with scratch_schema() as (_, url):
            run(args, url)
    else:
        run(args, None)


def run(args: argparse.Namespace, database_url: str | None) -> None:
    workdir = scratch_folder("sync-bench-")
    ehr = SandboxEhr()
    runtime: Runtime | None = None
    try:
        settings = Settings(
            database_url=database_url or f"sqlite:///{workdir / 'adapter.db'}",
            mappings_dir=workdir / "mappings",
            ehr_base_url=ehr.base,
            sync_batch_size=args.batch,
        )
        runtime = open_runtime(settings)
        lines = list(records(int(args.resources / RESOURCES_PER_RECORD)))
        for start in range(0, len(lines), 5000):
            chunk = lines[start : start + 5000]
            runtime.intake.submit(list(enumerate(chunk, start=start + 1)))
        runtime.mapping.run()
        runtime.resources.refresh_statistics()
        stored = runtime.resources.all_current()
        mrns = sorted({orjson.loads(line)["patient"]["mrn"] for line in lines})
        print(f"{len(stored):,} resources pending for {len(mrns):,} patients", flush=True)

        bodies = _plain_bodies(ehr, mrns, stored)
        before = plain_client(ehr, bodies, args.batch)
        del bodies
        print(f"plain client, transaction Bundles of {args.batch}: {before:,.0f} resources/s")

        ehr.reset()
        ehr.add_patients(new_mrns(ehr, mrns))
        env = {
            **os.environ,
            "ADAPTER_DATABASE_URL": settings.database_url,
            "ADAPTER_MAPPINGS_DIR": str(settings.mappings_dir),
            "ADAPTER_EHR_BASE_URL": ehr.base,
            "ADAPTER_SYNC_BATCH_SIZE": str(args.batch),
            "ADAPTER_LOG_LEVEL": "WARNING",
        }
        server_cpu = cpu_seconds(ehr.process.pid)
        busy = machine_busy()
        started = time.perf_counter()
        process = subprocess.Popen(
            [sys.executable, "-m", "adapter.cli", "sync", "--once", "--quiet"],
            env=env,
            cwd=workdir,
        )
        peak_kb = 0
        while process.poll() is None:
            peak_kb = max(peak_kb, high_water_kb(process.pid))
            time.sleep(0.1)
        seconds = time.perf_counter() - started
        busy = machine_busy() - busy
        server_cpu = cpu_seconds(ehr.process.pid) - server_cpu
        status = process.returncode
        used = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = used.ru_utime + used.ru_stime
        delivered = runtime.outbox.counts()["delivered"]
        held = ehr.control("GET", "/identifiers")
        # Types the EHR holds none of (stand-ins, where the types they stand for are taken)
        # are not in its answer.
        types = {r.resource_type for r in stored}
        in_ehr = sum(held.get(t, {}).get("identifiers", 0) for t in types)
        copies = sum(held.get(t, {}).get("copies", 0) for t in types)
        rate = delivered / seconds
        peak_mb = peak_kb / 1024
        print(
            f"adapter sync (process start to exit): {rate:,.0f} resources/s, "
            f"peak RSS {peak_mb:.0f} MB, exit status {status}"
        )
        print(
            f"sync process CPU time {cpu:.1f} s of {seconds:.1f} s; "
            f"sandbox server CPU meanwhile {server_cpu:.1f} s; machine busy {busy:.1f} of "
            f"{seconds * CORES:.1f} CPU s (the rest, about {max(0.0, busy - cpu - server_cpu):.1f} "
            "s: a database server, and the benchmark's own polling)",
            flush=True,
        )
        waiting = runtime.outbox.listed(("waiting",), 3)
        print(
            f"delivered {delivered:,} of {len(stored):,}; the EHR holds {in_ehr:,} identifiers "
            f"in {copies:,} copies" + "".join(f"\n  waiting: {i.detail}" for i in waiting),
            flush=True,
        )

        after = plain_client(ehr, _plain_bodies(ehr, mrns, stored), args.batch)
        baseline = (before + after) / 2
        print(
            f"plain client again: {after:,.0f} resources/s; baseline (mean) {baseline:,.0f}\n"
            f"sync / plain client: {rate / baseline:.2f}"
        )
    finally:
        if runtime is not None:
            runtime.close()
        ehr.stop()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
