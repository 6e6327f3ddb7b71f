"""What someone changed at the EHR is kept or undone as mappings/ehr.yaml says (edited_in_ehr,
deleted_in_ehr), and always reported; copies that provably are the sync's own, stored twice,
are removed by reconciliation, and copies someone may have changed are left for a person."""

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
import requests

from adapter.runtime import Runtime
from adapter.sync.commands import EXIT_REFUSED, exit_code
from adapter.sync.engine import Sync, sync_once
from adapter.sync.reconcile import reconcile_once
from tests.conftest import EXAMPLE_DAY
from tests.sync.expected import expected_in_ehr
from tests.sync.sandbox import SandboxEhr
from tests.sync.test_delivery import load_example_day

Json = dict[str, Any]


@pytest.fixture
def delivered(runtime: Runtime, sync: Sync, ehr: SandboxEhr) -> Iterator[Json]:
    """The example day delivered; one of its heart rates as the EHR holds it (not one the
    clinic withdrew)."""
    load_example_day(runtime)
    assert sync_once(sync, trigger="test").status == "completed"
    yield a_heart_rate(ehr)


def a_heart_rate(ehr: SandboxEhr, other_than: str | None = None) -> Json:
    """A heart rate the EHR holds that the clinic has not withdrawn (the EHR's order of its
    copies follows the sync's, which sends urgent ones first)."""
    return next(
        o
        for o in ehr.all("Observation")
        if o["identifier"][0]["value"].endswith("heart_rate")
        and o["status"] != "entered-in-error"
        and o["id"] != other_than
    )


def edit_at_the_ehr(ehr: SandboxEhr, resource: Json, **changes: Any) -> Json:
    """A user of the EHR changes its copy (a new version there)."""
    answer = requests.put(
        f"{ehr.base}/{resource['resourceType']}/{resource['id']}",
        data=orjson.dumps({**resource, **changes}),
        headers={
            "Content-Type": "application/fhir+json",
            "If-Match": f'W/"{resource["meta"]["versionId"]}"',
        },
        timeout=10,
    )
    answer.raise_for_status()
    edited: Json = answer.json()
    return edited


def delete_at_the_ehr(ehr: SandboxEhr, resource: Json) -> None:
    url = f"{ehr.base}/{resource['resourceType']}/{resource['id']}"
    requests.delete(url, timeout=10).raise_for_status()


def amend_heart_rate(runtime: Runtime, identifier: str, rate: int, revision: int = 2) -> None:
    """A new revision of the vitals record behind a heart-rate Observation."""
    record_id = identifier.split("/")[0]
    record = next(
        orjson.loads(line)
        for line in EXAMPLE_DAY.read_bytes().splitlines()
        if line.strip() and orjson.loads(line)["id"] == record_id
    )
    record["revision"] = revision
    record["heart_rate"] = rate
    runtime.intake.submit([(1, orjson.dumps(record))])
    runtime.mapping.run()


def held_at_the_ehr(ehr: SandboxEhr, copy: Json) -> Json | None:
    return next((o for o in ehr.all(copy["resourceType"]) if o["id"] == copy["id"]), None)


def test_an_observation_marked_entered_in_error_at_the_ehr_is_kept_and_listed(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, delivered: Json
) -> None:
    edit_at_the_ehr(ehr, delivered, status="entered-in-error")

    report = reconcile_once(sync)

    assert report.counts["edited_in_ehr"] == 1 and report.counts["different"] == 0
    assert exit_code(report) == EXIT_REFUSED
    dead = runtime.outbox.listed(("dead",), 10)
    assert [item.ehr_id for item in dead] == [delivered["id"]]
    assert dead[0].detail and "changed there" in dead[0].detail["reason"]
    sync_once(sync, trigger="test")
    held = held_at_the_ehr(ehr, delivered)
    assert held and held["status"] == "entered-in-error"

    # A person reviewed it and replays: the clinic's version goes over that EHR version.
    assert runtime.outbox.requeue(sync.clock(), ["dead"]) == 1
    assert sync_once(sync, trigger="test").counts["delivered"] == 1
    held = held_at_the_ehr(ehr, delivered)
    assert held and held["status"] == delivered["status"]
    again = reconcile_once(sync)
    assert again.counts["matching"] == sum(expected_in_ehr(runtime).values())


def test_an_edit_at_the_ehr_is_overwritten_where_the_site_chose_so(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, delivered: Json, settings_mappings: Path
) -> None:
    (settings_mappings / "ehr.yaml").write_text("edited_in_ehr: overwrite\n")
    edit_at_the_ehr(ehr, delivered, status="entered-in-error")

    report = reconcile_once(sync)
    sync_once(sync, trigger="test")

    assert report.counts["different"] == 1 and report.counts["edited_in_ehr"] == 0
    held = held_at_the_ehr(ehr, delivered)
    assert held and held["status"] == delivered["status"]


