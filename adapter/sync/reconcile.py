"""Reconciliation: what the EHR holds for the adapter's identifiers, against what was delivered.
A copy that is missing, or says something else than the latest version, is queued again; one
changed or deleted by someone at the EHR is kept or put right as mappings/ehr.yaml says; extra
copies that provably are the adapter's own writes stored twice are removed."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import orjson

from adapter.mapping.config import EhrRules
from adapter.store.outbox import DELIVERY_RANK, OTHER_RANK, OutboxItem, Outcome, Pending, kind_of
from adapter.sync.capabilities import DeliveryPlan, deletable, plan_delivery
from adapter.sync.delivery import deleted_in_ehr, edited_in_ehr
from adapter.sync.ehr_ids import copies_by_identifier
from adapter.sync.encounters import EhrEncounters
from adapter.sync.engine import Sync, SyncReport, leased_run
from adapter.sync.errors import PermanentEhrError, TemporaryEhrError
from adapter.sync.outgoing import (
    DROP,
    Resolver,
    adapter_identifier,
    ehr_body,
    patient_mrn,
    provably_ours,
    references,
    says_the_same,
    withdrawn,
)
from adapter.sync.patients import MATCHED, PatientResolver

Json = dict[str, Any]
CHUNK = 200


@dataclass
class Findings:
    """What one chunk of delivered resources showed, to record at once."""

    missing: list[str] = field(default_factory=list)
    different: list[str] = field(default_factory=list)
    seen: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)
    """Adapter id -> the EHR's id and version found, where they differ from those recorded."""
    kept: list[Outcome] = field(default_factory=list)
    """Copies changed or deleted at the EHR, kept there: dead letters for a person."""


def reconcile_once(sync: Sync, progress: Callable[[int], None] | None = None) -> SyncReport:
    """Check every delivered resource against the EHR's copy; counts: matching, missing,
    different, duplicated (extra copies left for a person), duplicates_removed, edited_in_ehr
    and deleted_in_ehr (kept as ehr.yaml says, listed as dead letters)."""
    return leased_run(sync, "reconcile", lambda report: _reconcile(sync, report, progress))


def _reconcile(sync: Sync, report: SyncReport, progress: Callable[[int], None] | None) -> None:
    rules = sync.ehr_rules()
    statement = sync.statement(sync.clock(), rules)
    plans = plan_delivery(statement, rules)
    site = sync.site()
    # Patients are asked of the EHR afresh: a merge there since delivery moves the copies.
    patients = PatientResolver(
        sync.client, sync.patient_matches, site.identifier_systems.mrn, timedelta(0)
    )
    system = rules.encounters.identifier_system
    encounters = (
        EhrEncounters(sync.client, sync.outbox, system)
        if rules.encounters.use == "ehr" and system
        else None
    )
    strays: list[tuple[int, str, str]] = []
    after = None
    while True:
        batch = sync.outbox.delivered(after, CHUNK)
        if not batch:
            break
        after = batch[-1].item.key
        resources = {p.item.resource_id: orjson.loads(p.content) for p in batch}
        targets = sync.outbox.items(references(p.content for p in batch))
        if encounters is not None:
            encounters.look_up(p.content for p in batch)
        mrns = {patient_mrn(r, site.identifier_systems.mrn) for r in resources.values()}
        matches = patients.resolve({m for m in mrns if m}, sync.clock())
        findings = Findings()
        by_type: dict[str, list[tuple[Pending, tuple[str, str]]]] = {}
        for pending in batch:
            plan = plans.get(kind_of(pending.item))
            identifier = adapter_identifier(
                resources[pending.item.resource_id], site.identifier_systems.records
            )
            if plan is None or not plan.deliver or identifier is None:
                continue
            by_type.setdefault(pending.item.resource_type, []).append((pending, identifier))
        for resource_type, group in by_type.items():
            copies = copies_by_identifier(sync.client, resource_type, [i for _, i in group])
            removable = resource_type in deletable(statement)
            for pending, identifier in group:
                resource = resources[pending.item.resource_id]
                mrn = patient_mrn(resource, site.identifier_systems.mrn)
                match = matches.get(mrn) if mrn else None
                patient = f"Patient/{match.ehr_id}" if match and match.state == MATCHED else None
                ours, _ = ehr_body(
                    resource, patient, _resolver(targets, encounters), rules.extra_codings
                )
                found = copies.get(identifier, [])
                plan = plans[kind_of(pending.item)]
                if _withdrawn_by_delete(plan, pending, site.local_code_system):
                    # Withdrawn by a DELETE: a copy still in the EHR is deleted again.
                    if found:
                        findings.seen[pending.item.resource_id] = (str(found[0]["id"]), None)
                        findings.different.append(pending.item.resource_id)
                    else:
                        report.counts["matching"] += 1
                    continue
                check = Check(sync, pending.item, resource, ours, rules, findings, report)
                strays += check.against(found, removable)
        _record(sync, findings, report)
        if progress:
            progress(len(batch))
    _remove(sync, strays, report)


def _withdrawn_by_delete(plan: DeliveryPlan, pending: Pending, local_code_system: str) -> bool:
    return plan.withdraw_by_delete and withdrawn(pending.content, local_code_system)


