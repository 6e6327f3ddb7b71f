"""FHIR endpoint benchmark: read and search latency over loopback at several store sizes.

For each size it loads synthetic Observations (one patient per ~330 resources, spread over a
year) through the adapter's resource writer into a fresh store, starts `infusion-adapter serve`
on loopback, and measures from a separate load process, each request with a SMART access token
(checked, and recorded in the audit, as in use): read by id, a patient search with a
date and `_count=100`, and a `_lastUpdated=gt` poll. Beside them, in the same run, a bare
FastAPI endpoint returning the same read bytes from memory: the stack's own limit. The reads
of the two are measured in turns, so that a change in the machine's speed weighs on both.

    .venv/bin/python -m benchmarks.fhir_api --sizes 10000,100000,1000000 --store both
"""

import argparse
import os
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from http.client import HTTPConnection
from pathlib import Path
from typing import Any

import orjson

from adapter.security.clients import Clients
from adapter.store import migrate
from adapter.store.engine import make_engine
from adapter.store.resources import MappedRecord, ResourceStore, ResourceWriter
from benchmarks.postgres import scratch_schema

ROOT = Path(__file__).resolve().parent.parent
MRN = "https://ketamine-clinic.example.org/fhir/sid/mrn"
PER_PATIENT = 330
START = datetime(2026, 1, 1, tzinfo=UTC)


def observation(number: int) -> dict[str, Any]:
    patient = number // PER_PATIENT
    moment = START + timedelta(minutes=(number % PER_PATIENT) * 1500 + patient % 60)
    return {
        "resourceType": "Observation",
        "id": str(uuid.UUID(int=number + 1)),
        "meta": {"source": "https://ketamine-clinic.example.org/fhir/infusion-adapter"},
        "identifier": [
            {
                "system": "https://ketamine-clinic.example.org/fhir/sid/infusion-charting/vitals",
                "value": f"VIT-{number}/heart_rate",
            }
        ],
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]
        },
        "subject": {"type": "Patient", "identifier": {"system": MRN, "value": f"P{patient:06d}"}},
        "effectiveDateTime": moment.isoformat(),
        "valueQuantity": {
            "value": 60 + number % 50,
            "unit": "beats/minute",
            "system": "http://unitsofmeasure.org",
            "code": "/min",
        },
    }


