"""Latency benchmark: from a record sent to intake to its resources in the EHR, with the
event path on and, as the baseline measured in the same run, off (today's intervals).

The service runs as users run it, `infusion-adapter serve`, in a process of its own, against
the sandbox EHR (tests/ehr-server) on loopback, on SQLite and on PostgreSQL (a scratch schema of
ADAPTER_TEST_POSTGRES_URL). A client posts synthetic records (the clinic's mix: per session two
attestations, the session, about 30 vitals, sometimes a side effect) at a steady rate, one
request every 100 ms, for `--seconds` at each rate; each accepted record's time starts when its
request is sent, so that the intake's own time counts. Once the adapter has delivered
everything, the EHR is read: a record is in the EHR when the last of the resources made from it
is (each resource's `meta.lastUpdated`, written by the EHR, on the same clock). Then, with the
event path on, a backlog of `--scale` resources is loaded, and once the sync works through it a
new session with a side effect is posted: how long its AdverseEvent takes to be in the EHR
(`--probes` in turn, each printed with where its time went: accepted to mapped, mapped to sent,
sent to answered, from the outbox's journey).

    .venv/bin/python -m benchmarks.latency [--seconds 30] [--rates 10,50,200]
        [--stores sqlite,postgresql] [--scale 100000] [--probes 5]
"""

import argparse
import os
import random
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
from sqlalchemy import select

from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.tables import fhir_resources
from adapter.sync.capabilities import DELIVERED_TYPES
from benchmarks.postgres import scratch_schema
from benchmarks.scratch import scratch_folder
from benchmarks.sync import RESOURCES_PER_RECORD, new_mrns
from benchmarks.synthetic import NURSE, records, session_records
from tests.sync.sandbox import RECORDS_SYSTEM, SandboxEhr

