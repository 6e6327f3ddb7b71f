"""Delivering one batch of the outbox to the EHR, in the kind of request each type's plan says,
so that the EHR ends up with exactly one copy of each resource, as its latest version says."""

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson

from adapter.mapping.config import EhrRules, Site
from adapter.store.outbox import Outbox, OutboxItem, Outcome, Pending
from adapter.store.records import RecordStore
from adapter.sync.capabilities import DeliveryPlan
from adapter.sync.client import EhrClient, EhrResponse
from adapter.sync.errors import PermanentEhrError, TemporaryEhrError
from adapter.sync.outgoing import (
    DROP,
    EhrCopy,
    adapter_identifier,
    ehr_copy,
    identifiers,
    patient_mrn,
)
from adapter.sync.patients import PatientFacts, PatientResolver, mismatch

Json = dict[str, Any]
PARTIAL = (
    "delivered without its references to resources not yet in the EHR; it is updated once they are"
)
LONGEST_BACKOFF = 3600.0


@dataclass(frozen=True)
class Prepared:
    """A pending item ready to send: the EHR's copy, and where it goes."""

    pending: Pending
    plan: DeliveryPlan
    copy: EhrCopy
    identifier: tuple[str, str] | None
    ehr_id: str | None
    ehr_version: str | None
    partial: bool
    """References to resources that come later were left out; an update brings them."""
    bundled: bool
    """References to resources of the same transaction Bundle are given as its urn:uuids."""

    @property
    def item(self) -> OutboxItem:
        return self.pending.item


