"""Soak: `infusion-adapter serve` as users run it (PostgreSQL or SQLite, the sandbox EHR on
loopback, a sync every 10 s) under a steady clinic load for `--minutes`: sessions start, their
vitals come every few seconds, some have a side effect, ~5% of posts amend an earlier record and
~1% withdraw one. Each interval prints the service's RSS, open files, database connections,
post latency p50/p95 and log lines, with ratios to the first interval (the baseline of the same
run); at the end, the slope of RSS over the last half, and what the EHR holds once the outbox
has drained (resources the adapter has references for that the EHR's copy lacks).

    .venv/bin/python -m benchmarks.soak --minutes 30 --interval 2
"""

import argparse
import heapq
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
from sqlalchemy import create_engine, text

from benchmarks.idle_logs import command, free_port
from benchmarks.postgres import scratch_schema
from benchmarks.synthetic import session_records
from tests.sync.sandbox import SandboxEhr

ROOT = Path(__file__).resolve().parent.parent
PATIENTS = 3000
"""benchmarks.synthetic gives session n the MRN 100000 + n % 3000: the EHR knows them all."""
SAMPLE_SECONDS = 10.0
KEY = re.compile(r"^API key \(shown once, store it now\): (\S+)$", re.MULTILINE)


@dataclass
class Clinic:
    """The clinic's charting system: sessions under way, posting their records as they happen."""

    rate: float
    vitals_seconds: float
    rng: random.Random = field(default_factory=lambda: random.Random(11))
    number: int = 0
    posted: list[str] = field(default_factory=list)
    """Ids of the vitals sets posted so far (the latest 2,000), to amend or withdraw some."""
    latest: dict[str, dict[str, Any]] = field(default_factory=dict)
    """The latest revision posted of each of those."""

    def session(self, start: float) -> Iterator[tuple[float, dict[str, Any]]]:
        """One session's posts with the moment each is due: attestations, the session (now and
        then after its first vitals, as records arrive in any order), vitals every few seconds,
        sometimes a side effect midway."""
        records = list(session_records(self.number, self.rng))
        self.number += 1
        by_type: dict[str, list[dict[str, Any]]] = {}
        for record in records:
            by_type.setdefault(record["record_type"], []).append(record)
        late = self.rng.random() < 0.05
        at = start
        for attestation in by_type["attestation"]:
            yield at, attestation
        if not late:
            yield at, by_type["infusion_session"][0]
        for index, vitals in enumerate(by_type["vitals"]):
            at = start + (index + 1) * self.vitals_seconds
            yield at, vitals
            if late and index == 0:
                yield at + 0.5, by_type["infusion_session"][0]
            if index == 15:
                for event in by_type.get("adverse_event", []):
                    yield at + 1, event

    def remember(self, record: dict[str, Any]) -> None:
        if record["record_type"] != "vitals":
            return
        if record["id"] not in self.latest:
            self.posted.append(record["id"])
        self.latest[record["id"]] = record
        if len(self.posted) > 2000:
            del self.latest[self.posted.pop(0)]

    def change(self) -> dict[str, Any] | None:
        """An amendment (a new revision of an earlier vitals set) or, one time in six, its
        withdrawal (entered in error)."""
        if not self.posted:
            return None
        record = dict(self.latest[self.rng.choice(self.posted)])
        if record.get("status") == "entered_in_error":
            return None
        record["revision"] += 1
        if self.rng.random() < 1 / 6:
            record["status"] = "entered_in_error"
        else:
            record["heart_rate"] = self.rng.randint(60, 110)
        return record


@dataclass
class Measures:
    latencies: list[float] = field(default_factory=list)
    failures: int = 0
    statuses: Counter[str] = field(default_factory=Counter)
    """Answers other than 200 over the whole run, with the first error each gave."""
    posts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> tuple[list[float], int, int]:
        with self.lock:
            taken = (self.latencies, self.failures, self.posts)
            self.latencies, self.failures, self.posts = [], 0, 0
        return taken


def post(client: httpx.Client, record: dict[str, Any], measures: Measures) -> None:
    started = time.perf_counter()
    try:
        answer = client.post("/api/v1/records", content=orjson.dumps(record))
        ok = answer.status_code == 200
        said = "" if ok else f"{answer.status_code} {answer.text[:200]}"
    except httpx.HTTPError as error:
        ok, said = False, type(error).__name__
    elapsed = time.perf_counter() - started
    with measures.lock:
        measures.latencies.append(elapsed)
        measures.posts += 1
        measures.failures += 0 if ok else 1
        if not ok:
            measures.statuses[said] += 1


