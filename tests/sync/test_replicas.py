"""Three replicas of the service on one PostgreSQL behind a round-robin proxy, and an
`infusion-adapter import --site` for each site beside them, take in two sites' days: records
naming their site posted concurrently through the proxy, amended as they go, while a client
polls `_lastUpdated=gt` and `_history` with `_since` through the proxy. One replica is killed
with SIGKILL mid-run and started again, twice. When all is delivered, some records are amended
once more, so that some resources have a second version whatever the machine's speed (the
mapping may well map an amendment posted during the run before the revision it amends).
Every version is polled exactly once; each
site's EHR holds each of its site's resources once, as its latest version says, and none of
the other site's."""

import random
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import zip_longest
from pathlib import Path
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from sqlalchemy import select

from adapter.mapping.config import load_ehr_rules
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.site_keys import site_key
from adapter.store.resources import NOT_DELIVERED
from adapter.store.tables import (
    fhir_resource_versions,
    fhir_resources,
    source_records,
    sync_outbox,
)
from adapter.sync.outgoing import DROP, ehr_body, provably_ours
from benchmarks.synthetic import session_records
from tests.conftest import EXAMPLE_DAY, grant
from tests.replicas import CLI, Replicas, replica_environment
from tests.sites import NORTH, SOUTH, add_sites
from tests.sync.expected import expected_in_ehr
from tests.sync.sandbox import RECORDS_SYSTEM, SANDBOX_PATIENTS, SandboxEhr
from tests.sync.test_processes import assert_exactly_once

REPLICAS = 3
POSTED_SESSIONS = 30
"""A site's: about 1,000 records posted through the proxy (33 or 34 a session), and some 50
amendments; about 2,000 and 100 for the two sites."""
IMPORTED_SESSIONS = 10
"""A site's: about 340 records, with the example day, in the file its import takes."""
BATCH = 40
POSTERS = 3
RATE = 250
"""Records posted a second, all posters together: the posting lasts some 8 seconds, so that
the import, the kills and the mapping of every replica overlap it."""
POLLED = ("Observation", "Encounter", "AdverseEvent", "DetectedIssue")
AMENDED_EVERY = 20
"""Every twentieth vitals record gets a second revision (another heart rate), posted later."""
AMENDED_AFTER = 150
AMENDED_AGAIN = 20
"""Amended records given a third revision once everything is delivered."""
SANDBOX_MRNS = {
    identifier["value"]
    for patient in orjson.loads(SANDBOX_PATIENTS.read_bytes())
    for identifier in patient["identifier"]
}


@dataclass
class SiteDay:
    """A site's part of the run: its EHR, what its clinic posts (each record naming the site),
    the file its IT imports with `--site` (records naming none)."""

    site: str
    ehr: SandboxEhr
    posted: list[bytes]
    imported: list[bytes]
    new_patients: list[str]
    """The MRNs of the synthetic records, for the EHR to know, but those it knows already (the
    sandbox's patients, the example day's among them)."""


def session_lines(first: int, count: int, site: str | None = None) -> list[bytes]:
    """The records of `count` sessions; each names `site` where one is given."""
    rng = random.Random(first)
    named = {"clinic_site": site} if site else {}
    return [
        orjson.dumps({**record, **named})
        for number in range(first, first + count)
        for record in session_records(number, rng)
    ]


def with_amendments(lines: list[bytes]) -> list[bytes]:
    """The lines, with a second revision of some vitals records a while after the first."""
    later: dict[int, list[bytes]] = {}
    for position, line in enumerate(lines):
        record = orjson.loads(line)
        if record["record_type"] == "vitals" and position % AMENDED_EVERY == 5:
            amended = {**record, "revision": 2, "heart_rate": record["heart_rate"] + 1}
            later.setdefault(position + AMENDED_AFTER, []).append(orjson.dumps(amended))
    out: list[bytes] = []
    for position, line in enumerate(lines):
        out.append(line)
        out.extend(later.pop(position, []))
    for rest in later.values():
        out.extend(rest)
    return out