def load(url: str, size: int) -> None:
    engine = make_engine(url)
    migrate.upgrade(engine)
    now = datetime.now(UTC)
    for start in range(0, size, 2000):
        batch = [observation(n) for n in range(start, min(size, start + 2000))]
        with engine.begin() as connection:
            ResourceWriter(connection).save([MappedRecord("vitals", f"bench-{start}", batch)], now)
    ResourceStore(engine).refresh_statistics()  # as the service does after a large load
    engine.dispose()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start(command: list[str], port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return process
        except OSError:
            time.sleep(0.1)
    process.kill()
    raise SystemExit(f"{command[0]} did not listen on {port}")


Figures = tuple[float, float, float]
"""p50 ms, p99 ms, requests/s."""


def timed(
    port: int, paths: list[str], seconds: float, headers: dict[str, str], threads: int = 4
) -> tuple[list[float], float]:
    """The latency of each request sent over `seconds` from `threads` keep-alive
    connections, and the time they took."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def worker(offset: int) -> None:
        connection = HTTPConnection("127.0.0.1", port, timeout=30)
        mine, index = [], offset
        while time.monotonic() < stop:
            path = paths[index % len(paths)]
            index += threads
            began = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                raise SystemExit(f"{path}: {response.status}")
            mine.append(time.perf_counter() - began)
        with lock:
            latencies.extend(mine)

    pool = [threading.Thread(target=worker, args=(n,)) for n in range(threads)]
    began = time.perf_counter()
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return latencies, time.perf_counter() - began


def figures_of(latencies: list[float], elapsed: float) -> Figures:
    quantiles = statistics.quantiles(latencies, n=100)
    return quantiles[49] * 1000, quantiles[98] * 1000, len(latencies) / elapsed


def measure(port: int, paths: list[str], seconds: float, headers: dict[str, str]) -> Figures:
    return figures_of(*timed(port, paths, seconds, headers))


BARE = """
import sys
from fastapi import FastAPI
from fastapi.responses import Response
import uvicorn
body = open(sys.argv[2], "rb").read()
app = FastAPI()
@app.get("/fhir/Observation/{resource_id}")
def read(resource_id: str) -> Response:
    return Response(body, media_type="application/fhir+json")
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def access_token(url: str) -> dict[str, str]:
    """A SMART client's token, issued in the store as /auth/token would: every request of the
    benchmark carries it, and the service checks it and records the access, as in use."""
    engine = make_engine(url)
    clients = Clients(engine)
    now = datetime.now(UTC)
    client = clients.add_smart_client("benchmark", "system/*.rs", now, jwks={"keys": []})
    token = clients.issue_token(client, client.grant, now, 300)
    engine.dispose()
    return {"Authorization": f"Bearer {token}"}


def run_size(store: str, url: str, size: int, seconds: float, workdir: Path) -> None:
    load(url, size)
    headers = access_token(url)
    port, bare_port = free_port(), free_port()
    env = {
        **os.environ,
        "ADAPTER_DATABASE_URL": url,
        "ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings"),
        "ADAPTER_LOG_LEVEL": "WARNING",
        "ADAPTER_PORT": str(port),
    }
    body = workdir / "body.json"
    body.write_bytes(orjson.dumps(observation(0)))
    rng = random.Random(3)
    patients = max(1, size // PER_PATIENT)
    reads = [f"/fhir/Observation/{uuid.UUID(int=rng.randrange(size) + 1)}" for _ in range(500)]
    searches = [
        f"/fhir/Observation?patient:identifier={MRN}%7CP{rng.randrange(patients):06d}&date=ge2026-03-01&_count=100"
        for _ in range(200)
    ]
    polls = ["/fhir/Observation?_lastUpdated=gt2000-01-01T00:00:00Z&_count=100"]
    service = start([sys.executable, "-m", "adapter.cli", "serve"], port, env)
    bare = start(
        [sys.executable, "-c", BARE, str(bare_port), str(body)], bare_port, dict(os.environ)
    )
    try:
        read, bare_read = _alternating(port, bare_port, reads, seconds, headers)
        figures = {
            "read": read,
            "search": measure(port, searches, seconds, headers),
            "poll": measure(port, polls, seconds, headers),
        }
    finally:
        for process in (service, bare):
            process.terminate()
            process.wait()
    for name, (p50, p99, rate) in figures.items():
        print(f"{store:<10} {size:>9,} {name:<7} {_figures(p50, p99, rate)}")
    p50, p99, rate = bare_read
    ratio = figures["read"][2] / rate
    print(f"{store:<10} {size:>9,} {'bare':<7} {_figures(p50, p99, rate)}  (read/bare {ratio:.2f})")


ROUNDS = 3


def _alternating(
    port: int, bare_port: int, paths: list[str], seconds: float, headers: dict[str, str]
) -> tuple[Figures, Figures]:
    """Reads from the service and from the bare endpoint in turns (ROUNDS each, `seconds` in
    all for each), so that a change in the machine's speed during the run weighs on both."""
    latencies: dict[int, list[float]] = {port: [], bare_port: []}
    elapsed = dict.fromkeys(latencies, 0.0)
    for _ in range(ROUNDS):
        for target in (port, bare_port):
            found, took = timed(target, paths, seconds / ROUNDS, headers)
            latencies[target] += found
            elapsed[target] += took
    return figures_of(latencies[port], elapsed[port]), figures_of(
        latencies[bare_port], elapsed[bare_port]
    )


def _figures(p50: float, p99: float, rate: float) -> str:
    return f"p50 {p50:6.1f} ms  p99 {p99:6.1f} ms  {rate:8,.0f} req/s"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--store", choices=["sqlite", "postgresql", "both"], default="both")
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        workdir = Path(folder)
        for size in (int(s) for s in args.sizes.split(",")):
            if args.store in ("sqlite", "both"):
                run_size(
                    "sqlite",
                    f"sqlite:///{workdir / f'fhir-{size}.db'}",
                    size,
                    args.seconds,
                    workdir,
                )
            if args.store in ("postgresql", "both"):
                with scratch_schema() as (_, url):
                    run_size("postgresql", url, size, args.seconds, workdir)


if __name__ == "__main__":
    main()