def rss_mb(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(found[1]) / 1024 if found else 0.0


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def sqlite_connections(pid: int, database: Path) -> int:
    """File descriptors of the service open on the SQLite database file itself."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(database):
                count += 1
        except OSError:
            continue
    return count


def slope_mb_per_hour(samples: list[tuple[float, float]]) -> float:
    """Least-squares slope of RSS (MB) against time (s), per hour."""
    if len(samples) < 2:
        return 0.0
    times = [t for t, _ in samples]
    values = [v for _, v in samples]
    return float(statistics.linear_regression(times, values).slope) * 3600


@contextmanager
def store(kind: str, folder: Path) -> Iterator[tuple[str, Any]]:
    """(database URL, a function counting the service's connections to it)."""
    if kind == "sqlite":
        database = folder / "adapter.db"
        yield f"sqlite:///{database}", lambda pid: sqlite_connections(pid, database)
        return
    with scratch_schema() as (_, url):
        name = f"soak_{os.getpid()}"
        admin = create_engine(url)

        def connections(_: int) -> int:
            with admin.connect() as connection:
                query = "SELECT count(*) FROM pg_stat_activity WHERE application_name = :name"
                return int(connection.execute(text(query), {"name": name}).scalar_one())

        try:
            yield f"{url}&application_name={name}", connections
        finally:
            admin.dispose()


def percentile(values: list[float], share: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=120.0)
    parser.add_argument("--interval", type=float, default=10.0, help="Minutes per report line.")
    parser.add_argument("--store", choices=["postgresql", "sqlite"], default="postgresql")
    parser.add_argument("--rate", type=float, default=20.0, help="Posts per second.")
    parser.add_argument("--vitals-seconds", type=float, default=5.0)
    options = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="soak-"))
    ehr = SandboxEhr()
    ehr.reset()
    seeded = {
        str(i["value"]) for p in ehr.all("Patient") for i in p.get("identifier", [])
    }  # the sandbox's own patients: one Patient per MRN
    mrns = [m for m in (str(100000 + n) for n in range(PATIENTS)) if m not in seeded]
    for start in range(0, len(mrns), 500):
        ehr.add_patients(mrns[start : start + 500])
    try:
        with store(options.store, folder) as (url, connections):
            run(options, folder, url, connections, ehr)
    finally:
        ehr.stop()
        shutil.rmtree(folder, ignore_errors=True)


def run(options: argparse.Namespace, folder: Path, url: str, connections: Any, ehr: Any) -> None:
    environment = {
        **os.environ,
        "ADAPTER_DATABASE_URL": url,
        "ADAPTER_MAPPINGS_DIR": str(ROOT / "mappings"),
        "ADAPTER_EHR_BASE_URL": ehr.base,
        "ADAPTER_SYNC_INTERVAL_SECONDS": "10",
        "ADAPTER_EXPORT_DIR": str(folder / "exports"),
        "PYTHONPATH": str(ROOT),
    }
    subprocess.run(command("db", "upgrade"), env=environment, check=True, capture_output=True)
    made = subprocess.run(
        command("clients", "add-key", "soak", "--role", "intake"),
        env=environment,
        check=True,
        capture_output=True,
        text=True,
    )
    found = KEY.search(made.stdout)
    assert found, made.stdout
    port = free_port()
    log = folder / "service.log"
    with log.open("w") as output:
        service = subprocess.Popen(
            command("serve", "--host", "127.0.0.1", "--port", str(port)),
            env=environment,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {found[1]}", "Content-Type": "application/json"}
    client = httpx.Client(base_url=base, headers=headers, timeout=30)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"the service did not start:\n{log.read_text()[-2000:]}")
        load(options, client, service.pid, connections, log)
        report_ehr(ehr, url, drain(url))
    finally:
        service.send_signal(signal.SIGINT)
        try:
            service.wait(timeout=60)
        except subprocess.TimeoutExpired:
            service.kill()
        client.close()


