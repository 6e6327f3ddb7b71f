"""Polling by `_lastUpdated=gt`, `_history?_since=` and `$export?_since=` while several writers
store versions in an adversarial order: every version is seen exactly once."""

import random
import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from adapter.app import create_app
from adapter.export.service import ExportService
from adapter.settings import Settings
from adapter.store.engine import make_engine
from adapter.store.resources import MappedRecord, ResourceWriter
from tests.conftest import sign_in

Seen = Counter[tuple[str, int]]


@pytest.fixture
def served(settings: Settings, tmp_path: Path) -> Iterator[TestClient]:
    app = create_app(settings.model_copy(update={"export_dir": tmp_path / "exports"}), False)
    with TestClient(app) as client:
        sign_in(client)
        yield client


@pytest.fixture
def engines(settings: Settings, served: TestClient) -> Iterator[list[Engine]]:
    """Three writers' own connections to the store, as three processes would have."""
    opened = [make_engine(settings.database_url) for _ in range(3)]
    yield opened
    for engine in opened:
        engine.dispose()


def observation(resource_id: str, value: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": resource_id,
        "status": "final",
        "code": {"text": "heart rate"},
        "subject": {"reference": "Patient/p-1"},
        "valueQuantity": {"value": value, "unit": "/min"},
    }


def store(connection: Any, resources: list[dict[str, Any]], clock: datetime) -> datetime:
    """Store resources as a mapping batch does; returns the versions' lastUpdated."""
    writer = ResourceWriter(connection)
    moment = writer.turn(clock)
    writer.save([MappedRecord("vitals", r["id"], [r]) for r in resources], clock)
    return moment


def write(engine: Engine, resources: list[dict[str, Any]], clock: datetime) -> datetime:
    with engine.begin() as connection:
        return store(connection, resources, clock)


class Poller:
    """A client that polls search by `_lastUpdated=gt{greatest lastUpdated seen}`, and type
    history by `_since` of the same, following every next link."""

    def __init__(self, client: TestClient) -> None:
        self.client = client
        self.searched: Seen = Counter()
        self.history: Seen = Counter()
        self.search_mark: str | None = None
        self.history_mark: str | None = None

    def _pages(self, path: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        response = self.client.get(path, params=params)
        while True:
            assert response.status_code == 200, response.text
            bundle = response.json()
            for item in bundle.get("entry", []):
                yield item["resource"]
            following = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
            if not following:
                return
            response = self.client.get(following[0])

    @staticmethod
    def _later(mark: str | None, resource: dict[str, Any]) -> str:
        moment = resource["meta"]["lastUpdated"]
        if mark is None or datetime.fromisoformat(moment) > datetime.fromisoformat(mark):
            return str(moment)
        return mark

    def poll(self) -> None:
        params = {"_count": "7"}
        if self.search_mark is not None:
            params["_lastUpdated"] = f"gt{self.search_mark}"
        for resource in self._pages("/fhir/Observation", params):
            self.searched[(resource["id"], int(resource["meta"]["versionId"]))] += 1
            self.search_mark = self._later(self.search_mark, resource)
        params = {"_count": "7"}
        if self.history_mark is not None:
            params["_since"] = self.history_mark
        found = list(self._pages("/fhir/Observation/_history", params))
        for resource in found:
            self.history[(resource["id"], int(resource["meta"]["versionId"]))] += 1
            self.history_mark = self._later(self.history_mark, resource)


def test_a_writer_with_a_slower_clock_that_commits_later_is_still_polled(
    served: TestClient, engines: list[Engine]
) -> None:
    poller = Poller(served)
    now = datetime.now(UTC)
    ahead = write(engines[0], [observation("obs-a", 80)], now)
    poller.poll()
    behind = write(engines[1], [observation("obs-b", 81)], now - timedelta(seconds=10))
    poller.poll()

    assert behind > ahead
    assert poller.searched == Counter({("obs-a", 1): 1, ("obs-b", 1): 1})
    assert poller.history == Counter({("obs-a", 1): 1, ("obs-b", 1): 1})


def test_a_writer_that_started_later_commits_after_the_one_in_flight(
    served: TestClient, engines: list[Engine]
) -> None:
    """A starts, B starts (with an earlier clock), the poller polls, A commits, B commits."""
    poller = Poller(served)
    now = datetime.now(UTC)
    times: dict[str, datetime] = {}
    b_started = threading.Event()

    def writer_b() -> None:
        b_started.set()
        times["b"] = write(engines[1], [observation("obs-b", 70)], now - timedelta(seconds=5))

    with engines[0].begin() as connection:
        times["a"] = store(connection, [observation("obs-a", 60)], now)
        thread = threading.Thread(target=writer_b)
        thread.start()
        assert b_started.wait(5)
        thread.join(timeout=0.3)
        assert thread.is_alive(), "B stored its versions while A held the clock"
        poller.poll()
        assert not poller.searched and not poller.history
    thread.join(timeout=30)
    poller.poll()

    assert times["a"] < times["b"]
    assert poller.searched == Counter({("obs-a", 1): 1, ("obs-b", 1): 1})
    assert poller.history == Counter({("obs-a", 1): 1, ("obs-b", 1): 1})


def test_versions_on_a_whole_second_are_not_passed_over_by_gt(
    served: TestClient, engines: list[Engine]
) -> None:
    poller = Poller(served)
    second = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=1)
    first = write(engines[0], [observation("obs-a", 60)], second)
    poller.poll()
    write(engines[1], [observation("obs-b", 61)], second + timedelta(microseconds=500))
    poller.poll()

    assert first.microsecond != 0
    assert set(poller.searched) == {("obs-a", 1), ("obs-b", 1)}