@dataclass
class Delivery:
    """One run's deliveries: what it learnt of the EHR's ids is kept for the rest of the run."""

    client: EhrClient
    outbox: Outbox
    records: RecordStore
    patients: PatientResolver
    plans: dict[str, DeliveryPlan]
    site: Site
    rules: EhrRules
    clock: Callable[[], datetime]
    known: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    """Adapter id -> (EHR id, EHR version) of what this run delivered."""
    partial: set[str] = field(default_factory=set)
    """Adapter ids this run delivered without some of their references."""
    wants_if_match: set[str] = field(default_factory=set)

    def deliver(self, batch: Sequence[Pending]) -> list[Outcome]:
        """Outcomes for every item of the batch; raises only when the whole run must stop."""
        try:
            return self._deliver(batch)
        except TemporaryEhrError as error:
            # A lookup before sending failed: the EHR is busy; the batch is tried again later.
            return [self._temporary(p.item, error) for p in batch]
        except PermanentEhrError as error:
            detail = {"reason": f"a lookup before sending was refused: {error.reason}"}
            return [self._settle(p.item, "waiting", detail) for p in batch]

    def _deliver(self, batch: Sequence[Pending]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        ready: list[tuple[Pending, Json, str | None]] = []
        resources = {p.item.resource_id: orjson.loads(p.content) for p in batch}
        patient_refs = self._patients(batch, resources, outcomes)
        for pending in batch:
            item = pending.item
            plan = self.plans.get(item.resource_type)
            if plan is None or not plan.deliver:
                reason = plan.reason if plan else "the adapter does not deliver this type"
                outcomes.append(self._settle(item, "skipped", {"reason": reason}, tried=False))
            elif item.resource_id in patient_refs:
                ready.append((pending, resources[item.resource_id], patient_refs[item.resource_id]))
        in_batch = {pending.item.resource_id for pending, _, _ in ready}
        targets = self.outbox.items(
            self._references(resources[p.item.resource_id] for p, _, _ in ready)
        )
        by_mode: dict[str, list[Prepared]] = {"transaction": [], "batch": [], "single": []}
        for pending, resource, patient in ready:
            plan = self.plans[pending.item.resource_type]
            prepared, waits = self._prepare(pending, resource, patient, plan, in_batch, targets)
            if waits:
                outcomes.append(
                    self._settle(pending.item, "waiting", {"reason": waits}, tried=False)
                )
            else:
                by_mode[plan.mode].append(prepared)  # type: ignore[arg-type]
        searched = self._find_existing(
            [
                p
                for mode, group in by_mode.items()
                for p in group
                if not p.ehr_id and (mode == "transaction" or not p.plan.conditional_create)
            ]
        )
        outcomes += self._transaction(by_mode["transaction"], searched)
        outcomes += self._singles(by_mode["batch"] + by_mode["single"], searched)
        return outcomes

    # -- what must be known before sending --------------------------------------------------

    def _patients(
        self, batch: Sequence[Pending], resources: dict[str, Json], outcomes: list[Outcome]
    ) -> dict[str, str | None]:
        """The EHR reference of each item's patient; items whose patient is not settled wait."""
        mrn_system = self.site.identifier_systems.mrn
        mrns = {
            p.item.resource_id: patient_mrn(resources[p.item.resource_id], mrn_system)
            for p in batch
            if self.plans.get(p.item.resource_type, None)
            and self.plans[p.item.resource_type].deliver
        }
        matches = self.patients.resolve({m for m in mrns.values() if m}, self.clock())
        facts = self.records.parsed_current(
            (p.source_type, p.source_id) for p in batch if mrns.get(p.item.resource_id)
        )
        refs: dict[str, str | None] = {}
        for pending in batch:
            resource_id = pending.item.resource_id
            if resource_id not in mrns:
                continue
            mrn = mrns[resource_id]
            if mrn is None:
                refs[resource_id] = None
                continue
            patient = facts.get((pending.source_type, pending.source_id), {}).get("patient", {})
            problem = mismatch(
                matches[mrn], PatientFacts(patient.get("family"), patient.get("birth_date"))
            )
            if problem:
                detail = {"reason": problem, "patient_mrn": mrn}
                outcomes.append(self._settle(pending.item, "waiting", detail, tried=False))
            else:
                refs[resource_id] = f"Patient/{matches[mrn].ehr_id}"
        return refs

    @staticmethod
    def _references(resources: Any) -> set[str]:
        found: set[str] = set()

        def walk(value: Any) -> None:
            if isinstance(value, dict):
                reference = value.get("reference")
                if isinstance(reference, str) and reference.count("/") == 1:
                    found.add(reference.split("/")[1])
                for item in value.values():
                    walk(item)
            elif isinstance(value, list):
                for item in value:
                    walk(item)

        for resource in resources:
            walk(resource)
        return found

    def _prepare(
        self,
        pending: Pending,
        resource: Json,
        patient: str | None,
        plan: DeliveryPlan,
        in_batch: set[str],
        targets: dict[str, OutboxItem],
    ) -> tuple[Prepared | None, str | None]:
        item = pending.item
        waits: list[str] = []
        later: list[str] = []
        bundled: list[str] = []

        def resolve(resource_type: str, target_id: str) -> str | object:
            known = self.known.get(target_id)
            target = targets.get(target_id)
            if known or (target and target.ehr_id):
                return f"{resource_type}/{known[0] if known else target.ehr_id}"  # type: ignore[union-attr]
            if target_id in in_batch and plan.mode == "transaction":
                target_plan = self.plans.get(resource_type)
                if target_plan and target_plan.mode == "transaction" and target_plan.deliver:
                    bundled.append(target_id)
                    return f"urn:uuid:{target_id}"
            target_plan = self.plans.get(resource_type)
            if (
                target is None
                or target.state == "skipped"
                or not (target_plan and target_plan.deliver)
            ):
                return DROP
            if target.key > item.key or target_id in in_batch:
                later.append(target_id)
                return DROP
            waits.append(f"{resource_type}/{target_id}")
            return DROP

        copy = ehr_copy(resource, patient, resolve, self.rules.extra_codings)
        if waits:
            return None, ("waits for " + ", ".join(sorted(waits)) + " to be delivered first")
        known = self.known.get(item.resource_id)
        ehr_id, ehr_version = known if known else (item.ehr_id, item.ehr_version)
        identifier = adapter_identifier(resource, self.site.identifier_systems.records)
        prepared = Prepared(
            pending, plan, copy, identifier, ehr_id, ehr_version, bool(later), bool(bundled)
        )
        return prepared, None

    def _find_existing(self, prepared: list[Prepared]) -> dict[str, tuple[str, str | None] | str]:
        """Search the EHR by identifier before creating, where it has no conditional create:
        adapter id -> (EHR id, version) when one copy exists, or why it cannot be told."""
        found: dict[str, tuple[str, str | None] | str] = {}
        by_type: dict[str, list[tuple[Prepared, tuple[str, str]]]] = {}
        for p in prepared:
            if p.identifier:
                by_type.setdefault(p.item.resource_type, []).append((p, p.identifier))
        for resource_type, group in by_type.items():
            for start in range(0, len(group), 50):
                chunk = group[start : start + 50]
                values = ",".join(f"{s}|{v}".replace(",", r"\,") for _, (s, v) in chunk)
                query = urlencode({"identifier": values, "_count": str(4 * len(chunk))})
                answer = self.client.request("GET", f"{resource_type}?{query}")
                copies: dict[tuple[str, str], list[Json]] = {}
                for entry in (answer.body or {}).get("entry", []):
                    resource = entry.get("resource", {})
                    for identifier in identifiers(resource):
                        copies.setdefault(identifier, []).append(resource)
                for p, identifier in chunk:
                    matches = copies.get(identifier, [])
                    if len(matches) == 1:
                        found[p.item.resource_id] = (
                            str(matches[0]["id"]),
                            matches[0].get("meta", {}).get("versionId"),
                        )
                    elif len(matches) > 1:
                        found[p.item.resource_id] = (
                            f"the EHR holds {len(matches)} resources with this resource's "
                            "identifier; remove the duplicates there, then replay"
                        )
        return found

    # -- sending -----------------------------------------------------------------------------

    def _transaction(
        self, prepared: list[Prepared], searched: dict[str, tuple[str, str | None] | str]
    ) -> list[Outcome]:
        outcomes = []
        for p in prepared:
            problem = searched.get(p.item.resource_id)
            if isinstance(problem, str):
                outcomes.append(self._settle(p.item, "dead", {"reason": problem}))
        prepared = [p for p in prepared if not isinstance(searched.get(p.item.resource_id), str)]
        if not prepared:
            return outcomes
        entries: list[Json] = []
        for p in prepared:
            request, body = self._request(p, searched, conditional=False)
            entries.append(
                {"fullUrl": f"urn:uuid:{p.item.resource_id}", "resource": body, "request": request}
            )
        bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
        try:
            answer = self.client.request("POST", "", body=bundle)
        except TemporaryEhrError as error:
            return outcomes + [self._temporary(p.item, error) for p in prepared]
        except PermanentEhrError:
            # One entry spoils a transaction: single requests find which, and deliver the rest.
            return outcomes + self._singles(prepared, searched)
        responses = (answer.body or {}).get("entry", [])
        if len(responses) != len(prepared):
            return outcomes + self._singles(prepared, searched)
        for p, entry in zip(prepared, responses, strict=True):
            ehr = _identity(p.item.resource_type, entry.get("resource"), entry.get("response", {}))
            outcomes.append(self._delivered(p, ehr))
        return outcomes

    def _singles(
        self, prepared: list[Prepared], searched: dict[str, tuple[str, str | None] | str]
    ) -> list[Outcome]:
        outcomes = []
        for p in prepared:
            try:
                outcomes.append(self._single(p, searched))
            except TemporaryEhrError as error:
                outcomes.append(self._temporary(p.item, error))
            except PermanentEhrError as error:
                detail = {"reason": error.reason, "status": error.status, "outcome": error.outcome}
                outcomes.append(self._settle(p.item, "dead", detail))
        return outcomes

    def _single(self, p: Prepared, searched: dict[str, tuple[str, str | None] | str]) -> Outcome:
        problem = searched.get(p.item.resource_id)
        if isinstance(problem, str):
            return self._settle(p.item, "dead", {"reason": problem})
        p = self._rebuilt(p)
        request, body = self._request(p, searched, conditional=True)
        headers = {
            name: request[key]
            for key, name in (("ifNoneExist", "If-None-Exist"), ("ifMatch", "If-Match"))
            if key in request
        }
        try:
            answer = self.client.request(
                request["method"], request["url"], body=body, headers=headers
            )
        except PermanentEhrError as error:
            if request["method"] != "PUT" or error.status not in (412, 428):
                raise
            # The EHR's copy moved on, or the EHR wants If-Match: read its version, try once more.
            if error.status == 428:
                self.wants_if_match.add(p.item.resource_type)
            current = self.client.request("GET", request["url"])
            version = _version(current)
            headers = {"If-Match": f'W/"{version}"'} if version else {}
            answer = self.client.request("PUT", request["url"], body=body, headers=headers)
        return self._delivered(p, _identity(p.item.resource_type, answer.body, _response(answer)))

    def _rebuilt(self, p: Prepared) -> Prepared:
        """A single request sent after others of its batch: the references they have just
        delivered can now be given."""
        if not p.partial and not p.bundled:
            return p
        resource = orjson.loads(p.pending.content)
        body = p.copy.body
        patient = (body.get("subject") or body.get("patient") or {}).get("reference")
        targets = self.outbox.items(self._references([resource]))
        rebuilt, _ = self._prepare(p.pending, resource, patient, p.plan, set(), targets)
        return rebuilt or p

    def _request(
        self, p: Prepared, searched: dict[str, tuple[str, str | None] | str], conditional: bool
    ) -> tuple[Json, Json]:
        """The request for one item: an update of the EHR's copy where one is known, else a
        create (conditional where asked). Transaction Bundles carry no conditional creates:
        EHRs cap them (Medplum allows 8 per transaction), so their creates are preceded by a
        search by identifier instead."""
        body = dict(p.copy.body)
        resource_type = p.item.resource_type
        ehr_id, ehr_version = p.ehr_id, p.ehr_version
        existing = searched.get(p.item.resource_id)
        if ehr_id is None and isinstance(existing, tuple):
            ehr_id, ehr_version = existing
        if ehr_id:
            body["id"] = ehr_id
            request: Json = {"method": "PUT", "url": f"{resource_type}/{ehr_id}"}
            if ehr_version and (p.plan.if_match or resource_type in self.wants_if_match):
                request["ifMatch"] = f'W/"{ehr_version}"'
            return request, body
        request = {"method": "POST", "url": resource_type}
        if conditional and p.plan.conditional_create and p.identifier:
            request["ifNoneExist"] = urlencode({"identifier": "|".join(p.identifier)})
        return request, body

    # -- outcomes ----------------------------------------------------------------------------

    def _delivered(self, p: Prepared, ehr: tuple[str | None, str | None]) -> Outcome:
        ehr_id, ehr_version = ehr
        if ehr_id is None:
            ehr_id, ehr_version = p.ehr_id, p.ehr_version
        if ehr_id is None:
            detail = {"reason": "the EHR accepted the resource but did not say its id"}
            return self._settle(p.item, "dead", detail)
        self.known[p.item.resource_id] = (ehr_id, ehr_version)
        if p.partial:
            self.partial.add(p.item.resource_id)
            return Outcome(
                p.item.resource_id,
                p.item.version_id,
                "pending",
                self.clock(),
                {"reason": PARTIAL, "left_out": p.copy.dropped},
                ehr_id,
                ehr_version,
                attempted=False,
            )
        return Outcome(
            p.item.resource_id,
            p.item.version_id,
            "delivered",
            self.clock(),
            None,
            ehr_id,
            ehr_version,
        )

    def _temporary(self, item: OutboxItem, error: TemporaryEhrError) -> Outcome:
        backoff = min(LONGEST_BACKOFF, 30.0 * 2**item.attempts) * random.uniform(0.5, 1.0)
        wait = max(backoff, error.retry_after or 0.0)
        detail = {"reason": error.reason, "status": error.status}
        return Outcome(
            item.resource_id,
            item.version_id,
            "pending",
            self.clock() + timedelta(seconds=wait),
            detail,
        )

    def _settle(self, item: OutboxItem, state: str, detail: Json, tried: bool = True) -> Outcome:
        return Outcome(
            item.resource_id, item.version_id, state, self.clock(), detail, attempted=tried
        )


def _response(answer: EhrResponse) -> Json:
    return {"location": answer.headers.get("Location"), "etag": answer.headers.get("ETag")}


def _version(answer: EhrResponse) -> str | None:
    etag = answer.headers.get("ETag") or ""
    if etag:
        return etag.removeprefix("W/").strip('"')
    version = (answer.body or {}).get("meta", {}).get("versionId")
    return str(version) if version else None


def _identity(
    resource_type: str, resource: Json | None, response: Json
) -> tuple[str | None, str | None]:
    """The EHR's id and version of what it stored: from the returned resource, else from the
    Location (`[base]/Type/id/_history/vid`) and ETag."""
    if resource and resource.get("resourceType") == resource_type and resource.get("id"):
        return str(resource["id"]), resource.get("meta", {}).get("versionId")
    location = (response.get("location") or "").split("/")
    if resource_type in location:
        at = location.index(resource_type)
        ehr_id = location[at + 1] if len(location) > at + 1 else None
        version = location[at + 3] if len(location) > at + 3 else None
        etag = response.get("etag")
        if version is None and etag:
            version = etag.removeprefix("W/").strip('"')
        return ehr_id, version
    return None, None