@dataclass
class Check:
    """One delivered resource against what the EHR holds for its identifier."""

    sync: Sync
    item: OutboxItem
    resource: Json
    ours: Json
    """Our copy as the EHR should hold it."""
    rules: EhrRules
    findings: Findings
    report: SyncReport

    def against(self, found: list[Json], removable: bool) -> list[tuple[int, str, str]]:
        """Record what the copies found say; returns the extra copies to delete (rank, type,
        id): those that provably are the adapter's own, where the EHR allows DELETE."""
        if not found:
            at_id = self._at_recorded_id()
            if at_id == "gone" and self.rules.deleted_in_ehr == "keep":
                self.findings.kept.append(self._dead(deleted_in_ehr()))
                self.report.counts["deleted_in_ehr"] += 1
                return []
            if not isinstance(at_id, dict):
                self.findings.missing.append(self.item.resource_id)
                return []
            found = [at_id]
        theirs = self._ours_among(found)
        if theirs is None:
            self.report.counts["duplicated"] += 1
            return []
        strays = []
        for extra in (c for c in found if c is not theirs):
            mine = provably_ours([extra], self.resource, self.rules.extra_codings) is not None
            if mine and removable:
                rank = DELIVERY_RANK.get(self.item.resource_type, OTHER_RANK)
                strays.append((rank, self.item.resource_type, str(extra["id"])))
            else:
                self.report.counts["duplicated"] += 1
        self._compare(theirs)
        return strays

    def _ours_among(self, copies: list[Json]) -> Json | None:
        """The copy to hold the resource: the only one, the one whose id was recorded, or the
        first stored when every copy says what the adapter sends."""
        if len(copies) == 1:
            return copies[0]
        recorded = next((c for c in copies if c.get("id") == self.item.ehr_id), None)
        return recorded or provably_ours(copies, self.resource, self.rules.extra_codings)

    def _at_recorded_id(self) -> Json | str:
        """What the EHR holds at the recorded id when a search by identifier finds nothing: the
        copy (someone removed the adapter's identifier there), `gone` (410: deleted there) or
        `absent`."""
        if not self.item.ehr_id:
            return "absent"
        try:
            answer = self.sync.client.request(
                "GET", f"{self.item.resource_type}/{self.item.ehr_id}"
            )
        except PermanentEhrError as error:
            return "gone" if error.status == 410 else "absent"
        body = answer.body or {}
        return body if body.get("resourceType") == self.item.resource_type else "absent"

    def _compare(self, theirs: Json) -> None:
        item, findings = self.item, self.findings
        ehr_id = str(theirs["id"])
        stored = theirs.get("meta", {}).get("versionId")
        version = str(stored) if stored else (item.ehr_version if ehr_id == item.ehr_id else None)
        if (ehr_id, version) != (item.ehr_id, item.ehr_version):
            findings.seen[item.resource_id] = (ehr_id, version)
        if says_the_same(self.ours, theirs):
            if ehr_id == item.ehr_id:
                self.report.counts["matching"] += 1
            else:
                findings.different.append(item.resource_id)
            return
        edited = ehr_id == item.ehr_id and version and item.ehr_version != version
        if edited and item.ehr_version and self.rules.edited_in_ehr == "keep":
            # Someone changed the copy at the EHR since the sync wrote it: kept, for review.
            findings.kept.append(self._dead(edited_in_ehr(version)))
            findings.seen.pop(item.resource_id, None)
            self.report.counts["edited_in_ehr"] += 1
            return
        findings.different.append(item.resource_id)

    def _dead(self, detail: Json) -> Outcome:
        item = self.item
        return Outcome(
            item.resource_id, item.version_id, "dead", self.sync.clock(), detail, attempted=False
        )


def _record(sync: Sync, findings: Findings, report: SyncReport) -> None:
    if findings.seen or findings.missing:
        sync.outbox.set_ehr_ids({**findings.seen, **{i: (None, None) for i in findings.missing}})
    if findings.missing:
        reason = "reconciliation found no copy in the EHR"
        sync.outbox.resend(sync.clock(), findings.missing, {"reason": reason})
    if findings.different:
        reason = "reconciliation found the EHR's copy different from the latest version"
        sync.outbox.resend(sync.clock(), findings.different, {"reason": reason})
    if findings.kept:
        sync.outbox.record(findings.kept, sync.clock())
    report.counts["missing"] += len(findings.missing)
    report.counts["different"] += len(findings.different)


def _remove(sync: Sync, strays: list[tuple[int, str, str]], report: SyncReport) -> None:
    """Delete the extra copies that provably are the adapter's own, those that reference others
    first; what the EHR refuses to delete stays, counted as duplicated."""
    for _, resource_type, ehr_id in sorted(strays, reverse=True):
        try:
            sync.client.request("DELETE", f"{resource_type}/{ehr_id}")
        except (PermanentEhrError, TemporaryEhrError):
            report.counts["duplicated"] += 1
        else:
            report.counts["duplicates_removed"] += 1


def _resolver(targets: dict[str, OutboxItem], encounters: EhrEncounters | None) -> Resolver:
    """References as the EHR holds them: to the EHR's copies of the targets, and to the EHR's
    own Encounters where its visits are its own."""

    def resolve(kind: str, target_id: str) -> str | object:
        if kind == "Encounter" and encounters is not None:
            return encounters.reference(target_id) or DROP
        target = targets.get(target_id)
        return f"{kind}/{target.ehr_id}" if target and target.ehr_id else DROP

    return resolve