TICK = 0.1
MRNS = [str(100000 + number) for number in range(3000)]
"""Every MRN the synthetic sessions use."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def service(runtime: Runtime, ehr: SandboxEhr, workdir: Path, events: bool) -> Iterator[str]:
    """`infusion-adapter serve` on the benchmark's store: its base URL, until the block ends."""
    port = free_port()
    env = {
        **os.environ,
        "ADAPTER_DATABASE_URL": runtime.settings.database_url,
        "ADAPTER_MAPPINGS_DIR": str(runtime.settings.mappings_dir),
        "ADAPTER_EHR_BASE_URL": ehr.base,
        "ADAPTER_LOG_LEVEL": "WARNING",
        "ADAPTER_EVENT_DELIVERY": "true" if events else "false",
        "ADAPTER_PUBLIC_URL": f"http://127.0.0.1:{port}",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "adapter.cli", "serve", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or process.poll() is not None:
                raise RuntimeError("the service did not start")
            time.sleep(0.1)
        yield base
    finally:
        # A service stopped mid-backlog finishes its run first: it is killed after a minute.
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def session_lines(first: int) -> Iterator[bytes]:
    """Synthetic records, session after session from session number `first`."""
    rng = random.Random(first)
    number = first
    while True:
        for record in session_records(number, rng):
            yield orjson.dumps(record) + b"\n"
        number += 1


def post_steadily(
    client: httpx.Client, base: str, key: str, rate: int, seconds: float, first: int
) -> tuple[dict[str, float], float]:
    """Records posted at `rate` a second, a request each TICK, for `seconds`: for each
    accepted, when its request was sent (Unix time), and the rate achieved."""
    lines = session_lines(first)
    accepted: dict[str, float] = {}
    started = time.monotonic()
    sent, tick = 0, 0
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    while (elapsed := time.monotonic() - started) < seconds:
        due = int(rate * min(seconds, (tick + 1) * TICK)) - sent
        batch = [next(lines) for _ in range(due)]
        if batch:
            at = time.time()
            answer = client.post(f"{base}/api/v1/records", content=b"".join(batch), headers=headers)
            for result in answer.json()["results"]:
                if result["outcome"] == "created":
                    accepted[f"{result['record_type']}/{result['id']}"] = at
            sent += len(batch)
        tick += 1
        pause = started + tick * TICK - time.monotonic()
        if pause > 0:
            time.sleep(pause)
    return accepted, sent / max(elapsed, TICK)


def drained(runtime: Runtime, deadline: float) -> bool:
    """Wait until nothing is left to map or deliver (or the deadline)."""
    while time.monotonic() < deadline:
        pending = runtime.mapping.queue.counts().get("pending", 0)
        if not pending and not runtime.outbox.count_due(datetime.now(UTC), waiting=True):
            return True
        time.sleep(0.2)
    return False


def in_ehr_times(ehr: SandboxEhr) -> dict[str, float]:
    """When each record's last resource reached the EHR (Unix time), by `type/id`: a resource
    belongs to the record its identifier names (system `.../{record type}`, value `{id}/...`)."""
    arrived: dict[str, float] = {}
    for resource_type in DELIVERED_TYPES:
        for resource in ehr.all(resource_type):
            listed = resource.get("identifier")
            for identifier in listed if isinstance(listed, list) else [listed] if listed else []:
                record_type = str(identifier.get("system", "")).rsplit("/", 1)[-1]
                key = f"{record_type}/{str(identifier.get('value', '')).split('/', 1)[0]}"
                moment = datetime.fromisoformat(resource["meta"]["lastUpdated"]).timestamp()
                arrived[key] = max(arrived.get(key, 0.0), moment)
    return arrived


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def measure_rates(
    runtime: Runtime, ehr: SandboxEhr, workdir: Path, key: str, events: bool, args: Any
) -> list[dict[str, Any]]:
    """Each rate in turn against one service; a row per rate."""
    rows = []
    interval = runtime.settings.sync_interval_seconds
    with service(runtime, ehr, workdir, events) as base, httpx.Client(timeout=60) as client:
        for index, rate in enumerate(args.rates):
            first = (1 + index + (10 if events else 0)) * 100_000
            accepted, achieved = post_steadily(client, base, key, rate, args.seconds, first)
            complete = drained(runtime, time.monotonic() + interval + 60)
            arrived = in_ehr_times(ehr)
            delays = [arrived[k] - at for k, at in accepted.items() if k in arrived]
            rows.append(
                {
                    "events": events,
                    "rate": rate,
                    "achieved": achieved,
                    "records": len(accepted),
                    "in_ehr": len(delays),
                    "complete": complete,
                    "p50": percentile(delays, 0.50),
                    "p95": percentile(delays, 0.95),
                    "p99": percentile(delays, 0.99),
                    "max": max(delays),
                }
            )
            print(_row(runtime, rows[-1]), flush=True)
    return rows


def _row(runtime: Runtime, row: dict[str, Any]) -> str:
    store = "postgresql" if runtime.settings.database_url.startswith("postgresql") else "sqlite"
    path = "on " if row["events"] else "off"
    return (
        f"{store:<10} {path:<6} {row['rate']:>5} {row['achieved']:>8.1f} "
        f"{row['in_ehr']:>6}/{row['records']:<6} {row['p50']:>7.2f} {row['p95']:>7.2f} "
        f"{row['p99']:>7.2f} {row['max']:>7.2f}" + ("" if row["complete"] else "  (not drained)")
    )


def side_effect_during_backlog(
    runtime: Runtime, ehr: SandboxEhr, workdir: Path, key: str, scale: int, probes: int
) -> list[float | None]:
    """A backlog of about `scale` resources loaded while the service runs; once the sync works
    through it, `probes` new sessions with a side effect posted in turn: seconds to each one's
    AdverseEvent in the EHR (None: not within two minutes)."""
    count = int(scale / RESOURCES_PER_RECORD)
    with service(runtime, ehr, workdir, events=True) as base, httpx.Client(timeout=60) as client:
        lines = list(records(count, seed=11))
        for start in range(0, len(lines), 5000):
            runtime.intake.submit(list(enumerate(lines[start : start + 5000], start=start + 1)))
        before = runtime.outbox.counts()["delivered"]
        deadline = time.monotonic() + 600
        while runtime.outbox.counts()["delivered"] < before + scale // 20:
            if time.monotonic() > deadline:
                raise RuntimeError("the backlog did not start to move")
            time.sleep(0.2)
        found = []
        for probe in range(probes):
            found.append(_probe(runtime, ehr, client, base, key, scale, 9_000_000 + probe))
            time.sleep(2)
        return found


def _probe(
    runtime: Runtime,
    ehr: SandboxEhr,
    client: httpx.Client,
    base: str,
    key: str,
    scale: int,
    number: int,
) -> float | None:
    """A new session and a side effect of it posted; seconds until the EHR holds the
    AdverseEvent, polled every 50 ms."""
    pending = runtime.mapping.queue.counts().get("pending", 0)
    due = runtime.outbox.count_due(datetime.now(UTC))
    rows = list(session_records(number, random.Random(number)))[:3]
    event = {
        "record_type": "adverse_event",
        "id": f"AE-{number:08d}-NEW",
        "revision": 1,
        "session_id": rows[2]["id"],
        "patient": rows[2]["patient"],
        "event": "HYPERTENSION",
        "onset_at": rows[2]["infusion_start"],
        "resolved_at": rows[2]["infusion_end"],
        "severity": "moderate",
        "serious": False,
        "actions": ["RATE_REDUCED"],
        "medications_given": [],
        "outcome": "resolved",
        "recorded_by": NURSE,
    }
    body = b"".join(orjson.dumps(row) + b"\n" for row in [*rows, event])
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/x-ndjson"}
    sent = time.monotonic()  # the intake's own time counts
    answer = client.post(f"{base}/api/v1/records", content=body, headers=headers)
    if answer.json()["summary"]["created"] != 4:
        raise RuntimeError(f"the side effect's records were not all accepted: {answer.text}")
    search = f"{ehr.base}/AdverseEvent"
    system = f"{RECORDS_SYSTEM}/adverse_event"
    found = None
    while time.monotonic() - sent < 120:
        answer = client.get(search, params={"identifier": f"{system}|{event['id']}"})
        if answer.status_code == 200 and answer.json().get("entry"):
            found = time.monotonic() - sent
            break
        time.sleep(0.05)
    store = "postgresql" if runtime.settings.database_url.startswith("postgresql") else "sqlite"
    left = runtime.outbox.count_due(datetime.now(UTC))
    said = f"{found:.2f} s" if found is not None else "not within 120 s"
    print(
        f"{store}: side effect posted during a backlog of {scale:,} resources "
        f"({pending:,} records still to map, {due:,} resources due): in the EHR after "
        f"{said}; {left:,} resources of the backlog still due then; {_journey(runtime, event)}",
        flush=True,
    )
    return found


def _journey(runtime: Runtime, event: dict[str, Any]) -> str:
    """Where the side effect's time went, from its AdverseEvent's journey in the outbox:
    received to mapped (queued for the EHR), to sent, to answered (recorded by the sync once
    the batch's answer is in: waited for up to 10 s)."""
    with runtime.store.engine.connect() as connection:
        ids = list(
            connection.execute(
                select(fhir_resources.c.id).where(
                    fhir_resources.c.source_type == "adverse_event",
                    fhir_resources.c.source_id == event["id"],
                    fhir_resources.c.resource_type == "AdverseEvent",
                )
            ).scalars()
        )
    deadline = time.monotonic() + 10
    while True:
        journeys = runtime.outbox.journeys(ids)
        if not journeys:
            return "no journey"
        journey = next(iter(journeys.values()))
        moments = [journey[step] for step in ("received", "mapped", "sent", "answered")]
        if None not in moments:
            break
        if time.monotonic() > deadline:
            return f"journey {journey}"
        time.sleep(0.1)
    at = [datetime.fromisoformat(moment) for moment in moments]
    mapped, sent, answered = ((at[i + 1] - at[i]).total_seconds() for i in range(3))
    return f"mapped after {mapped:.2f} s, sent {sent:.2f} s later, answered {answered:.2f} s later"


def run_store(database_url: str | None, args: argparse.Namespace) -> None:
    workdir = scratch_folder("latency-bench-")
    ehr = SandboxEhr()
    runtime: Runtime | None = None
    try:
        settings = Settings(
            database_url=database_url or f"sqlite:///{workdir / 'adapter.db'}",
            mappings_dir=workdir / "mappings",
            ehr_base_url=ehr.base,
        )
        runtime = open_runtime(settings)
        _, key = runtime.clients.add_key_client("latency benchmark", "intake", datetime.now(UTC))
        ehr.reset()
        ehr.add_patients(new_mrns(ehr, MRNS))
        rows = []
        for events in (False, True):
            if args.rates:
                rows += measure_rates(runtime, ehr, workdir, key, events, args)
        for rate in args.rates:
            off, on = (
                next(r for r in rows if r["rate"] == rate and r["events"] is e)
                for e in (False, True)
            )
            print(
                f"  {rate}/s: event path p95 {on['p95']:.2f} s against {off['p95']:.2f} s with "
                f"the interval alone ({on['p95'] / off['p95']:.3f} of it)",
                flush=True,
            )
        if args.scale:
            found = side_effect_during_backlog(runtime, ehr, workdir, key, args.scale, args.probes)
            seconds = ", ".join(f"{f:.2f}" if f is not None else "-" for f in found)
            print(f"  side effects during the backlog, seconds to the EHR: {seconds}", flush=True)
    finally:
        if runtime is not None:
            runtime.close()
        ehr.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="Posting time per rate.")
    parser.add_argument(
        "--rates", default="10,50,200", help="Records per second, in turn (empty: none)."
    )
    parser.add_argument("--stores", default="sqlite,postgresql")
    parser.add_argument(
        "--scale", type=int, default=100_000, help="Resources of the backlog (0: none)."
    )
    parser.add_argument(
        "--probes", type=int, default=5, help="Side effects posted during the backlog."
    )
    args = parser.parse_args()
    args.rates = [int(rate) for rate in args.rates.split(",") if rate]
    print(
        "store      events  rate achieved  in EHR/posted   p50 s   p95 s   p99 s   max s "
        "(sent to intake -> in the EHR)",
        flush=True,
    )
    for store in args.stores.split(","):
        context = scratch_schema() if store == "postgresql" else nullcontext(None)
        with context as scratch:
            run_store(scratch[1] if scratch else None, args)


if __name__ == "__main__":
    main()
