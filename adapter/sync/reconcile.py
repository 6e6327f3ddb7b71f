"""Reconciliation: what the EHR holds for the adapter's identifiers, against what was delivered.
A copy that is missing, or says something else than the latest version, is queued again."""

from collections.abc import Callable
from typing import Any

import orjson

from adapter.mapping.config import load_ehr_rules
from adapter.store.outbox import OutboxItem, Pending, kind_of
from adapter.sync.ehr_ids import copies_by_identifier
from adapter.sync.engine import Sync, SyncReport, leased_run
from adapter.sync.outgoing import (
    DROP,
    Resolver,
    adapter_identifier,
    ehr_body,
    patient_mrn,
    references,
    withdrawn,
)

Json = dict[str, Any]
CHUNK = 200


def reconcile_once(sync: Sync, progress: Callable[[int], None] | None = None) -> SyncReport:
    """Check every delivered resource against the EHR's copy; counts: matching, missing,
    different, duplicated (several copies: left for a person, reported), requeued."""
    return leased_run(sync, "reconcile", lambda report: _reconcile(sync, report, progress))


def _reconcile(sync: Sync, report: SyncReport, progress: Callable[[int], None] | None) -> None:
    rules = load_ehr_rules(sync.settings.mappings_dir)
    plans = sync.plans(sync.clock(), rules)
    site = sync.site()
    after = None
    while True:
        batch = sync.outbox.delivered(after, CHUNK)
        if not batch:
            break
        after = batch[-1].item.key
        resources = {p.item.resource_id: orjson.loads(p.content) for p in batch}
        targets = sync.outbox.items(references(p.content for p in batch))
        mrns = {patient_mrn(r, site.identifier_systems.mrn) for r in resources.values()}
        patients = sync.patient_matches.get(m for m in mrns if m)
        missing: list[str] = []
        different: list[str] = []
        moved: dict[str, tuple[str | None, str | None]] = {}
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
            for pending, identifier in group:
                found = copies.get(identifier, [])
                resource = resources[pending.item.resource_id]
                plan = plans[kind_of(pending.item)]
                if plan.withdraw_by_delete and withdrawn(pending.content, site.local_code_system):
                    # Withdrawn by a DELETE: a copy still in the EHR is deleted again.
                    if found:
                        moved[pending.item.resource_id] = (str(found[0]["id"]), None)
                        different.append(pending.item.resource_id)
                    else:
                        report.counts["matching"] += 1
                elif not found:
                    missing.append(pending.item.resource_id)
                elif len(found) > 1:
                    report.counts["duplicated"] += 1
                else:
                    mrn = patient_mrn(resource, site.identifier_systems.mrn)
                    match = patients.get(mrn) if mrn else None
                    patient = f"Patient/{match.ehr_id}" if match and match.ehr_id else None
                    resolve = _resolver(targets)
                    ours, _ = ehr_body(resource, patient, resolve, rules.extra_codings)
                    theirs = found[0]
                    if theirs.get("id") != pending.item.ehr_id:
                        version = theirs.get("meta", {}).get("versionId")
                        moved[pending.item.resource_id] = (str(theirs["id"]), version)
                    if _same(ours, theirs) and theirs.get("id") == pending.item.ehr_id:
                        report.counts["matching"] += 1
                    else:
                        different.append(pending.item.resource_id)
        if moved or missing:
            sync.outbox.set_ehr_ids({**moved, **{i: (None, None) for i in missing}})
        if missing:
            reason = "reconciliation found no copy in the EHR"
            sync.outbox.resend(sync.clock(), missing, {"reason": reason})
        if different:
            reason = "reconciliation found the EHR's copy different from the latest version"
            sync.outbox.resend(sync.clock(), different, {"reason": reason})
        report.counts["missing"] += len(missing)
        report.counts["different"] += len(different)
        if progress:
            progress(len(batch))


def _resolver(targets: dict[str, OutboxItem]) -> Resolver:
    """References as the EHR holds them: to the EHR's copies of the targets."""

    def resolve(kind: str, target_id: str) -> str | object:
        target = targets.get(target_id)
        return f"{kind}/{target.ehr_id}" if target and target.ehr_id else DROP

    return resolve


def _same(ours: Json, theirs: Json) -> bool:
    """Whether the EHR's copy says what ours says: every element we send, unchanged (the EHR
    may add its own, such as meta or a narrative)."""
    return all(theirs.get(key) == value for key, value in ours.items() if key != "meta")