def test_three_writers_with_skewed_clocks_and_a_poller_see_every_version_once(
    served: TestClient, engines: list[Engine]
) -> None:
    """Three writers (clocks 0, 2 and 4 seconds slow) store batches at once, new resources
    and new versions of each other's, while a client polls search and history. The writers
    keep pace with the polls (a writer's fourth turn waits for the first poll to end, and so
    on), so that however busy the machine, the polls fall among the writes."""
    rounds = 12
    written: list[tuple[str, datetime]] = []
    lock = threading.Lock()
    failures: list[BaseException] = []
    done = threading.Event()
    polled = threading.Condition()
    polls = 0

    def writer(number: int, engine: Engine) -> None:
        chooser = random.Random(number)
        try:
            for turn in range(rounds):
                with polled:
                    while polls < turn // 3 and polled.wait(timeout=30):
                        pass
                batch = [observation(f"obs-{number}-{turn}-{n}", turn) for n in range(3)]
                # A new version of a resource another writer made earlier, when there is one.
                other = f"obs-{(number + 1) % 3}-{chooser.randrange(max(turn, 1))}-0"
                batch.append(observation(other, 1000 + number * 100 + turn))
                clock = datetime.now(UTC) - timedelta(seconds=2 * number)
                moment = write(engine, batch, clock)
                with lock:
                    written.append((f"{number}-{turn}", moment))
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    threads = [
        threading.Thread(target=writer, args=(number, engine))
        for number, engine in enumerate(engines)
    ]
    poller = Poller(served)
    for thread in threads:
        thread.start()

    def watch() -> None:
        for thread in threads:
            thread.join()
        done.set()

    threading.Thread(target=watch).start()
    while not done.is_set():
        poller.poll()
        with polled:
            polls += 1
            polled.notify_all()
    poller.poll()

    assert not failures, failures
    assert polls >= rounds // 3
    expected = _all_versions(served)
    assert len(expected) > 3 * rounds * 3
    assert poller.history == Counter(dict.fromkeys(expected, 1))
    # Search answers current versions: each is seen once, a newer version of one seen once too.
    assert max(poller.searched.values()) == 1
    current = {(i, v) for i, v in expected if (i, v + 1) not in expected}
    assert current <= set(poller.searched)
    moments = [moment for _, moment in written]
    assert len(set(moments)) == len(moments)


def _all_versions(client: TestClient) -> set[tuple[str, int]]:
    found: set[tuple[str, int]] = set()
    bundle = client.get("/fhir/Observation/_history", params={"_count": "1000"}).json()
    for item in bundle.get("entry", []):
        found.add((item["resource"]["id"], int(item["resource"]["meta"]["versionId"])))
    return found


def test_an_export_waits_for_the_writer_in_flight_and_the_next_since_misses_nothing(
    served: TestClient, engines: list[Engine]
) -> None:
    exports: ExportService = served.app.state.runtime.exports  # type: ignore[attr-defined]
    now = datetime.now(UTC)
    write(engines[0], [observation("obs-1", 1)], now)
    manifests: list[tuple[str, dict[str, Any]]] = []

    def export(since: str | None) -> None:
        job = exports.kick_off(
            "system", "http://testserver/fhir/$export", "Observation", since, None
        )
        exports.run()
        status = exports.status(job)
        assert status.manifest is not None
        manifests.append((job, status.manifest))

    with engines[1].begin() as connection:
        in_flight = store(connection, [observation("obs-2", 2)], now)
        exporting = threading.Thread(target=export, args=(None,))
        exporting.start()
        exporting.join(timeout=0.3)
        assert exporting.is_alive(), "the export fixed its time while a writer was in flight"
    exporting.join(timeout=30)
    write(engines[2], [observation("obs-3", 3)], now - timedelta(seconds=5))
    export(manifests[0][1]["transactionTime"])

    first, second = (_exported(exports, job, manifest) for job, manifest in manifests)
    assert datetime.fromisoformat(manifests[0][1]["transactionTime"]) > in_flight
    assert first == {"obs-1", "obs-2"}
    assert second == {"obs-3"}


def _exported(exports: ExportService, job: str, manifest: dict[str, Any]) -> set[str]:
    ids: set[str] = set()
    for output in manifest["output"]:
        lines = exports.file(job, output["file"]).read_bytes().splitlines()
        ids |= {orjson.loads(line)["id"] for line in lines if line}
    return ids