def load(
    options: argparse.Namespace, client: httpx.Client, pid: int, connections: Any, log: Path
) -> None:
    clinic = Clinic(options.rate, options.vitals_seconds)
    measures = Measures()
    pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="soak-post")
    # Sessions start so that, with a vitals set every vitals_seconds each, the rate is met.
    posts_per_session = 34.3  # 2 attestations, the session, 30 vitals, a side effect in 30%
    session_every = posts_per_session / options.rate
    started = time.monotonic()
    end = started + options.minutes * 60
    interval = options.interval * 60
    next_report, next_sample, next_session = started + interval, started, started
    due: list[tuple[float, int, dict[str, Any]]] = []
    order = 0
    samples: list[tuple[float, float]] = []
    baseline: dict[str, float] = {}
    log_lines = 0
    seen_warnings: Counter[str] = Counter()
    print(
        f"soak: {options.store}, {options.rate:g} posts/s, vitals every "
        f"{options.vitals_seconds:g} s, {options.minutes:g} min, "
        f"a line per {options.interval:g} min"
    )
    print(
        f"{'min':>5} {'posts':>7} {'fail':>5} {'RSS MB':>7} {'x base':>6} {'files':>5} "
        f"{'db conn':>7} {'p50 ms':>7} {'p95 ms':>7} {'x base':>6} {'log lines':>9} {'warn':>5}"
    )
    while True:
        now = time.monotonic()
        if now >= end:
            break
        while next_session <= now:
            for at, record in clinic.session(next_session):
                heapq.heappush(due, (at, order, record))
                order += 1
            next_session += session_every
        while due and due[0][0] <= now:
            _, _, record = heapq.heappop(due)
            changed = clinic.change() if clinic.rng.random() < 0.06 else None
            if changed is not None:
                # An amendment or a withdrawal takes this post's turn; the record due comes next.
                heapq.heappush(due, (now + 0.1, order, record))
                order += 1
                record = changed
            clinic.remember(record)
            pool.submit(post, client, record, measures)
        if now >= next_sample:
            samples.append((now - started, rss_mb(pid)))
            next_sample += SAMPLE_SECONDS
        if now >= next_report:
            lines = log.read_text(errors="replace").splitlines()
            new, log_lines = lines[log_lines:], len(lines)
            warned = [line for line in new if " WARNING " in line]
            warnings = len(warned)
            seen_warnings.update(re.sub(r"\d+", "N", line[24:])[:160] for line in warned)
            latencies, failures, posts = measures.take()
            rss = rss_mb(pid)
            p50, p95 = percentile(latencies, 0.5) * 1000, percentile(latencies, 0.95) * 1000
            baseline = baseline or {"rss": rss, "p95": p95 or 1.0}
            print(
                f"{(now - started) / 60:5.1f} {posts:7d} {failures:5d} {rss:7.1f} "
                f"{rss / baseline['rss']:6.2f} {open_files(pid):5d} {connections(pid):7d} "
                f"{p50:7.1f} {p95:7.1f} {p95 / baseline['p95']:6.2f} {len(new):9d} {warnings:5d}",
                flush=True,
            )
            next_report += interval
        time.sleep(0.01)
    pool.shutdown(wait=True)
    for said, count in seen_warnings.most_common(5):
        print(f"  warning {count:5d}: {said}")
    for said, count in measures.statuses.most_common(5):
        print(f"  not 200 {count:5d}: {said}")
    half = [s for s in samples if s[0] >= options.minutes * 30]
    print(
        f"RSS slope over the last half ({len(half)} samples): "
        f"{slope_mb_per_hour(half):+.1f} MB/h; over the whole run "
        f"{slope_mb_per_hour(samples):+.1f} MB/h; final RSS {rss_mb(pid):.1f} MB"
    )


def outbox_states(url: str) -> dict[str, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                text("SELECT state, count(*) FROM sync_outbox GROUP BY state")
            )
            states = {str(state): int(count) for state, count in rows}
            unmapped = connection.execute(
                text("SELECT count(*) FROM source_records WHERE mapping_state = 'pending'")
            ).scalar_one()
    finally:
        engine.dispose()
    return {**states, "unmapped": int(unmapped)}


def drain(url: str) -> float:
    """Seconds until nothing is left to map or deliver after the load stopped (at most 10 min):
    nothing pending, and what waits no longer changing (a vitals set whose session the load
    never posted waits for it)."""
    started = time.monotonic()
    last, steady = -1, 0.0
    while time.monotonic() - started < 600:
        states = outbox_states(url)
        waiting = states.get("waiting", 0)
        steady = steady + 2 if waiting == last else 0.0
        last = waiting
        if not states["unmapped"] and not states.get("pending") and (not waiting or steady > 30):
            break
        time.sleep(2)
    return time.monotonic() - started


def waiting_reasons(url: str) -> Counter[str]:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(text("SELECT detail FROM sync_outbox WHERE state = 'waiting'"))
        reasons = Counter(
            re.sub(r"[A-Za-z]+/[0-9a-f-]{36}", "X", orjson.loads(row[0]).get("reason", ""))
            for row in rows
        )
    engine.dispose()
    return reasons


def report_ehr(ehr: SandboxEhr, url: str, drained: float) -> None:
    """What the EHR holds once drained: every resource once, and every reference the adapter's
    version has in the EHR's copy too."""
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = connection.execute(
            text(
                "SELECT o.resource_type, o.ehr_id, r.content FROM sync_outbox o "
                "JOIN fhir_resources r ON r.id = o.resource_id WHERE o.state = 'delivered'"
            )
        ).all()
    engine.dispose()
    held: dict[tuple[str, str], dict[str, Any]] = {}
    duplicates = 0
    for resource_type in sorted({row[0] for row in rows}):
        copies = ehr.identifier_counts(resource_type)
        duplicates += sum(count - 1 for count in copies.values() if count > 1)
        held.update(((resource_type, str(r["id"])), r) for r in ehr.all(resource_type))
    lacking = 0
    for resource_type, ehr_id, content in rows:
        theirs = held.get((resource_type, str(ehr_id)))
        if theirs is None:
            continue  # withdrawn by a DELETE
        ours = content.count('"reference":"') - content.count('"reference":"Patient/')
        said = orjson.dumps(theirs).decode().count('"reference":"')
        lacking += said - 1 < ours  # the EHR's copy also names the patient
    print(
        f"drained {drained:.0f} s after the load stopped: {outbox_states(url)}; "
        f"{len(rows)} delivered, {duplicates} extra copies in the EHR, "
        f"{lacking} EHR copies with fewer references than the adapter's version"
    )
    for reason, count in waiting_reasons(url).most_common(5):
        print(f"  waiting {count:6d}: {reason}")


if __name__ == "__main__":
    main()
