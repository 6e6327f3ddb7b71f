"""The sync against EHRs as they really behave: the sandbox EHR misbehaves one way at a time
(tests/ehr-server/quirks.mjs), on both stores. While it does, `sync --once` exits with the code
that says what happened; once it stops and the sync and reconciliation run again, the EHR holds
every resource exactly once, none under an inactive Patient, nothing reached another origin, no
item is stuck, and the runs recorded (`sync runs`) say what each run did."""

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from adapter.cli import main
from adapter.runtime import Runtime
from adapter.settings import Settings, get_settings
from adapter.sync.capabilities import DELIVERED_TYPES
from adapter.sync.commands import EXIT_CONFIGURATION, EXIT_EHR, EXIT_REFUSED, exit_code
from adapter.sync.engine import Sync, SyncReport, sync_once
from adapter.sync.reconcile import reconcile_once
from tests.conftest import EXAMPLE_DAY
from tests.sync.expected import expected_in_ehr, not_for_ehr
from tests.sync.sandbox import MRN_SYSTEM, SandboxEhr

SMALL_DAY = {"SES-2026-00415", "SES-2026-00416"}
"""Sessions whose records make the small day, with ALSO: three patients, three sessions, one with
its vitals and attestations, and two adverse events whose rescue medications and they reference
each other; 26 resources."""
ALSO = {"SES-2026-00412", "AE-2292"}
MERGED_MRN = "100871"
SURVIVOR = "survivor-of-100871"
NAUSEA = ("http://snomed.info/sct", "422587007")
CLIENT_TIMEOUT = 0.25


def small_day() -> list[bytes]:
    return [
        line
        for record, line in _day()
        if record["id"] in ALSO or (record.get("session_id") or record["id"]) in SMALL_DAY
    ]


def more_vitals() -> list[bytes]:
    """Vitals of the day beyond the small day's: what arrives while the EHR misbehaves."""
    return [
        line
        for record, line in _day()
        if record["record_type"] == "vitals" and record["session_id"] in ALSO
    ]


def _day() -> list[tuple[dict[str, Any], bytes]]:
    lines = [line for line in EXAMPLE_DAY.read_bytes().splitlines() if line.strip()]
    return [(orjson.loads(line), line) for line in lines]


def arrive(runtime: Runtime, lines: list[bytes]) -> None:
    runtime.intake.submit(list(enumerate(lines, start=1)))
    runtime.mapping.run()


class SteppingClock:
    """Two hours later each time it is advanced: what a run parked is due on the next one."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC)

    def __call__(self) -> datetime:
        return self.now

    def advance(self) -> None:
        self.now += timedelta(hours=2)


@dataclass
class Case:
    """One quirk's run: what the test sees of the EHR, the store and the sync."""

    ehr: SandboxEhr
    runtime: Runtime
    sync: Sync
    clock: SteppingClock
    slept: list[float]
    took: float = 0.0
    """Seconds the first run took, while the EHR misbehaved."""


@dataclass(frozen=True)
class Quirk:
    server: dict[str, Any]
    """The sandbox's quirk switches."""
    exit_code: int
    """What `sync --once` exits with while the EHR misbehaves."""
    more: tuple[tuple[dict[str, Any], int], ...] = ()
    """Other forms of the same misbehaviour, each with the exit code of a run that meets it."""
    profile: str = "generic"
    settings: dict[str, Any] = field(default_factory=dict)
    start: Callable[[Case], None] | None = None
    """Set-up at the EHR before the first run."""
    check: Callable[[Case], None] | None = None
    """What must hold while the EHR misbehaves, beyond the exit code."""
    end: Callable[[Case], None] | None = None
    """How the quirk ends, beyond switching it off (what a person does about it)."""


# -- set-ups, checks and ends -------------------------------------------------------------------


