"""Delivering one batch of the outbox to the EHR, in the kind of request each type's plan says,
so that the EHR ends up with exactly one copy of each resource, as its latest version says.

A create is never sent twice blindly: when a request that creates may have reached the EHR
and no answer came back, the EHR is searched for the adapter's identifiers before it is sent
again, and what is found there is updated instead."""

import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlencode

import orjson

from adapter.mapping.config import EhrRules, Site
from adapter.store.outbox import Outbox, OutboxItem, Outcome, Pending, kind_of
from adapter.store.records import RecordStore
from adapter.sync.capabilities import DeliveryPlan
from adapter.sync.client import TEMPORARY_STATUSES, EhrClient, EhrResponse
from adapter.sync.ehr_ids import (
    EhrId,
    answer_of,
    copies_by_identifier,
    duplicates,
    identity,
    version_of,
)
from adapter.sync.errors import EhrError, PermanentEhrError, TemporaryEhrError
from adapter.sync.outgoing import (
    DROP,
    EhrCopy,
    StoredText,
    adapter_identifier,
    ehr_copy,
    references,
    text_copy,
    withdrawn,
)
from adapter.sync.patients import PatientResolver, RecordFacts, patient_references

Json = dict[str, Any]
PARTIAL = (
    "delivered without its references to resources not yet in the EHR; it is updated once they are"
)
DELETED = "withdrawn by the clinic: the EHR's copy was deleted"
NEVER_DELIVERED = "withdrawn by the clinic before it reached the EHR: nothing to delete"
LONGEST_BACKOFF = 3600.0
MINIMAL = {"Prefer": "return=minimal"}
"""Sent with Bundles: the sync needs only each entry's status, location and ETag, not the EHR's
copy of every resource back (FHIR R4 http.html, "Managing Return Content"). An EHR that returns
the resources all the same is read as before."""


@dataclass(frozen=True)
class Prepared:
    """A pending item ready to send: the EHR's copy, and where it goes."""

    pending: Pending
    plan: DeliveryPlan
    copy: EhrCopy
    partial: bool
    """References to resources that come later were left out; an update brings them."""
    bundled: bool
    """References to resources of the same transaction Bundle are given as its urn:uuids."""

    @property
    def item(self) -> OutboxItem:
        return self.pending.item


@dataclass
class Staged:
    """A batch read and checked: the outcomes already settled (skipped, held, refused), and
    the items ready to send with what sending them needs."""

    batch: Sequence[Pending]
    settled: list[Outcome]
    ready: list[Pending] = field(default_factory=list)
    texts: dict[str, StoredText] = field(default_factory=dict)
    patients: dict[str, str | None] = field(default_factory=dict)
    targets: dict[str, OutboxItem] = field(default_factory=dict)