@pytest.mark.parametrize("choice", ["keep", "overwrite"])
def test_a_new_version_meeting_an_edit_at_the_ehr_follows_the_sites_choice(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, settings_mappings: Path, choice: str
) -> None:
    """With If-Match (Oracle Health), a 412 tells the sync that someone changed the copy."""
    (settings_mappings / "ehr.yaml").write_text(f"edited_in_ehr: {choice}\n")
    ehr.reset("oracle")
    load_example_day(runtime)
    sync_once(sync, trigger="test")
    copy = a_heart_rate(ehr)
    edit_at_the_ehr(ehr, copy, status="entered-in-error")
    amend_heart_rate(runtime, copy["identifier"][0]["value"], 61)

    report = sync_once(sync, trigger="test")

    held = held_at_the_ehr(ehr, copy)
    assert held is not None
    if choice == "keep":
        assert report.counts["dead"] == 1 and held["status"] == "entered-in-error"
        dead = runtime.outbox.listed(("dead",), 10)
        assert dead[0].detail and dead[0].detail["status"] == 412
    else:
        assert report.counts["delivered"] == 1 and held["valueQuantity"]["value"] == 61
        assert held["status"] != "entered-in-error"


def test_a_copy_deleted_at_the_ehr_stays_deleted_and_listed_until_replayed(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, delivered: Json
) -> None:
    delete_at_the_ehr(ehr, delivered)

    report = reconcile_once(sync)

    assert report.counts["deleted_in_ehr"] == 1 and report.counts["missing"] == 0
    assert exit_code(report) == EXIT_REFUSED
    sync_once(sync, trigger="test")
    identifier = delivered["identifier"][0]["value"]
    assert identifier not in {i[1] for i in ehr.identifier_counts("Observation")}

    assert runtime.outbox.requeue(sync.clock(), ["dead"]) == 1
    assert sync_once(sync, trigger="test").counts["delivered"] == 1
    assert ehr.identifier_counts("Observation")[(delivered["identifier"][0]["system"], identifier)]
    assert reconcile_once(sync).counts["matching"] == sum(expected_in_ehr(runtime).values())


@pytest.mark.parametrize("choice", ["keep", "recreate"])
def test_an_update_answered_410_follows_the_sites_choice(
    runtime: Runtime,
    sync: Sync,
    ehr: SandboxEhr,
    delivered: Json,
    settings_mappings: Path,
    choice: str,
) -> None:
    (settings_mappings / "ehr.yaml").write_text(f"deleted_in_ehr: {choice}\n")
    delete_at_the_ehr(ehr, delivered)
    amend_heart_rate(runtime, delivered["identifier"][0]["value"], 62)

    report = sync_once(sync, trigger="test")

    copies = ehr.identifier_counts("Observation")
    key = (delivered["identifier"][0]["system"], delivered["identifier"][0]["value"])
    if choice == "keep":
        assert report.counts["dead"] == 1 and key not in copies
        dead = runtime.outbox.listed(("dead",), 10)
        assert dead[0].detail and dead[0].detail["status"] == 410
    else:
        assert report.counts["delivered"] == 1 and copies[key] == 1


def test_reconciliation_removes_copies_that_provably_are_its_own_and_reports_others(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, delivered: Json
) -> None:
    """An extra copy saying what the sync sends (a write the EHR stored after the sync had
    stopped waiting for it) is deleted; one that says something else is left for a person."""
    twin = {k: v for k, v in delivered.items() if k not in ("id", "meta")}
    ehr.control("POST", "/seed", [twin])
    other = a_heart_rate(ehr, other_than=delivered["id"])
    changed = {k: v for k, v in other.items() if k not in ("id", "meta")}
    ehr.control("POST", "/seed", [{**changed, "status": "entered-in-error"}])

    report = reconcile_once(sync)

    assert report.counts["duplicates_removed"] == 1 and report.counts["duplicated"] == 1
    assert exit_code(report) == EXIT_REFUSED
    counts = ehr.identifier_counts("Observation")
    assert counts[(delivered["identifier"][0]["system"], delivered["identifier"][0]["value"])] == 1
    assert counts[(other["identifier"][0]["system"], other["identifier"][0]["value"])] == 2
    assert held_at_the_ehr(ehr, delivered) is not None  # the copy the sync knows stays


def test_a_412_after_the_syncs_own_unanswered_update_is_not_taken_for_an_edit(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr
) -> None:
    """An update whose answer was lost may have been stored: the 412 its repeat meets is the
    sync's own version, not someone's edit, and the new version goes over it."""
    ehr.reset("oracle")
    load_example_day(runtime)
    sync_once(sync, trigger="test")
    copy = a_heart_rate(ehr)
    identifier = copy["identifier"][0]["value"]
    amend_heart_rate(runtime, identifier, 63)
    fast = sync.client.timeout
    sync.client.timeout = 0.3
    ehr.quirk(lateCommit=True)
    try:
        unanswered = sync_once(sync, trigger="test")
    finally:
        sync.client.timeout = fast
    ehr.quirk()
    ehr.settle()  # the EHR stored the update after the sync stopped waiting
    amend_heart_rate(runtime, identifier, 64, revision=3)
    later = sync.clock() + timedelta(hours=2)
    sync.clock = lambda: later  # type: ignore[method-assign]

    report = sync_once(sync, trigger="test")

    assert unanswered.counts["retry_later"] == 1 or unanswered.counts["unconfirmed"] == 1
    assert report.counts["delivered"] == 1 and report.counts["dead"] == 0, report
    held = held_at_the_ehr(ehr, copy)
    assert held and held["valueQuantity"]["value"] == 64
