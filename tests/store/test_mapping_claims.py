"""Mapping work claimed by batch: two mapping processes on one store map each record once."""

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import func, select

from adapter.mapping.mapper import SourceRecord
from adapter.mapping.service import MappingReport
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings
from adapter.store.mapping_queue import CLAIM_FOR, MAPPED, MappingOutcome
from adapter.store.tables import fhir_resource_versions
from tests.conftest import ndjson, session, vitals


@pytest.fixture
def second(settings: Settings, runtime: Runtime) -> Iterator[Runtime]:
    """Another process on the same store: its own engine, mapping service and queue."""
    opened = open_runtime(settings)
    yield opened
    opened.close()


def _submit(runtime: Runtime, count: int) -> None:
    bodies = [session(id=f"SES-{n}") for n in range(count // 10)]
    bodies += [vitals(id=f"VIT-{n}", session_id=f"SES-{n % (count // 10)}") for n in range(count)]
    runtime.intake.submit([(n, ndjson(body).strip()) for n, body in enumerate(bodies)])


def test_two_claims_take_different_records_and_a_lapsed_claim_is_taken_again(
    runtime: Runtime, second: Runtime
) -> None:
    _submit(runtime, 20)
    now = datetime.now(UTC)

    first = runtime.mapping.queue.claim_batch(10, now)
    other = second.mapping.queue.claim_batch(100, now)
    lapsed = second.mapping.queue.claim_batch(100, now + CLAIM_FOR + timedelta(seconds=1))

    keys = {(item.record_type, item.source_id) for item in first}
    assert len(first) == 10 and len(other) == 12
    assert keys.isdisjoint((item.record_type, item.source_id) for item in other)
    assert len(lapsed) == 22
    with runtime.store.engine.begin() as connection:
        assert not runtime.mapping.queue.hold(connection, first)
    with second.store.engine.begin() as connection:
        assert second.mapping.queue.hold(connection, lapsed)


def test_a_claim_lasts_as_long_as_the_settings_say(settings: Settings) -> None:
    opened = open_runtime(settings.model_copy(update={"mapping_claim_seconds": 5.0}))
    try:
        _submit(opened, 10)
        now = datetime.now(UTC)
        queue = opened.mapping.queue
        claimed = queue.claim_batch(100, now)
        still_held = queue.claim_batch(100, now + timedelta(seconds=4))
        lapsed = queue.claim_batch(100, now + timedelta(seconds=6))
    finally:
        opened.close()
    assert len(claimed) == 11 and still_held == [] and len(lapsed) == 11


def test_finishing_a_batch_lets_go_of_its_records(runtime: Runtime) -> None:
    _submit(runtime, 10)
    queue = runtime.mapping.queue
    batch = queue.claim_batch(5, datetime.now(UTC))
    with runtime.store.engine.begin() as connection:
        queue.finish(connection, [MappingOutcome(item, MAPPED, None, "v") for item in batch[:3]])
        queue.release(connection, batch[3:])

    again = queue.claim_batch(100, datetime.now(UTC))

    assert {item.source_id for item in batch[3:]} <= {item.source_id for item in again}
    assert not {item.source_id for item in batch[:3]} & {item.source_id for item in again}


def test_a_batch_that_outlasted_its_claim_stores_nothing(
    runtime: Runtime, second: Runtime, caplog: pytest.LogCaptureFixture
) -> None:
    _submit(runtime, 10)
    long_ago = datetime.now(UTC) - CLAIM_FOR - timedelta(minutes=1)
    stale = runtime.mapping.queue.claim_batch(100, long_ago)
    report = second.mapping.run()

    lost = MappingReport()
    runtime.mapping._map_batch(runtime.mapping.mapper, stale, lost)

    assert report.mapped == 11
    assert lost.mapped == 0 and lost.records == 0
    with runtime.store.engine.connect() as connection:
        versions = connection.execute(select(func.max(fhir_resource_versions.c.version_id)))
        assert versions.scalar_one() == 1
    assert "outlasted its claim" in caplog.text


def test_two_mapping_processes_at_once_map_each_record_once(
    runtime: Runtime, second: Runtime
) -> None:
    _submit(runtime, 150)
    mapped: Counter[tuple[str, str]] = Counter()
    lock = threading.Lock()
    start = threading.Barrier(2)
    failures: list[BaseException] = []

    def counting(service_runtime: Runtime) -> None:
        mapper = service_runtime.mapping.mapper
        original = mapper.map

        def map_once(source: SourceRecord) -> Any:
            with lock:
                mapped[(source.record.record_type, source.record.id)] += 1
            return original(source)

        mapper.map = map_once  # type: ignore[method-assign]
        try:
            start.wait(10)
            service_runtime.mapping.run(batch_size=10)
        except BaseException as exc:  # reported by the test's thread
            failures.append(exc)

    threads = [threading.Thread(target=counting, args=(r,)) for r in (runtime, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert not failures, failures
    assert len(mapped) == 165
    assert set(mapped.values()) == {1}
    assert runtime.mapping.queue.counts() == {MAPPED: 165}
    with runtime.store.engine.connect() as connection:
        versions = connection.execute(select(func.max(fhir_resource_versions.c.version_id)))
        assert versions.scalar_one() == 1