def merge_patient(confirmable: bool) -> Callable[[Case], None]:
    """The MRN's Patient merged into a survivor (active false, link replaced-by), as EHRs merge
    duplicate registrations; the survivor carries the MRN too, or cannot be read yet."""

    def start(case: Case) -> None:
        merged = next(
            p for p in case.ehr.all("Patient") if p["identifier"][0]["value"] == MERGED_MRN
        )
        inactive = {
            **merged,
            "active": False,
            "link": [{"other": {"reference": f"Patient/{SURVIVOR}"}, "type": "replaced-by"}],
        }
        case.ehr.control("POST", "/seed", [inactive])
        if confirmable:
            add_survivor(case)

    return start


def add_survivor(case: Case) -> None:
    merged = next(p for p in case.ehr.all("Patient") if p["identifier"][0]["value"] == MERGED_MRN)
    survivor = {k: v for k, v in merged.items() if k not in ("meta", "link")}
    case.ehr.control("POST", "/seed", [{**survivor, "id": SURVIVOR, "active": True}])


def held_for_the_merge(case: Case) -> None:
    waiting = case.runtime.outbox.listed(("waiting",), 100)
    assert waiting, "the merged patient's resources are held"
    for item in waiting:
        assert item.detail and "merged into another record" in item.detail["reason"]
    merged = {p["id"] for p in case.ehr.all("Patient") if p.get("active") is False}
    assert merged and not [r for r in in_the_ehr(case.ehr) if _patient_of(r) in merged]


def reject_nausea(case: Case) -> None:
    system, code = NAUSEA
    rule = {"system": system, "code": code, "status": 422, "resourceType": "AdverseEvent"}
    case.ehr.control("PUT", "/reject", rule)


def no_update_of_what_references_the_dead_letter(case: Case) -> None:
    dead = case.runtime.outbox.listed(("dead",), 10)
    assert [i.resource_type for i in dead] == ["AdverseEvent"]
    versions = {r["id"]: r["meta"]["versionId"] for r in case.ehr.all("MedicationAdministration")}
    for _ in range(3):
        case.clock.advance()
        sync_once(case.sync, trigger="cli")
    again = {r["id"]: r["meta"]["versionId"] for r in case.ehr.all("MedicationAdministration")}
    assert again == versions
    held = case.runtime.outbox.listed(("waiting",), 10)
    assert [i.resource_type for i in held] == ["MedicationAdministration"]


def lift_the_rejection_and_replay(case: Case) -> None:
    case.ehr.control("DELETE", "/reject")
    assert case.runtime.outbox.requeue(case.clock(), ["dead"]) == 1


def parked_for_the_hour(case: Case) -> None:
    case.clock.advance()
    report = sync_once(case.sync, trigger="cli")
    assert report.status == "failed" and report.resume_at is not None
    assert report.resume_at >= case.clock() + timedelta(seconds=3600)
    assert all(wait <= case.sync.settings.ehr_retry_max_wait_seconds for wait in case.slept)
    tried = [i for i in case.runtime.outbox.listed(("pending",), 100) if i.attempts]
    assert tried
    assert all(i.next_attempt_at >= case.clock() + timedelta(seconds=3600) for i in tried)


def nothing_reached_the_decoy(case: Case) -> None:
    assert case.ehr.reached_decoy()["requests"] == {}


def nothing_skipped(case: Case) -> None:
    counts = case.runtime.outbox.counts()
    assert counts["skipped"] == 0 and counts["dead"] == 0


def quick_despite_trickling(case: Case) -> None:
    assert case.took < 5 * CLIENT_TIMEOUT + 2, case.took  # the deadline, not a byte a second
    no_dead_letters(case)


def delivered_before(case: Case) -> None:
    """The day delivered while the EHR behaved; more records arrive before it misbehaves."""
    case.clock.now = datetime.now(UTC)
    report = sync_once(case.sync, trigger="cli")
    assert report.counts["delivered"] and report.status == "completed", report
    arrive(case.runtime, more_vitals()[-2:])


