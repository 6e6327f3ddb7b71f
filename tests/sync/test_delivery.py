"""The sync delivers every resource to a real FHIR server once, with the EHR's own references."""

from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.outbox import STATES, Outbox
from adapter.store.resources import NOT_DELIVERED
from adapter.sync.delivery import Delivery
from adapter.sync.engine import Sync, sync_once, utc_now
from tests.conftest import EXAMPLE_DAY
from tests.sync.expected import expected_in_ehr, not_for_ehr
from tests.sync.sandbox import SandboxEhr

MRN_SYSTEM = "https://ketamine-clinic.example.org/fhir/sid/mrn"


def load_example_day(runtime: Runtime) -> None:
    lines = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
    runtime.intake.submit(list(enumerate(lines, start=1)))
    runtime.mapping.run()


def sync_with(
    runtime: Runtime,
    settings: Settings,
    clock: Callable[[], datetime] = utc_now,
    **changes: Any,
) -> Sync:
    """A sync of the runtime's store with these settings changed, on `clock`, that waits out
    no retry."""
    return Sync(
        settings.model_copy(update=changes),
        runtime.store.engine,
        runtime.store,
        lambda: runtime.mapping.mapper.mappings.site,
        clock=clock,
        sleep=lambda _: None,
    )


def in_batches_of(size: int, runtime: Runtime, settings: Settings) -> Sync:
    """A sync in small batches: several batches overlap in the pipeline."""
    return sync_with(runtime, settings, sync_batch_size=size)


def stored_counts(runtime: Runtime) -> Counter[str]:
    return Counter(r.resource_type for r in runtime.resources.all_current())


@pytest.mark.parametrize("profile", ["generic", "epic", "oracle", "single"])
def test_the_example_day_arrives_once_under_every_ehr_profile(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, profile: str
) -> None:
    ehr.reset(profile)
    load_example_day(runtime)

    report = sync_once(sync, trigger="test")

    assert report.status == "completed", report.error
    expected = expected_in_ehr(runtime, profile)
    for resource_type in set(stored_counts(runtime)) - NOT_DELIVERED:
        copies = ehr.identifier_counts(resource_type)
        assert len(ehr.all(resource_type)) == expected[resource_type], resource_type
        assert set(copies.values()) <= {1}, resource_type
    assert sync.outbox.counts()["dead"] == 0
    assert sync.outbox.counts()["skipped"] == not_for_ehr(runtime, profile)
    if profile == "epic":
        assert not ehr.all("AdverseEvent") and not ehr.all("DetectedIssue")


def test_references_point_at_the_ehrs_ids(runtime: Runtime, sync: Sync, ehr: SandboxEhr) -> None:
    load_example_day(runtime)

    sync_once(sync, trigger="test")

    patients = {p["identifier"][0]["value"]: p["id"] for p in ehr.all("Patient")}
    procedures = {p["id"] for p in ehr.all("Procedure")}
    observations = ehr.all("Observation")
    assert observations
    for observation in observations:
        subject = observation["subject"]
        assert subject["reference"] == f"Patient/{patients[subject['identifier']['value']]}"
        for part_of in observation.get("partOf", []):
            kind, _, ehr_id = part_of["reference"].partition("/")
            assert kind == "Procedure" and ehr_id in procedures, part_of
    for event in ehr.all("AdverseEvent"):
        for suspect in event["suspectEntity"]:
            assert suspect["instance"]["reference"].split("/")[1] in procedures


