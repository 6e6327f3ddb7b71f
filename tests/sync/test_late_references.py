"""Records arrive in any order: a resource delivered before what it references is in the EHR
goes without that reference, waits (listed as owing it), and is updated with it once the
target is delivered, once; reconciliation then finds nothing different."""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from adapter.console.words import delivery_reason
from adapter.runtime import Runtime
from adapter.settings import Settings
from adapter.store.outbox import STATES, OutboxItem
from adapter.sync.commands import _item_line
from adapter.sync.engine import Sync, sync_once
from adapter.sync.reconcile import reconcile_once
from tests.conftest import adverse_event, fasting, ndjson, session, transport, vitals
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import in_batches_of

Json = dict[str, Any]
MRN = "900001"


@dataclass(frozen=True)
class Kind:
    """Records that reference the session's resources, and the references to find in the
    EHR's copies: (resource type, path to the reference, the type it points at)."""

    records: Callable[[], list[Json]]
    references: list[tuple[str, str, str]]


KINDS = {
    "vitals": Kind(
        lambda: [vitals()],
        [("Observation", "partOf", "Procedure"), ("Observation", "encounter", "Encounter")],
    ),
    "transport": Kind(
        lambda: [transport()],
        [("Observation", "partOf", "Procedure"), ("Observation", "encounter", "Encounter")],
    ),
    "adverse_event": Kind(
        lambda: [adverse_event()],
        [
            ("AdverseEvent", "suspectEntity.instance", "Procedure"),
            ("AdverseEvent", "encounter", "Encounter"),
            ("AdverseEvent", "extension.valueReference", "MedicationAdministration"),
            ("MedicationAdministration", "partOf", "Procedure"),
            ("MedicationAdministration", "context", "Encounter"),
            ("MedicationAdministration", "supportingInformation", "AdverseEvent"),
        ],
    ),
    "protocol_breach": Kind(
        # Solid food 2 h before the infusion: a DetectedIssue once the session is known.
        lambda: [fasting(last_solid_food_at="2026-11-20T07:00:00-05:00")],
        [
            ("DetectedIssue", "implicated", "Procedure"),
            ("DetectedIssue", "evidence.detail", "Observation"),
            ("Observation", "partOf", "Procedure"),
        ],
    ),
}
ORDERS = ["target_first", "same_batch", "separate_batches", "target_after"]


def post(runtime: Runtime, *records: Json) -> None:
    runtime.intake.submit([(n, ndjson(r).strip()) for n, r in enumerate(records, start=1)])
    runtime.mapping.run()


def referenced(resource: Json, path: str) -> list[str]:
    """The references found at a dotted path (lists walked) of a resource."""
    found: list[Any] = [resource]
    for key in path.split("."):
        step: list[Any] = []
        for value in found:
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, dict) and key in item:
                    step.append(item[key])
        found = step
    flat = [f for value in found for f in (value if isinstance(value, list) else [value])]
    return [str(f["reference"]) for f in flat if isinstance(f, dict) and "reference" in f]


def assert_complete(runtime: Runtime, sync: Sync, ehr: SandboxEhr, kind: Kind) -> None:
    """Every reference of the kind in the EHR's copies, as the adapter's version has it but
    to the EHR's own resources; each resource there once; nothing owed; nothing for
    reconciliation to put right."""
    items = {i.resource_id: i for i in runtime.outbox.listed(STATES, 1000)}
    for resource_type, path, target_type in kind.references:
        copies = {str(c["id"]): c for c in ehr.all(resource_type)}
        seen = 0
        for stored in runtime.resources.all_current():
            item = items.get(stored.id)
            if stored.resource_type != resource_type or not item or item.state == "skipped":
                continue
            ours = referenced(orjson.loads(stored.content), path)
            expected = [
                f"{kind_}/{items[target].ehr_id}"
                for kind_, _, target in (r.partition("/") for r in ours)
                if items[target].state != "skipped"
            ]
            assert item.ehr_id is not None
            assert referenced(copies[item.ehr_id], path) == expected, (resource_type, path)
            seen += sum(r.startswith(f"{target_type}/") for r in expected)
        assert seen, (resource_type, path, target_type)
        assert set(ehr.identifier_counts(resource_type).values()) == {1}, resource_type
    counts = runtime.outbox.counts()
    assert counts["pending"] == counts["waiting"] == counts["dead"] == 0, counts
    writes = {k: v for k, v in ehr.stats().items() if not k.startswith("GET")}
    assert sync_once(sync, trigger="test").counts.get("delivered", 0) == 0
    again = {k: v for k, v in ehr.stats().items() if not k.startswith("GET")}
    assert again == writes  # nothing sent twice
    report = reconcile_once(sync)
    assert report.status == "completed", report.error
    assert report.counts["different"] == report.counts["missing"] == 0, report.counts


def waiting_for_the_session(runtime: Runtime) -> list[OutboxItem]:
    """The items delivered without their references to the session's resources, not stored
    yet: waiting, in the EHR already, each saying what it owes."""
    waiting = runtime.outbox.listed(("waiting",), 100)
    for item in waiting:
        detail = item.detail or {}
        assert item.ehr_id, item
        assert detail["left_out"] and all(r in detail["reason"] for r in detail["left_out"])
        assert "not yet in the EHR" in detail["reason"]
    owed = {r.partition("/")[0] for i in waiting for r in (i.detail or {})["left_out"]}
    assert not waiting or "Procedure" in owed
    return waiting