def html_is_no_answer(case: Case) -> None:
    """An HTML page answering a search is no answer: nothing is missing, nothing is created."""
    no_dead_letters(case)
    report = reconcile_once(case.sync)
    assert report.status == "failed" and report.counts["missing"] == 0, report


def nothing_sent(case: Case) -> None:
    nothing_skipped(case)
    assert in_the_ehr(case.ehr) == []


def no_dead_letters(case: Case) -> None:
    assert case.runtime.outbox.counts()["dead"] == 0


def no_copy_twice(case: Case) -> None:
    case.ehr.settle()
    for resource_type in DELIVERED_TYPES:
        assert set(case.ehr.identifier_counts(resource_type).values()) <= {1}, resource_type


def found_on_every_page(case: Case) -> None:
    report = reconcile_once(case.sync)
    assert report.counts["missing"] == 0 and report.counts["duplicated"] == 0, report.counts
    assert case.ehr.stats().get("GET pages", 0) > 0


# -- the matrix ---------------------------------------------------------------------------------

TIMEOUTS = {"ehr_timeout_seconds": CLIENT_TIMEOUT}
QUIRKS = {
    "late-commit": Quirk({"lateCommit": True}, EXIT_EHR, settings=TIMEOUTS, check=no_copy_twice),
    "late-commit-single-requests": Quirk(
        {"lateCommit": True}, EXIT_EHR, profile="single", settings=TIMEOUTS, check=no_copy_twice
    ),
    "transaction-answer-unreadable": Quirk(
        {"unreadableBundle": "empty"},
        0,
        more=(
            ({"unreadableBundle": "invalid"}, EXIT_EHR),
            ({"unreadableBundle": "entry-missing"}, 0),
        ),
        profile="plain",
        check=no_copy_twice,
    ),
    "searches-paged": Quirk({"pageSize": 2}, 0, check=found_on_every_page),
    "patient-merged": Quirk({}, 0, start=merge_patient(confirmable=True)),
    "patient-merged-survivor-unconfirmed": Quirk(
        {}, 0, start=merge_patient(confirmable=False), check=held_for_the_merge, end=add_survivor
    ),
    "no-location-single-requests": Quirk({"noLocation": True}, 0, profile="single"),
    "no-location-in-bundles": Quirk({"noLocation": True}, 0),
    "not-found-on-update": Quirk(
        {"notFoundOnUpdate": True}, 0, profile="plain", check=no_copy_twice
    ),
    "redirect-to-another-origin": Quirk(
        {"redirect": True}, EXIT_CONFIGURATION, check=nothing_reached_the_decoy
    ),
    "html-answered": Quirk(
        {"html": "writes"},
        EXIT_EHR,
        more=(({"html": True}, EXIT_EHR),),
        start=delivered_before,
        check=html_is_no_answer,
    ),
    "metadata-unreadable": Quirk(
        {"metadata": "empty"},
        EXIT_EHR,
        more=(({"metadata": "html"}, EXIT_EHR), ({"metadata": "invalid"}, EXIT_EHR)),
        check=nothing_skipped,
    ),
    "reference-to-a-dead-letter": Quirk(
        {},
        EXIT_REFUSED,
        start=reject_nausea,
        check=no_update_of_what_references_the_dead_letter,
        end=lift_the_rejection_and_replay,
    ),
    "retry-after-an-hour": Quirk({"retryAfter": 3600}, EXIT_EHR, check=parked_for_the_hour),
    "answers-trickled-cut-short-or-huge": Quirk(
        {"trickle": 20},
        EXIT_EHR,
        more=(({"cutShort": True}, EXIT_EHR), ({"hugeBody": 8 * 2**20}, EXIT_EHR)),
        settings={**TIMEOUTS, "ehr_max_response_bytes": 2**18, "ehr_breaker_failures": 1},
        check=quick_despite_trickling,
    ),
    "fhir-version-not-r4": Quirk(
        {"fhirVersion": "5.0.0"},
        EXIT_CONFIGURATION,
        more=(({"fhirVersion": "3.0.2"}, EXIT_CONFIGURATION),),
        check=nothing_sent,
    ),
    "odd-location": Quirk({"oddLocation": True}, 0, profile="single"),
    "forbidden": Quirk(
        {"forbidden": "writes"},
        EXIT_CONFIGURATION,
        more=(({"forbidden": "all"}, EXIT_CONFIGURATION),),
        check=no_dead_letters,
    ),
    "unavailable": Quirk({"unavailable": True}, EXIT_EHR, check=no_dead_letters),
}