def test_a_second_run_sends_nothing_and_a_new_version_updates_the_same_copy(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    load_example_day(runtime)
    sync_once(sync, trigger="test")
    before = ehr.stats()

    again = sync_once(sync, trigger="test")

    assert again.counts == Counter()
    assert {k: v for k, v in ehr.stats().items() if not k.startswith("GET")} == {
        k: v for k, v in before.items() if not k.startswith("GET")
    }
    line = next(
        orjson.loads(raw)
        for raw in EXAMPLE_DAY.read_bytes().splitlines()
        if raw.strip() and orjson.loads(raw)["record_type"] == "vitals"
    )
    line["revision"] += 1
    line["heart_rate"] = 61
    runtime.intake.submit([(1, orjson.dumps(line))])
    runtime.mapping.run()

    third = sync_once(sync, trigger="test")

    assert third.counts["delivered"] >= 1
    heart_rates = [
        o
        for o in ehr.all("Observation")
        if any(i["value"] == f"{line['id']}/heart_rate" for i in o["identifier"])
    ]
    assert len(heart_rates) == 1
    assert heart_rates[0]["valueQuantity"]["value"] == 61


def test_the_sites_overrides_and_extra_codings_apply_on_the_way_out(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, settings_mappings: Path
) -> None:
    (settings_mappings / "ehr.yaml").write_text(
        """
resource_types:
  MedicationAdministration: {deliver: "no"}
extra_codings:
  - match: {system: "http://loinc.org", code: "8867-4"}
    add: {system: "urn:example:flowsheet", code: "8", display: "Pulse", source: "site build"}
"""
    )
    load_example_day(runtime)

    sync_once(sync, trigger="test")

    assert ehr.all("MedicationAdministration") == []
    assert sync.outbox.counts()["skipped"] == stored_counts(runtime)[
        "MedicationAdministration"
    ] + not_for_ehr(runtime)
    pulses = [
        o
        for o in ehr.all("Observation")
        if any(c["code"] == "8867-4" for c in o["code"].get("coding", []))
    ]
    assert pulses
    for pulse in pulses:
        assert {"system": "urn:example:flowsheet", "code": "8", "display": "Pulse"} in pulse[
            "code"
        ]["coding"]
    stored = [orjson.loads(r.content) for r in runtime.resources.all_current()]
    assert "urn:example:flowsheet" not in orjson.dumps(stored).decode()


def test_resources_never_sent_are_created_without_searching_first(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    load_example_day(runtime)
    before = ehr.stats().get("searches", 0)

    report = sync_once(sync, trigger="test")

    delivered = sum(expected_in_ehr(runtime).values())
    assert report.counts["delivered"] == delivered == 86
    assert ehr.stats().get("searches", 0) == before
    sent = [i for i in runtime.outbox.listed(("delivered",), 100) if i.sent_at is not None]
    assert len(sent) == delivered


def test_a_mark_says_a_create_may_be_in_the_ehr_unless_this_run_made_it_ahead_of_sending(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    """A run notes its creates before it sends them, in reads made ahead; an item read again
    meanwhile bears that mark, which says nothing of the EHR until the run has sent it. A mark
    the run found on an item, or made on one it has sent, is a create that may have reached the
    EHR unheard: searched for before it is sent again."""
    load_example_day(runtime)
    now = datetime.now(UTC)
    rules = sync.ehr_rules()
    delivery = sync.delivery(sync.plans(now, rules), rules)
    read = sync.outbox.due(now, None, 6)
    creates = [p.item.resource_id for p in read]
    assert not any(p.item.ehr_id or delivery._unheard(p.item) for p in read)

    delivery.note_ahead(read)
    again = sync.outbox.due(now, None, 6, ids=creates)
    assert [p.item.resource_id for p in again] == creates
    assert all(p.item.sent_at is not None for p in again)
    assert not any(delivery._unheard(p.item) for p in again)

    delivery._mark_sent(creates[:2])  # sent now
    delivery.marked_ahead.update(creates)  # as a read ahead whose note lands late would
    assert [delivery._unheard(p.item) for p in again] == [True] * 2 + [False] * 4

    next_run = sync.delivery(sync.plans(now, rules), rules)
    assert all(next_run._unheard(p.item) for p in again)


def test_every_create_is_noted_in_the_outbox_before_its_bundle_leaves(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    """The run stages the next batch while the EHR works on one; whatever the overlap, a
    create is committed as sent (what a restarted run searches for) before it is sent."""
    load_example_day(runtime)
    sync = in_batches_of(7, runtime, settings)
    unmarked: list[str] = []
    bundles: list[int] = []
    send = sync.client.request

    def checked(method: str, path: str, **options: Any) -> Any:
        body = options.get("body") or {}
        body = orjson.loads(body) if isinstance(body, str) else body
        if body.get("resourceType") == "Bundle":
            creates = [
                e["fullUrl"].removeprefix("urn:uuid:")
                for e in body["entry"]
                if e["request"]["method"] == "POST"
            ]
            noted = Outbox(runtime.store.engine).items(creates)  # another connection: committed
            unmarked.extend(c for c in creates if noted[c].sent_at is None)
            bundles.append(len(creates))
        return send(method, path, **options)

    sync.client.request = checked  # type: ignore[method-assign]
    report = sync_once(sync, trigger="test")

    assert report.status == "completed", report.error
    assert len(bundles) >= 10 and sum(bundles) == sum(expected_in_ehr(runtime).values())
    assert unmarked == []


def test_a_run_that_fails_while_staging_keeps_what_the_ehr_answered(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A failure in the run's own thread while a batch is at the EHR: the run stops, and every
    resource the EHR stored is recorded with its EHR id (none left to be searched for)."""
    load_example_day(runtime)
    sync = in_batches_of(7, runtime, settings)
    staged, send = Delivery.stage, Delivery.send
    sent: list[int] = []

    def sending(self: Delivery, batch: Any) -> Any:
        sent.append(len(batch.batch))
        return send(self, batch)

    def failing(self: Delivery, batch: Any) -> Any:
        if sent:  # the first batch staged once some are on their way
            raise RuntimeError("the store went away")
        return staged(self, batch)

    monkeypatch.setattr(Delivery, "stage", failing)
    monkeypatch.setattr(Delivery, "send", sending)
    report = sync_once(sync, trigger="test")

    assert report.status == "failed"
    in_ehr = sum(len(ehr.all(t)) for t in set(stored_counts(runtime)) - NOT_DELIVERED)
    known = [i for i in runtime.outbox.listed(STATES, 100) if i.ehr_id is not None]
    assert 0 < in_ehr == len(known) <= sum(sent)  # the batches sent, each recorded


def test_outcomes_whose_recording_failed_are_recorded_as_the_run_stops(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outcomes are recorded beside the run's own thread: when one recording fails, the run
    fails, and on its way out records those outcomes again with the rest. Every resource the
    EHR stored keeps its EHR id, and no item stays pending as if never answered."""
    load_example_day(runtime)
    sync = in_batches_of(7, runtime, settings)
    record = Outbox.record
    failed: list[int] = []

    def failing_once(self: Outbox, outcomes: Any, now: Any) -> None:
        if not failed:
            failed.append(len(outcomes))
            raise RuntimeError("the store went away")
        record(self, outcomes, now)

    monkeypatch.setattr(Outbox, "record", failing_once)
    report = sync_once(sync, trigger="test")

    assert report.status == "failed" and report.cause == "internal"
    assert failed and failed[0] > 0
    in_ehr = sum(len(ehr.all(t)) for t in set(stored_counts(runtime)) - NOT_DELIVERED)
    known = [i for i in runtime.outbox.listed(STATES, 100) if i.ehr_id is not None]
    assert 0 < in_ehr == len(known)
    assert sum(report.counts.values()) >= failed[0]


def test_bundles_ask_for_minimal_answers_and_the_ehrs_ids_and_versions_are_kept(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr
) -> None:
    """The sandbox answers `Prefer: return=minimal` as HAPI FHIR does, without the resources:
    the EHR's id and version of each copy come from its entry's location and ETag."""
    load_example_day(runtime)
    sync = in_batches_of(7, runtime, settings)
    preferences: list[str | None] = []
    answered_resources = 0
    send = sync.client.request

    def watched(method: str, path: str, **options: Any) -> Any:
        nonlocal answered_resources
        answer = send(method, path, **options)
        body = options.get("body") or {}
        if isinstance(body, str) and body.startswith('{"resourceType":"Bundle"'):
            preferences.append((options.get("headers") or {}).get("Prefer"))
            answered_resources += sum("resource" in e for e in answer.body["entry"])
        return answer

    sync.client.request = watched  # type: ignore[method-assign]
    report = sync_once(sync, trigger="test")

    assert report.status == "completed", report.error
    assert preferences and set(preferences) == {"return=minimal"}
    assert answered_resources == 0
    held = {
        r["id"]: r["meta"]["versionId"]
        for resource_type in set(stored_counts(runtime)) - NOT_DELIVERED
        for r in ehr.all(resource_type)
    }
    delivered = Outbox(runtime.store.engine).listed(("delivered",), 1000)
    assert len(delivered) == sum(expected_in_ehr(runtime).values())
    assert {i.ehr_id: i.ehr_version for i in delivered} == held


@pytest.mark.parametrize("first_wait", [6.0, 600.0])
def test_a_resource_the_ehr_did_not_take_waits_the_first_retry_the_settings_give(
    runtime: Runtime, settings: Settings, ehr: SandboxEhr, first_wait: float
) -> None:
    """ADAPTER_EHR_ITEM_RETRY_SECONDS: the first wait of an item the EHR refused for want of
    the EHR (here a 403 to every write) is drawn between half of it and all of it."""
    load_example_day(runtime)
    ehr.quirk(forbidden="writes")
    sync = sync_with(runtime, settings, ehr_item_retry_seconds=first_wait)
    try:
        sync_once(sync, trigger="test")
    finally:
        ehr.quirk()
    tried = [i for i in Outbox(runtime.store.engine).listed(["pending"], 10_000) if i.attempts]
    waits = [(i.next_attempt_at - i.updated_at).total_seconds() for i in tried]

    assert tried
    assert all(first_wait * 0.5 - 1 <= wait <= first_wait + 1 for wait in waits), waits