@pytest.fixture
def known_patient(ehr: SandboxEhr) -> Iterator[SandboxEhr]:
    ehr.add_patients([MRN])
    yield ehr


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("name", sorted(KINDS))
def test_each_reference_reaches_the_ehr_whatever_the_order_of_arrival(
    runtime: Runtime, settings: Settings, known_patient: SandboxEhr, name: str, order: str
) -> None:
    kind, ehr = KINDS[name], known_patient
    sync = in_batches_of(1 if order == "separate_batches" else 500, runtime, settings)
    if order == "target_first":
        post(runtime, session())
        sync_once(sync, trigger="test")
        post(runtime, *kind.records())
        sync_once(sync, trigger="test")
    elif order == "target_after":
        post(runtime, *kind.records())
        first = sync_once(sync, trigger="test")
        assert first.status == "completed", first.error
        held = waiting_for_the_session(runtime)
        # A fasting attestation waits for its session before mapping: nothing is delivered.
        assert bool(held) == (name != "protocol_breach")
        post(runtime, session())
        sync_once(sync, trigger="test")
    else:
        post(runtime, *kind.records(), session())
        sync_once(sync, trigger="test")
    assert_complete(runtime, sync, ehr, kind)


@pytest.mark.parametrize("profile", ["single", "epic"])
def test_late_references_without_transactions_or_with_stand_ins(
    runtime: Runtime, sync: Sync, known_patient: SandboxEhr, profile: str
) -> None:
    """An EHR of single requests (no urn:uuid), and one that takes no AdverseEvent (its
    stand-ins are delivered instead, and a reference to the type it never gets is left out
    for good: nothing waits for it)."""
    ehr = known_patient
    ehr.reset(profile)
    ehr.add_patients([MRN])
    post(runtime, vitals(), adverse_event())
    sync_once(sync, trigger="test")
    assert waiting_for_the_session(runtime)
    post(runtime, session())
    sync_once(sync, trigger="test")
    references = [("Observation", "partOf", "Procedure"), ("Observation", "encounter", "Encounter")]
    references += [("MedicationAdministration", "partOf", "Procedure")]
    assert_complete(runtime, sync, ehr, Kind(list, references))


def test_the_issues_reproduction_attestation_and_vitals_then_their_session(
    runtime: Runtime, sync: Sync, known_patient: SandboxEhr, client: TestClient
) -> None:
    """Post a fasting attestation and a vitals set for a new session, sync, then post the
    session and sync: every EHR copy has partOf, nothing remains owed, reconciliation agrees."""
    ehr = known_patient
    post(runtime, fasting(), vitals())
    first = sync_once(sync, trigger="schedule")
    assert first.counts["waiting"] == len(ehr.all("Observation")) > 0
    listed = client.get("/api/v1/sync/waiting").json()
    assert listed["count"] == first.counts["waiting"]
    item = runtime.outbox.listed(("waiting",), 1)[0]
    for shown in (
        listed["items"][0]["reason"],
        _item_line(item),
        delivery_reason("waiting", item.detail or {}),
    ):
        assert "reference" in shown and "not yet in the EHR" in shown
    # Items owing a reference alone start no scheduled run: only the delivery of their target can
    # complete them, and that target is due itself when it comes.
    assert sync_once(sync, trigger="schedule").status == "idle"

    post(runtime, session())
    second = sync_once(sync, trigger="schedule")

    assert second.status == "completed", second.error
    procedures = {f"Procedure/{p['id']}" for p in ehr.all("Procedure")}
    observations = ehr.all("Observation")
    fasting_copy = [o for o in observations if any("ATT-1" in i["value"] for i in o["identifier"])]
    assert fasting_copy and len(observations) > first.counts["waiting"]
    for observation in observations:
        assert {p["reference"] for p in observation["partOf"]} <= procedures
    kind = Kind(list, [("Observation", "partOf", "Procedure")])
    assert_complete(runtime, sync, ehr, kind)


def test_a_target_stored_while_a_run_goes_on_completes_its_referrer_in_that_run(
    runtime: Runtime, settings: Settings, known_patient: SandboxEhr, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A series' CarePlan comes before its sessions' Procedures; one staged while its
    Procedure was not stored yet (mapping and the sync work at once) is updated in the run
    that delivers the Procedure, not left for the next."""
    ehr = known_patient
    post(runtime, session(series_id="SER-1", session_number=1, sessions_planned=3))
    procedure = next(
        r.id for r in runtime.resources.all_current() if r.resource_type == "Procedure"
    )
    sync = in_batches_of(1, runtime, settings)  # the CarePlan's batch reads its Procedure
    items = sync.outbox.items
    hidden = [True]

    def not_stored_yet(ids: Any) -> dict[str, OutboxItem]:
        found = items(ids)
        if hidden[0] and procedure in found:
            hidden[0] = False
            del found[procedure]
        return found

    monkeypatch.setattr(sync.outbox, "items", not_stored_yet)

    report = sync_once(sync, trigger="test")

    assert report.status == "completed" and not hidden[0]
    plans = ehr.all("CarePlan")
    assert len(plans) == 1
    assert referenced(plans[0], "activity.outcomeReference") == [
        f"Procedure/{p['id']}" for p in ehr.all("Procedure")
    ]
    kind = Kind(list, [("Procedure", "basedOn", "CarePlan")])
    assert_complete(runtime, sync, ehr, kind)


def test_a_resource_delivered_without_a_reference_it_waits_for_shows_when_it_was_sent(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    """Vitals and a fast before their session: delivered, held for the session's reference;
    their journeys say when they were sent."""
    ehr.add_patients([MRN])
    post(runtime, fasting(), vitals())
    assert sync_once(sync, trigger="schedule").counts["waiting"]

    waiting = runtime.outbox.listed(("waiting",), 100)
    journeys = runtime.outbox.journeys([item.resource_id for item in waiting])
    assert journeys and all(j["sent"] and j["answered"] for j in journeys.values())