def third_revisions(posted: list[bytes]) -> list[bytes]:
    """A third revision of the first AMENDED_AGAIN records amended in `posted`."""
    seconds = [record for record in map(orjson.loads, posted) if record["revision"] == 2]
    return [
        orjson.dumps({**record, "revision": 3, "heart_rate": record["heart_rate"] + 1})
        for record in seconds[:AMENDED_AGAIN]
    ]


def site_day(site: str, ehr: SandboxEhr, number: int) -> SiteDay:
    """A site's day: sessions numbered apart from every other site's, and the example day
    (the same records at each site: a site's records are its own, whatever their ids)."""
    base = number * 100_000
    posted = with_amendments(session_lines(base, POSTED_SESSIONS, site))
    example = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
    synthetic = session_lines(base + 50_000, IMPORTED_SESSIONS)
    mrns = {orjson.loads(line)["patient"]["mrn"] for line in posted + synthetic}
    return SiteDay(site, ehr, posted, synthetic + example, sorted(mrns - SANDBOX_MRNS))


class Poller:
    """A FHIR client polling each type by `_lastUpdated=gt{greatest seen}` and its history by
    `_since`, following every next link, through the proxy; a request the proxy answers 502
    (its replica died mid-request) or that finds no replica is asked again."""

    def __init__(self, base: str, token: str) -> None:
        self.http = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        self.searched: Counter[tuple[str, str, int]] = Counter()
        self.history: Counter[tuple[str, str, int]] = Counter()
        self.marks: dict[tuple[str, str], str] = {}
        self.retried = 0
        self.polls = 0

    def _get(self, url: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        for _ in range(50):
            try:
                answer = self.http.get(url, params=params)
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code != 502:
                assert answer.status_code == 200, answer.text
                found: dict[str, Any] = orjson.loads(answer.content)
                return found
            self.retried += 1
            time.sleep(0.1)
        raise AssertionError(f"no replica answered {url}")

    def _pages(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        bundle = self._get(path, params)
        while True:
            for item in bundle.get("entry", []):
                yield item["resource"]
            following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not following:
                return
            bundle = self._get(following[0])

    def _poll(self, kind: str, resource_type: str, seen: Counter[tuple[str, str, int]]) -> None:
        path, params = f"/fhir/{resource_type}", {"_count": "500"}
        mark = self.marks.get((kind, resource_type))
        if kind == "history":
            path += "/_history"
            if mark:
                params["_since"] = mark
        elif mark:
            params["_lastUpdated"] = f"gt{mark}"
        for resource in self._pages(path, params):
            seen[(resource_type, resource["id"], int(resource["meta"]["versionId"]))] += 1
            moment = resource["meta"]["lastUpdated"]
            if mark is None or datetime.fromisoformat(moment) > datetime.fromisoformat(mark):
                mark = moment
        if mark:
            self.marks[(kind, resource_type)] = mark

    def poll(self) -> None:
        for resource_type in POLLED:
            self._poll("search", resource_type, self.searched)
            self._poll("history", resource_type, self.history)
        self.polls += 1


class Posters:
    """Threads posting the lines in batches through the proxy at RATE, in order; a batch
    answered 502 or not at all is posted again (intake is idempotent: a revision stored once
    is `unchanged` the second time)."""

    def __init__(self, base: str, key: str, lines: list[bytes]) -> None:
        self.base, self.key = base, key
        self.batches = [lines[i : i + BATCH] for i in range(0, len(lines), BATCH)]
        self.next = 0
        self.posted = 0
        self.outcomes: Counter[str] = Counter()
        self.outcome_of: dict[tuple[str, int], tuple[str, bool]] = {}
        """Each record's outcome by its store key and revision, and whether its batch was
        posted again."""
        self.retried = 0
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.started = time.monotonic()
        self.threads = [threading.Thread(target=self._work) for _ in range(POSTERS)]
        for thread in self.threads:
            thread.start()

    def _take(self) -> list[bytes] | None:
        with self.lock:
            if self.next == len(self.batches):
                return None
            batch = self.batches[self.next]
            self.next += 1
            due = self.started + self.next * BATCH / RATE
        time.sleep(max(0.0, due - time.monotonic()))
        return batch

    def _work(self) -> None:
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/x-ndjson"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=120) as http:
            while (batch := self._take()) is not None:
                resent = False
                for _ in range(50):
                    try:
                        answer = http.post("/api/v1/records", content=b"\n".join(batch))
                    except httpx.TransportError:
                        answer = None
                    if answer is not None and answer.status_code != 502:
                        break
                    with self.lock:
                        self.retried += 1
                    resent = True
                    time.sleep(0.1)
                if answer is None or answer.status_code not in (200, 201, 207):
                    self.errors.append(answer.text if answer is not None else "no answer")
                    continue
                results = answer.json()["results"]
                with self.lock:
                    self.posted += len(batch)
                    self.outcomes.update(r["outcome"] for r in results)
                    for line, result in zip(batch, results, strict=True):
                        record = orjson.loads(line)
                        key = site_key(record.get("clinic_site"), record["id"])
                        self.outcome_of[(key, record["revision"])] = (result["outcome"], resent)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(timeout=300)


def stored_versions(runtime: Runtime) -> set[tuple[str, str, int]]:
    table = fhir_resource_versions
    query = select(table.c.resource_type, table.c.id, table.c.version_id).where(
        table.c.resource_type.in_(POLLED)
    )
    with runtime.store.engine.connect() as connection:
        return {(kind, rid, version) for kind, rid, version in connection.execute(query)}


def stored_revisions(runtime: Runtime, source_ids: set[str]) -> set[int]:
    query = select(source_records.c.revision).where(source_records.c.source_id.in_(source_ids))
    with runtime.store.engine.connect() as connection:
        return set(connection.execute(query).scalars())


def drained(runtime: Runtime, importing: list[subprocess.Popen[bytes]], seconds: float) -> bool:
    """Wait until the imports are done, every record mapped and every resource delivered."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pending = runtime.mapping.queue.counts().get("pending", 0)
        outbox = runtime.outbox.counts()
        undelivered = outbox["pending"] + outbox["waiting"]
        done = all(process.poll() is not None for process in importing)
        if done and not pending and not undelivered:
            return True
        time.sleep(0.3)
    return False


def undelivered(runtime: Runtime) -> Counter[str]:
    """Why the resources not delivered wait, by state and detail."""
    query = select(sync_outbox.c.state, sync_outbox.c.detail).where(
        sync_outbox.c.state.in_(("pending", "waiting"))
    )
    with runtime.store.engine.connect() as connection:
        return Counter(f"{state}: {detail}" for state, detail in connection.execute(query))


def adapter_identifiers(resource: dict[str, Any]) -> list[tuple[str, str]]:
    listed = resource.get("identifier")
    found = listed if isinstance(listed, list) else [listed] if listed else []
    return [
        (i["system"], i["value"]) for i in found if str(i.get("system")).startswith(RECORDS_SYSTEM)
    ]


def site_resources(runtime: Runtime, site: str) -> set[tuple[str, str]]:
    query = select(fhir_resources.c.resource_type, fhir_resources.c.id).where(
        fhir_resources.c.site == site
    )
    with runtime.store.engine.connect() as connection:
        return {(kind, rid) for kind, rid in connection.execute(query)}


def assert_latest_in_ehr(runtime: Runtime, site: SiteDay) -> int:
    """Each of the site's resources its EHR holds says what its current version says; how many
    were checked. References to what the EHR is not sent (the site's Organization and
    Location) are left out of the EHR's copy, elements and all, as the sync leaves them out."""
    rules = load_ehr_rules(runtime.settings.mappings_dir)
    sent = {*expected_in_ehr(runtime, site=site.site), "Patient"}

    def sent_only(kind: str, _: str) -> str | object:
        return f"{kind}/?" if kind in sent else DROP

    ours = site_resources(runtime, site.site)
    current = [r for r in runtime.resources.all_current() if (r.resource_type, r.id) in ours]
    copies: dict[tuple[str, str], dict[str, Any]] = {}
    for resource_type in {r.resource_type for r in current}:
        for copy in site.ehr.all(resource_type):
            for system, value in adapter_identifiers(copy):
                copies[(system, value)] = copy
    checked = 0
    for stored in current:
        if stored.resource_type in NOT_DELIVERED:
            continue
        resource, _ = ehr_body(orjson.loads(stored.content), None, sent_only, [])
        theirs = [copies[key] for key in adapter_identifiers(resource) if key in copies]
        if not theirs:
            continue  # a stand-in's or an unidentified resource: counted by assert_exactly_once
        assert provably_ours(theirs[:1], resource, rules.extra_codings) is not None, (
            f"{stored.resource_type}/{stored.id} version {stored.version_id} is not in the EHR"
        )
        checked += 1
    return checked


def assert_none_of_another_site(site: SiteDay, types: set[str]) -> None:
    """Every resource of the adapter's in the site's EHR carries its site as its source."""
    source = f"https://{site.site}.ketamine-clinic.example.org/fhir/infusion-adapter"
    for resource_type in types:
        for copy in site.ehr.all(resource_type):
            if adapter_identifiers(copy):
                assert copy["meta"].get("source") == source, (site.site, copy["meta"])


def record_keys(lines: list[bytes], site: str) -> set[tuple[str, str, str]]:
    return {(site, record["record_type"], record["id"]) for record in map(orjson.loads, lines)}


def test_three_replicas_and_two_sites_imports_with_kills_poll_and_deliver_every_version_once(
    settings: Settings, ehr: SandboxEhr, second_ehr: SandboxEhr, tmp_path: Path
) -> None:
    if not settings.database_url.startswith("postgresql"):
        pytest.skip("replicas share a PostgreSQL store; on SQLite the service is one process")
    sites = [
        site_day(site, site_ehr, number)
        for number, (site, site_ehr) in enumerate(((NORTH, ehr), (SOUTH, second_ehr)))
    ]
    """The deployment's sites, each with its own EHR (`connection:` in its ehr.yaml)."""
    add_sites(settings.mappings_dir, {s.site: s.ehr.base for s in sites}, own_mrn_systems=False)
    for site in sites:
        site.ehr.add_patients(site.new_patients)
    runtime = open_runtime(settings)
    try:
        assert sorted(runtime.site_syncs) == sorted(s.site for s in sites)
        _run_and_check(runtime, settings, sites, tmp_path)
    finally:
        runtime.close()


def _run_and_check(
    runtime: Runtime, settings: Settings, sites: list[SiteDay], tmp_path: Path
) -> None:
    posted = [line for lines in zip_longest(*(s.posted for s in sites)) for line in lines if line]
    """The sites' clinics post at once: their lines interleaved."""
    _, key = runtime.clients.add_key_client("clinic charting", "intake", datetime.now(UTC))
    token = grant(runtime).token
    env = replica_environment(
        settings.database_url,
        settings.mappings_dir,
        sites[0].ehr.base,
        sync_lease_seconds="3",
        sync_interval_seconds="2",
        mapping_interval_seconds="2",
        # What a killed replica had claimed to map is mapped again 5 s after, not 30.
        mapping_claim_seconds="5",
    )
    exports: dict[str, Path] = {}
    for day in sites:
        exports[day.site] = tmp_path / f"import-{day.site}.ndjson"
        exports[day.site].write_bytes(b"\n".join(day.imported) + b"\n")
    replicas = Replicas(REPLICAS, env, tmp_path)
    poller = Poller(replicas.url, token)
    polling = threading.Event()
    failures: list[BaseException] = []

    def poll_continuously() -> None:
        try:
            while not polling.is_set():
                poller.poll()
        except BaseException as exc:  # reported by the test
            failures.append(exc)

    watcher = threading.Thread(target=poll_continuously)
    watcher.start()
    importing: list[subprocess.Popen[bytes]] = []
    try:
        posters = Posters(replicas.url, key, posted)
        time.sleep(1.5)
        for site, export in exports.items():
            command = [*CLI, "import", str(export), "--quiet", "--batch-size", "200"]
            importing.append(
                subprocess.Popen(
                    [*command, "--site", site], env=env, cwd=tmp_path, stdout=subprocess.DEVNULL
                )
            )
        restarted: dict[int, int] = {}
        """Each replica killed, and how many requests it had answered when it came back."""
        for victim, share in ((1, 0.25), (2, 0.5)):
            while posters.posted < share * len(posted) and not posters.errors:
                time.sleep(0.05)
            replicas.kill(victim)
            replicas.restart(victim)
            restarted[victim] = replicas.proxy.answered()[victim]
        posters.join()
        assert drained(runtime, importing, 150), (
            runtime.mapping.queue.counts(),
            undelivered(runtime).most_common(5),
        )
        again = Posters(replicas.url, key, third_revisions(posted))
        again.join()
        assert drained(runtime, [], 150), (
            runtime.mapping.queue.counts(),
            undelivered(runtime).most_common(5),
        )
        polling.set()
        watcher.join(timeout=120)
        poller.poll()  # whatever was committed after the last poll of the loop
    finally:
        polling.set()
        watcher.join(timeout=120)
        for process in importing:
            if process.poll() is None:
                process.kill()
        replicas.stop()

    assert not failures, failures
    assert not posters.errors, posters.errors[:3]
    assert [process.returncode for process in importing] == [0] * len(sites)
    answered = replicas.proxy.answered()
    assert list(restarted) == [1, 2]
    assert answered[0] > 0 and all(answered[n] > before for n, before in restarted.items())
    # `unchanged`: a batch posted again after a 502 whose first post was stored; `stale`: a
    # first revision posted again after its second was stored.
    assert set(posters.outcomes) <= {"created", "amended", "unchanged", "stale"}, posters.outcomes
    amended = {
        site_key(record["clinic_site"], record["id"])
        for record in map(orjson.loads, posted)
        if record["revision"] == 2
    }
    assert amended
    assert not again.errors, again.errors[:3]
    assert again.outcomes == Counter(amended=AMENDED_AGAIN), again.outcomes
    amended_again = {key for key, _ in again.outcome_of}
    outcomes = {
        key: (posters.outcome_of[(key, 1)], posters.outcome_of[(key, 2)]) for key in amended
    }
    # The second revision amends the first; or it is `unchanged`, its batch posted again after
    # a 502 though the first post was stored; or it came first (the first revision's batch
    # was on a replica as it was killed, and posted again later), and the first is `stale`.
    assert all(
        second == ("amended", second[1])
        or second == ("unchanged", True)
        or (second[0] == "created" and first[0] == "stale")
        for first, second in outcomes.values()
    ), Counter(outcomes.values())
    assert stored_revisions(runtime, amended - amended_again) == {2}
    assert stored_revisions(runtime, amended_again) == {3}
    assert poller.polls >= 5
    counts = runtime.mapping.queue.counts()
    assert set(counts) == {"mapped"}, counts
    records = set().union(*(record_keys(s.posted + s.imported, s.site) for s in sites))
    assert counts["mapped"] == len(records)

    versions = stored_versions(runtime)
    assert any(version > 1 for _, _, version in versions)
    assert poller.history == Counter(dict.fromkeys(versions, 1))
    assert max(poller.searched.values()) == 1
    current = {(t, i, v) for t, i, v in versions if (t, i, v + 1) not in versions}
    assert current <= set(poller.searched)

    for day in sites:
        expected = expected_in_ehr(runtime, site=day.site)
        assert sum(expected.values()) > 1000, (day.site, expected)
        assert_exactly_once(runtime, day.ehr, day.site)
        assert_none_of_another_site(day, set(expected))
        assert assert_latest_in_ehr(runtime, day) == sum(expected.values())