@pytest.fixture
def case(
    runtime: Runtime,
    settings: Settings,
    ehr: SandboxEhr,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> Case:
    quirk = QUIRKS[request.node.callspec.params["name"]]
    ehr.reset(quirk.profile)
    overrides = {
        "sync_batch_size": 10,
        "ehr_retry_attempts": 2,
        "ehr_retry_max_wait_seconds": 0.001,
        "ehr_breaker_failures": 3,
        **quirk.settings,
    }
    quirky = settings.model_copy(update=overrides)
    for key, value in {"database_url": settings.database_url, **overrides}.items():
        monkeypatch.setenv(f"ADAPTER_{key.upper()}", str(value))
    monkeypatch.setenv("ADAPTER_MAPPINGS_DIR", str(settings.mappings_dir))
    monkeypatch.setenv("ADAPTER_EHR_BASE_URL", ehr.base)
    get_settings.cache_clear()
    request.addfinalizer(get_settings.cache_clear)
    clock = SteppingClock()
    slept: list[float] = []
    sync = Sync(
        quirky,
        runtime.store.engine,
        runtime.store,
        lambda: runtime.mapping.mapper.mappings.site,
        clock=clock,
        sleep=slept.append,
    )
    arrive(runtime, small_day())
    return Case(ehr, runtime, sync, clock, slept)


def cli(*arguments: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, ["sync", *arguments])
    return result.exit_code, result.output


@pytest.mark.parametrize("name", sorted(QUIRKS))
def test_exactly_once_against_a_misbehaving_ehr(case: Case, name: str) -> None:
    quirk = QUIRKS[name]
    if quirk.start:
        quirk.start(case)
    case.ehr.quirk(**quirk.server)

    # While the EHR misbehaves: `sync --once` (the command itself) says what happened, and so
    # does each run that meets another form of the misbehaviour.
    started = time.monotonic()
    code, output = cli("--once", "--quiet")
    case.took = time.monotonic() - started
    run = case.runtime.sync_runs.recent(1)[0]
    assert code == quirk.exit_code, (output, run)
    assert (run.status == "completed") == (code in (0, EXIT_REFUSED)), run
    for round, (server, expected) in enumerate(quirk.more):
        case.ehr.quirk(**server)
        arrive(case.runtime, more_vitals()[2 * round : 2 * round + 2])
        case.clock.advance()
        report = sync_once(case.sync, trigger="cli")
        assert exit_code(report) == expected, (server, report)
        assert (report.status == "completed") == (expected in (0, EXIT_REFUSED)), report
    if quirk.check:
        quirk.check(case)
    amend_a_heart_rate(case.runtime)
    case.clock.advance()
    case.ehr.settle()
    sync_once(case.sync, trigger="cli")

    # The quirk ends; the sync and reconciliation run again until nothing is left to do.
    case.ehr.quirk()
    case.ehr.settle()
    if quirk.end:
        quirk.end(case)
    reports = settle(case)
    checked = reconcile_once(case.sync)
    if checked.counts["different"] or checked.counts["missing"]:
        reports += settle(case)
        checked = reconcile_once(case.sync)

    expected = expected_in_ehr(case.runtime, quirk.profile)
    total = sum(expected.values())
    assert exit_code(reports[-1]) == 0 and reports[-1].status == "completed", reports[-1]
    assert exit_code(checked) == 0, checked
    assert {k: v for k, v in checked.counts.items() if v} == {"matching": total}, checked.counts
    assert_exactly_once(case.ehr, expected)
    assert_no_resource_under_an_inactive_patient(case.ehr)
    assert case.ehr.reached_decoy()["stored"].keys() <= {"Patient"}
    counts = case.runtime.outbox.counts()
    assert counts["delivered"] == total, (counts, _stuck(case.runtime))
    assert counts["skipped"] == not_for_ehr(case.runtime, quirk.profile), counts
    code, listed = cli("runs", "--limit", "100")
    recorded = case.runtime.sync_runs.recent(100)
    assert code == 0 and len(listed.strip().splitlines()) >= len(recorded)
    for run in recorded:
        assert f"{run.id}  " in listed and run.status in listed
        assert run.status != "failed" or (run.error and run.error in listed)


# -- helpers ------------------------------------------------------------------------------------


def settle(case: Case) -> list[SyncReport]:
    """Runs, two hours apart, until a run finds nothing due."""
    reports = []
    for _ in range(6):
        case.clock.advance()
        reports.append(sync_once(case.sync, trigger="cli"))
        if case.runtime.outbox.count_due(case.clock() + timedelta(hours=2), waiting=True) == 0:
            break
    return reports


def amend_a_heart_rate(runtime: Runtime) -> None:
    record = next(
        record for record, _ in _day() if record["id"] in small_ids() and "heart_rate" in record
    )
    record["revision"] += 1
    record["heart_rate"] = 58
    arrive(runtime, [orjson.dumps(record)])


def small_ids() -> set[str]:
    return {orjson.loads(line)["id"] for line in small_day()}


def in_the_ehr(ehr: SandboxEhr) -> list[dict[str, Any]]:
    return [resource for resource_type in DELIVERED_TYPES for resource in ehr.all(resource_type)]


def _patient_of(resource: dict[str, Any]) -> str | None:
    subject = resource.get("subject") or resource.get("patient") or {}
    reference = subject.get("reference")
    return str(reference).removeprefix("Patient/") if reference else None


def assert_exactly_once(ehr: SandboxEhr, expected: Counter[str]) -> None:
    for resource_type in DELIVERED_TYPES:
        copies = ehr.identifier_counts(resource_type)
        assert len(copies) == expected[resource_type], (resource_type, copies)
        assert set(copies.values()) <= {1}, (resource_type, copies)


def assert_no_resource_under_an_inactive_patient(ehr: SandboxEhr) -> None:
    patients = {p["id"]: p for p in ehr.all("Patient")}
    for resource in in_the_ehr(ehr):
        patient = patients.get(_patient_of(resource) or "")
        assert patient is not None and patient.get("active") is not False, resource["id"]
        assert patient["identifier"][0]["system"] == MRN_SYSTEM


def _stuck(runtime: Runtime) -> list[Any]:
    return [
        (i.resource_type, i.state, i.detail)
        for i in runtime.outbox.listed(("pending", "waiting", "dead", "skipped"), 10)
    ]


def test_an_ehr_announcing_a_version_the_site_accepts_is_delivered_to(
    runtime: Runtime, sync: Sync, ehr: SandboxEhr, settings_mappings: Path
) -> None:
    """`fhir_versions` in mappings/ehr.yaml: a site whose EHR announces R4B or R5 and takes R4
    resources says so, and the sync delivers."""
    ehr.quirk(fhirVersion="4.3.0")
    arrive(runtime, small_day())
    assert sync_once(sync, trigger="cli").status == "failed"

    (settings_mappings / "ehr.yaml").write_text('fhir_versions: ["4.0", "4.3"]\n')
    report = sync_once(sync, trigger="cli")

    assert report.status == "completed" and exit_code(report) == 0, report
    assert report.counts["delivered"] == sum(expected_in_ehr(runtime).values())