@dataclass
class Delivery:
    """One run's deliveries: what it learns of the EHR's ids is kept for the rest of the run."""

    client: EhrClient
    outbox: Outbox
    records: RecordStore
    patients: PatientResolver
    plans: dict[str, DeliveryPlan]
    site: Site
    rules: EhrRules
    clock: Callable[[], datetime]
    known: dict[str, EhrId] = field(default_factory=dict)
    """Adapter id -> the EHR's id and version, as far as this run has learnt."""
    partial: set[str] = field(default_factory=set)
    """Adapter ids this run delivered without some of their references."""
    wants_if_match: set[str] = field(default_factory=set)
    marked: set[str] = field(default_factory=set)
    """Adapter ids whose create this run has noted in the outbox (`sent_at`) already."""
    facts: RecordFacts = field(init=False)

    def __post_init__(self) -> None:
        self.facts = RecordFacts(self.records)

    def may_create(self, batch: Sequence[Pending]) -> list[str]:
        """The items of a batch that a delivery could create (no EHR id known): the run notes
        them in the outbox, with the outcomes answered so far, before the batch is sent; then
        tells `noted`."""
        return [p.item.resource_id for p in batch if self._ehr_id(p.item) is None]

    def read_facts(self, batches: Sequence[Pending]) -> None:
        """Read the patient facts of these items' records in one go, before their batches are
        staged one by one (each staging would read its own: a round trip each)."""
        self.facts.of((p.source_type, p.source_id) for p in batches)

    def noted(self, ids: Iterable[str]) -> None:
        """These creates are noted in the outbox (committed): sending them notes nothing more."""
        self.marked.update(ids)

    def _mark_sent(self, ids: list[str]) -> None:
        unmarked = [i for i in ids if i not in self.marked]
        if unmarked:
            self.outbox.mark_sent(unmarked, self.clock())
            self.noted(unmarked)

    def deliver(self, batch: Sequence[Pending]) -> list[Outcome]:
        """Outcomes for every item of the batch; raises only when the whole run must stop."""
        return self.send(self.stage(batch))

    def stage(self, batch: Sequence[Pending]) -> Staged:
        """Everything about a batch that does not need the outcomes of the batch before it:
        its plans, patients and look-ups, and the outbox items it references. A run stages
        the next batch while the EHR works on the current one."""
        try:
            return self._stage(batch)
        except TemporaryEhrError as error:
            # A lookup before sending failed: the EHR is busy; the batch is tried again later.
            return Staged(batch, [self._temporary(p.item, error) for p in batch])
        except PermanentEhrError as error:
            detail = {"reason": f"a lookup before sending was refused: {error.reason}"}
            return Staged(batch, [self._settle(p.item, "waiting", detail) for p in batch])

    def send(self, staged: Staged) -> list[Outcome]:
        """The staged batch sent to the EHR, its references resolved with what the run knows
        by now; outcomes for every item."""
        try:
            return staged.settled + self._send_ready(staged)
        except TemporaryEhrError as error:
            return staged.settled + [self._temporary(p.item, error) for p in staged.ready]

    def _stage(self, batch: Sequence[Pending]) -> Staged:
        settled: list[Outcome] = []
        texts = {p.item.resource_id: StoredText.of(p.content) for p in batch}
        deliverable = []
        deletions = []
        local = self.site.local_code_system
        for pending in batch:
            plan = self.plans.get(kind_of(pending.item))
            if plan is None or not plan.deliver:
                reason = plan.reason if plan else "the adapter does not deliver this type"
                settled.append(self._settle(pending.item, "skipped", {"reason": reason}, False))
            elif plan.withdraw_by_delete and withdrawn(pending.content, local):
                deletions.append(pending)
            else:
                deliverable.append(pending)
        # A withdrawal the EHR takes as a DELETE needs no patient: only the EHR's copy, found
        # by its identifier first where a create of it may have gone unheard.
        unheard = [p for p in deletions if self._ehr_id(p.item) is None and p.item.sent_at]
        problems = self._look_up(unheard, texts)
        for pending in deletions:
            if pending.item.resource_id in problems:
                detail = {"reason": problems[pending.item.resource_id]}
                settled.append(self._settle(pending.item, "dead", detail))
            else:
                settled.append(self._delete(pending.item))
        mrn_system = self.site.identifier_systems.mrn
        mrns = {p.item.resource_id: texts[p.item.resource_id].mrn(mrn_system) for p in deliverable}
        patients, held = patient_references(
            self.patients, self.facts, deliverable, mrns, self.clock()
        )
        settled += [self._settle(p.item, "waiting", detail, False) for p, detail in held]
        ready = [p for p in deliverable if p.item.resource_id in patients]
        problems = self._look_up([p for p in ready if self._needs_look_up(p)], texts)
        settled += [
            self._settle(p.item, "dead", {"reason": problems[p.item.resource_id]})
            for p in ready
            if p.item.resource_id in problems
        ]
        ready = [p for p in ready if p.item.resource_id not in problems]
        return Staged(batch, settled, ready, texts, patients, self._targets(ready))

    def _send_ready(self, staged: Staged) -> list[Outcome]:
        outcomes: list[Outcome] = []
        in_batch = {p.item.resource_id for p in staged.ready}
        groups: dict[str, list[Prepared]] = {"transaction": [], "batch": [], "single": []}
        for pending in staged.ready:
            resource_id = pending.item.resource_id
            prepared, waits = self._prepare(
                pending,
                staged.texts[resource_id],
                staged.patients[resource_id],
                in_batch,
                staged.targets,
            )
            if prepared is None:
                outcomes.append(self._settle(pending.item, "waiting", {"reason": waits}, False))
            else:
                groups[prepared.plan.mode].append(prepared)
        outcomes += self._bundle("transaction", groups["transaction"])
        outcomes += self._bundle("batch", groups["batch"])
        outcomes += self._singles(groups["single"])
        return outcomes

    # -- before sending ----------------------------------------------------------------------

    def _ehr_id(self, item: OutboxItem) -> EhrId | None:
        known = self.known.get(item.resource_id)
        if known:
            return known
        return (item.ehr_id, item.ehr_version) if item.ehr_id else None

    def _needs_look_up(self, pending: Pending) -> bool:
        """A create that was sent before without its answer being heard (a process killed
        mid-request) may have left a copy in the EHR: in Bundles, and where the EHR has no
        conditional create, the adapter's identifier is searched for first."""
        plan = self.plans[pending.item.resource_type]
        unheard = self._ehr_id(pending.item) is None and pending.item.sent_at is not None
        return unheard and (plan.mode != "single" or not plan.conditional_create)

    def _targets(self, ready: Sequence[Pending]) -> dict[str, OutboxItem]:
        """The outbox items that these resources reference and the run does not know the EHR's
        id of: those of the batch, and the others read from the outbox."""
        targets = {p.item.resource_id: p.item for p in ready}
        unknown = {
            target
            for target in references(p.content for p in ready)
            if target not in targets and target not in self.known
        }
        return {**targets, **self.outbox.items(unknown)}

    def _look_up(self, pending: Sequence[Pending], texts: dict[str, StoredText]) -> dict[str, str]:
        """Search the EHR for the identifiers of these items: one copy found becomes known (and
        is updated rather than created); several are a problem for a person."""
        problems: dict[str, str] = {}
        by_type: dict[str, list[tuple[Pending, tuple[str, str]]]] = {}
        records_system = self.site.identifier_systems.records
        for p in pending:
            identifier = adapter_identifier(texts[p.item.resource_id].resource, records_system)
            if identifier:
                by_type.setdefault(p.item.resource_type, []).append((p, identifier))
        for resource_type, group in by_type.items():
            copies = copies_by_identifier(self.client, resource_type, [i for _, i in group])
            for p, identifier in group:
                found = copies.get(identifier, [])
                if len(found) == 1:
                    version = found[0].get("meta", {}).get("versionId")
                    self.known[p.item.resource_id] = (str(found[0]["id"]), version)
                elif len(found) > 1:
                    problems[p.item.resource_id] = duplicates(len(found))
        return problems

    def _prepare(
        self,
        pending: Pending,
        stored: StoredText,
        patient: str | None,
        in_batch: set[str],
        targets: dict[str, OutboxItem],
    ) -> tuple[Prepared | None, str]:
        """The EHR's copy of one item, or why it waits: a reference to a resource delivered
        before it (in delivery order) that the EHR does not have."""
        item = pending.item
        plan = self.plans[item.resource_type]
        waits: list[str] = []
        later: list[str] = []
        bundled: list[str] = []

        def resolve(resource_type: str, target_id: str) -> str | object:
            target = targets.get(target_id)
            ehr = self.known.get(target_id) or (
                (target.ehr_id, target.ehr_version) if target and target.ehr_id else None
            )
            if ehr is not None:
                return f"{resource_type}/{ehr[0]}"
            target_plan = self.plans.get(resource_type)
            if target is None or target.state == "skipped" or not target_plan:
                return DROP
            if not target_plan.deliver:
                return DROP
            if target_id in in_batch and plan.mode == target_plan.mode == "transaction":
                bundled.append(target_id)
                return f"urn:uuid:{target_id}"
            if target.key > item.key or target_id in in_batch:
                later.append(target_id)
            else:
                waits.append(f"{resource_type}/{target_id}")
            return DROP

        copy = text_copy(stored, patient, resolve, self.rules.extra_codings)
        if copy is None:  # made by walking the parsed resource, from the start
            waits, later, bundled = [], [], []
            copy = ehr_copy(stored.resource, patient, resolve, self.rules.extra_codings)
        if waits:
            return None, "waits for " + ", ".join(sorted(waits)) + " to be delivered first"
        return Prepared(pending, plan, copy, bool(later), bool(bundled)), ""

    def _again(self, p: Prepared, in_batch: set[str]) -> Prepared:
        """The item prepared anew with what the run has learnt since (ids it delivered or
        found), so that its references and its request (create or update) are current."""
        stored = StoredText.of(p.pending.content)
        body = p.copy.body()
        patient = (body.get("subject") or body.get("patient") or {}).get("reference")
        targets = self.outbox.items(
            t for t in references([p.pending.content]) if t not in self.known
        )
        prepared, _ = self._prepare(p.pending, stored, patient, in_batch, targets)
        return prepared or p

    def _request(self, p: Prepared, conditional: bool) -> tuple[Json, str]:
        """An update of the EHR's copy where one is known, else a create (conditional where
        asked and the EHR supports it); the body as JSON text."""
        resource_type = p.item.resource_type
        ehr = self._ehr_id(p.item)
        if ehr is not None:
            request: Json = {"method": "PUT", "url": f"{resource_type}/{ehr[0]}"}
            if ehr[1] and (p.plan.if_match or resource_type in self.wants_if_match):
                request["ifMatch"] = f'W/"{ehr[1]}"'
            return request, p.copy.with_id(ehr[0])
        request = {"method": "POST", "url": resource_type}
        if conditional and p.plan.conditional_create:
            records_system = self.site.identifier_systems.records
            resource = StoredText.of(p.pending.content).resource
            identifier = adapter_identifier(resource, records_system)
            if identifier:
                request["ifNoneExist"] = urlencode({"identifier": "|".join(identifier)})
        return request, p.copy.text

    # -- sending -----------------------------------------------------------------------------

    def _bundle(self, kind: str, prepared: list[Prepared]) -> list[Outcome]:
        """A transaction (all or nothing, references between its entries as urn:uuids) or a
        batch (each entry on its own) of the items."""
        if not prepared:
            return []
        in_batch = {p.item.resource_id for p in prepared}
        for attempt in range(self.client.attempts):
            # The Bundle is written as text around the copies' own text (no parse, no walk).
            entries: list[str] = []
            creates: list[str] = []
            for p in prepared:
                request, body = self._request(p, conditional=False)
                full_url = f"urn:uuid:{p.item.resource_id}"
                entries.append(
                    f'{{"fullUrl":"{full_url}","resource":{body},'
                    f'"request":{orjson.dumps(request).decode()}}}'
                )
                if request["method"] == "POST":
                    creates.append(p.item.resource_id)
            self._mark_sent(creates)
            bundle = f'{{"resourceType":"Bundle","type":"{kind}","entry":[{",".join(entries)}]}}'
            try:
                answer = self.client.request(
                    "POST", "", body=bundle, idempotent=not creates, headers=MINIMAL
                )
                break
            except TemporaryEhrError as error:
                if not error.sent or attempt + 1 == self.client.attempts:
                    return [self._temporary(p.item, error) for p in prepared]
                # The EHR may have stored the creates: find them before sending again.
                texts = {p.item.resource_id: StoredText.of(p.pending.content) for p in prepared}
                unknown = [p.pending for p in prepared if self._ehr_id(p.item) is None]
                self._look_up(unknown, texts)
                prepared = [self._again(p, in_batch) for p in prepared]
            except PermanentEhrError:
                # One entry spoils a transaction: single requests find which, and send the rest.
                return self._singles(prepared)
        responses = (answer.body or {}).get("entry", [])
        if len(responses) != len(prepared):
            return self._singles(prepared)
        outcomes = []
        answered = self.clock()
        for p, entry in zip(prepared, responses, strict=True):
            response = entry.get("response", {})
            status = int(str(response.get("status", "0"))[:3] or 0)
            if 200 <= status < 300:
                ehr = identity(p.item.resource_type, entry.get("resource"), response)
                outcomes.append(self._delivered(p, ehr, answered))
            elif status in TEMPORARY_STATUSES:
                refused = TemporaryEhrError(status, f"Bundle entry answered {status}")
                outcomes.append(self._temporary(p.item, refused))
            else:
                outcomes += self._singles([p])
        return outcomes

    def _singles(self, prepared: list[Prepared]) -> list[Outcome]:
        outcomes = []
        for p in prepared:
            try:
                outcomes.append(self._single(p))
            except TemporaryEhrError as error:
                outcomes.append(self._temporary(p.item, error))
            except PermanentEhrError as error:
                detail = {"reason": error.reason, "status": error.status, "outcome": error.outcome}
                outcomes.append(self._settle(p.item, "dead", detail))
        return outcomes

    def _single(self, p: Prepared) -> Outcome:
        if p.partial or p.bundled:
            p = self._again(p, set())
        for attempt in range(self.client.attempts):
            request, body = self._request(p, conditional=True)
            safe = request["method"] == "PUT" or "ifNoneExist" in request
            try:
                answer = self._send(request, body, idempotent=safe, item=p.item)
                break
            except TemporaryEhrError as error:
                if safe or not error.sent or attempt + 1 == self.client.attempts:
                    raise
                texts = {p.item.resource_id: StoredText.of(p.pending.content)}
                problems = self._look_up([p.pending], texts)
                if problems:
                    raise PermanentEhrError(409, problems[p.item.resource_id], None) from None
            except PermanentEhrError as error:
                answer = self._recover(p, request, body, error)
                break
        ehr = identity(p.item.resource_type, answer.body, answer_of(answer))
        return self._delivered(p, ehr, self.clock())

    def _recover(
        self, p: Prepared, request: Json, body: str, error: PermanentEhrError
    ) -> EhrResponse:
        """An update refused for a reason the sync can mend: the EHR's copy is gone (create it
        again), moved on (412: read its version), or If-Match is required (428)."""
        if request["method"] != "PUT" or error.status not in (404, 410, 412, 428):
            raise error
        if error.status in (404, 410):
            self.known.pop(p.item.resource_id, None)
            item = p.item._replace(ehr_id=None, ehr_version=None)
            p = replace(p, pending=p.pending._replace(item=item))
            request, body = self._request(p, conditional=True)
            return self._send(request, body, idempotent="ifNoneExist" in request, item=p.item)
        if error.status == 428:
            self.wants_if_match.add(p.item.resource_type)
        # A 412 can also answer the repeat of an update that went through unheard: whichever,
        # the latest version is sent against the version the EHR holds now.
        unheard: EhrError = error
        for _ in range(self.client.attempts):
            version = version_of(self.client.request("GET", request["url"]))
            request = {**request, "ifMatch": f'W/"{version}"'} if version else request
            try:
                return self._send(request, body, idempotent=False)
            except PermanentEhrError as again:
                if again.status != 412:
                    raise
                unheard = again
            except TemporaryEhrError as again:
                if not again.sent:
                    raise
                unheard = again
        raise unheard

    def _send(
        self, request: Json, body: str, idempotent: bool, item: OutboxItem | None = None
    ) -> EhrResponse:
        if item is not None and request["method"] == "POST" and "ifNoneExist" not in request:
            self._mark_sent([item.resource_id])
        headers = {
            name: request[key]
            for key, name in (("ifNoneExist", "If-None-Exist"), ("ifMatch", "If-Match"))
            if key in request
        }
        return self.client.request(
            request["method"], request["url"], body=body, headers=headers, idempotent=idempotent
        )

    # -- outcomes ----------------------------------------------------------------------------

    def _delivered(
        self, p: Prepared, ehr: tuple[str | None, str | None], answered: datetime
    ) -> Outcome:
        ehr_id, ehr_version = ehr
        if ehr_id is None:
            unsaid = {"reason": "the EHR accepted the resource but did not say its id"}
            return self._settle(p.item, "dead", unsaid)
        self.known[p.item.resource_id] = (ehr_id, ehr_version)
        item = p.item
        if p.partial:
            self.partial.add(item.resource_id)
            detail: Json = {"reason": PARTIAL, "left_out": p.copy.dropped}
            return Outcome(
                item.resource_id,
                item.version_id,
                "pending",
                answered,
                detail,
                ehr_id,
                ehr_version,
                attempted=False,
            )
        return Outcome(
            item.resource_id, item.version_id, "delivered", answered, None, ehr_id, ehr_version
        )

    def _delete(self, item: OutboxItem) -> Outcome:
        """A withdrawn resource's copy deleted from the EHR; nothing to do where it never had
        one. A copy already gone (404, 410) is as good as deleted."""
        ehr = self._ehr_id(item)
        if ehr is None:
            return self._settle(item, "skipped", {"reason": NEVER_DELIVERED}, False)
        try:
            self.client.request("DELETE", f"{item.resource_type}/{ehr[0]}", idempotent=True)
        except TemporaryEhrError as error:
            return self._temporary(item, error)
        except PermanentEhrError as error:
            if error.status not in (404, 410):
                detail = {"reason": error.reason, "status": error.status, "outcome": error.outcome}
                return self._settle(item, "dead", detail)
        detail = {"reason": DELETED}
        return Outcome(
            item.resource_id, item.version_id, "delivered", self.clock(), detail, ehr[0], None
        )

    def _temporary(self, item: OutboxItem, error: TemporaryEhrError) -> Outcome:
        backoff = min(LONGEST_BACKOFF, 30.0 * 2**item.attempts) * random.uniform(0.5, 1.0)
        wait = max(backoff, error.retry_after or 0.0)
        detail = {"reason": error.reason, "status": error.status}
        later = self.clock() + timedelta(seconds=wait)
        return Outcome(item.resource_id, item.version_id, "pending", later, detail)

    def _settle(self, item: OutboxItem, state: str, detail: Json, tried: bool = True) -> Outcome:
        return Outcome(
            item.resource_id, item.version_id, state, self.clock(), detail, attempted=tried
        )
