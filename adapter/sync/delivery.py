"""Delivering one batch of the outbox to the EHR, in the kind of request each type's plan says,
so that the EHR ends up with exactly one copy of each resource, as its latest version says.

A create is never sent twice blindly. When a request that creates may have reached the EHR
and no readable answer came back, its outcome is unknown until the EHR settles (it can store
a write after the adapter stopped waiting): the item waits `settle`, then the EHR is searched
for the adapter's identifiers before anything is sent again, and what is found there is
updated instead. An answer that says the EHR stored something without saying its id is
followed by that search at once."""

import random
from collections.abc import Callable, Sequence
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
from adapter.sync.encounters import EhrEncounters
from adapter.sync.errors import EhrForbidden, PermanentEhrError, TemporaryEhrError
from adapter.sync.outgoing import (
    DROP,
    EhrCopy,
    StoredText,
    adapter_identifier,
    ehr_copy,
    provably_ours,
    references,
    says_the_same,
    text_copy,
    withdrawn,
)
from adapter.sync.patients import PatientResolver, RecordFacts, patient_references

Json = dict[str, Any]
PARTIAL = (
    "delivered without its references to resources not yet in the EHR; it is updated once they are"
)


def not_yet_in_the_ehr(left_out: Sequence[str]) -> str:
    """Why an item delivered without some references waits: what they point at (`Type/id`,
    resources not stored yet, dead letters, items held back or waiting to be tried again)."""
    named, several = ", ".join(left_out), len(left_out) > 1
    return (
        f"reference{'s' if several else ''} to {named} not yet in the EHR: delivered without "
        f"{'them' if several else 'it'}, and updated once {'they are' if several else 'it is'}"
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
    """References to resources that come later in this run were left out; an update in the
    same run brings them."""
    held: bool
    """References to resources that cannot come in this run (not stored yet, dead letters,
    items held back or backing off) were left out; the update that brings them is sent once
    they are delivered."""
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
    settle: timedelta = timedelta(minutes=5)
    """How long a create whose answer was lost waits before the EHR is searched for it."""
    item_retry: float = 30.0
    """First wait (seconds) of an item the EHR did not take for want of the EHR, doubled at
    each attempt (`ADAPTER_EHR_ITEM_RETRY_SECONDS`)."""
    known: dict[str, EhrId] = field(default_factory=dict)
    """Adapter id -> the EHR's id and version, as far as this run has learnt."""
    partial: set[str] = field(default_factory=set)
    """Adapter ids this run delivered without some of their references."""
    held: dict[str, list[str]] = field(default_factory=dict)
    """Adapter ids this run left waiting, delivered without references to resources that could
    not come in this run, with those resources' adapter ids."""
    wants_if_match: set[str] = field(default_factory=set)
    marked: set[str] = field(default_factory=set)
    """Adapter ids whose create this run has noted in the outbox (`sent_at`) already."""
    marked_ahead: set[str] = field(default_factory=set)
    """Creates this run noted ahead of sending them, on items that bore no mark: until this run
    sends them (`sent`) no copy of theirs can be in the EHR, and an item read again meanwhile (a
    due item that an urgent one references) is not searched for on account of that mark."""
    sent: set[str] = field(default_factory=set)
    """Adapter ids this run has sent a create of."""
    forbidden: dict[str, str] = field(default_factory=dict)
    """Resource types the EHR answered 403 to a write of in this run, with its reason: the rest
    of their items are not sent in this run."""
    failures: list[str] = field(default_factory=list)
    """Reasons of the temporary failures of this run, for its report."""
    encounters: EhrEncounters | None = None
    """With ehr.yaml `encounters.use: ehr`: the EHR's own Encounters, looked up by identifier."""
    facts: RecordFacts = field(init=False)

    def __post_init__(self) -> None:
        self.facts = RecordFacts(self.records)

    def note_ahead(self, read: Sequence[Pending]) -> None:
        """The creates these items may make (no EHR id known) that this run has not noted yet,
        noted in the outbox (`sent_at`) and committed, ahead of sending any of them: a process
        killed once a create has left leaves its mark for the next run. Those that bore no mark
        when read are `marked_ahead`."""
        noted = self._note([p.item.resource_id for p in read if self._ehr_id(p.item) is None])
        if noted:
            unmarked = {p.item.resource_id for p in read if p.item.sent_at is None}
            self.marked_ahead.update(unmarked.intersection(noted))

    def read_facts(self, batches: Sequence[Pending]) -> None:
        """Read the patient facts of these items' records in one go, before their batches are
        staged one by one (each staging would read its own: a round trip each)."""
        self.facts.of((p.source_type, p.source_id) for p in batches)

    def _mark_sent(self, ids: list[str]) -> None:
        """Creates about to be sent, noted first where this run has not noted them yet."""
        self.sent.update(ids)
        self._note(ids)

    def _note(self, creates: list[str]) -> list[str]:
        """Of these creates, those this run has not noted yet, noted in the outbox (`sent_at`)
        and committed; answers them."""
        fresh = [i for i in creates if i not in self.marked]
        if fresh:
            self.outbox.mark_sent(fresh, self.clock())
            self.marked.update(fresh)
        return fresh

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
            unsent = [self._temporary(p.item, error)._replace(sent=False) for p in batch]
            return Staged(batch, unsent)
        except PermanentEhrError as error:
            detail = {"reason": f"a lookup before sending was refused: {error.reason}"}
            return Staged(
                batch, [self._settle(p.item, "waiting", detail, sent=False) for p in batch]
            )

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
        unheard = [p for p in deletions if self._unheard(p.item)]
        _, problems = self._look_up(unheard, texts)
        for pending in deletions:
            if pending.item.resource_id in problems:
                detail = {"reason": problems[pending.item.resource_id]}
                settled.append(self._settle(pending.item, "dead", detail, sent=False))
            else:
                settled.append(self._delete(pending.item))
        mrn_system = self.site.identifier_systems.mrn
        mrns = {p.item.resource_id: texts[p.item.resource_id].mrn(mrn_system) for p in deliverable}
        patients, held = patient_references(
            self.patients, self.facts, deliverable, mrns, self.clock()
        )
        settled += [self._settle(p.item, "waiting", detail, False) for p, detail in held]
        ready = [p for p in deliverable if p.item.resource_id in patients]
        _, problems = self._look_up([p for p in ready if self._needs_look_up(p)], texts)
        settled += [
            self._settle(p.item, "dead", {"reason": problems[p.item.resource_id]}, sent=False)
            for p in ready
            if p.item.resource_id in problems
        ]
        ready = [p for p in ready if p.item.resource_id not in problems]
        if self.encounters is not None:
            self.encounters.look_up(p.content for p in ready)
        return Staged(batch, settled, ready, texts, patients, self._targets(ready))

    def _send_ready(self, staged: Staged) -> list[Outcome]:
        # Items of a type the EHR forbade in this run are not sent, and so are no entry of the
        # Bundle that the rest reference as its urn:uuids (a type another sender finds
        # forbidden meanwhile is sent, and refused: `_singles` sends the rest anew).
        forbidden = set(self.forbidden)
        ready = [p for p in staged.ready if p.item.resource_type not in forbidden]
        outcomes = [
            self._forbidden(p.item) for p in staged.ready if p.item.resource_type in forbidden
        ]
        in_batch = {p.item.resource_id for p in ready}
        groups: dict[str, list[Prepared]] = {"transaction": [], "batch": [], "single": []}
        for pending in ready:
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
            elif self._nothing_new(prepared):
                outcomes.append(self._unsent(prepared))
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
        if (item.detail or {}).get("deleted_in_ehr"):
            return None  # replayed after the EHR deleted its copy: created again
        return (item.ehr_id, item.ehr_version) if item.ehr_id else None

    def _needs_look_up(self, pending: Pending) -> bool:
        """A create that was sent before without its answer being heard (a process killed
        mid-request, an answer lost or unreadable) may have left a copy in the EHR: in Bundles,
        and where the EHR has no conditional create, the adapter's identifier is searched for
        first."""
        plan = self.plans[pending.item.resource_type]
        return self._unheard(pending.item) and (
            plan.mode != "single" or not plan.conditional_create
        )

    def _unheard(self, item: OutboxItem) -> bool:
        """Whether a create of the item may have reached the EHR unheard: a mark (`sent_at`)
        that is not this run's of an item it has yet to send, and no EHR id."""
        ours = item.resource_id in self.marked_ahead and item.resource_id not in self.sent
        marked = item.sent_at is not None and not ours
        return marked and self._ehr_id(item) is None

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

    def _look_up(
        self, pending: Sequence[Pending], texts: dict[str, StoredText]
    ) -> tuple[dict[str, EhrId], dict[str, str]]:
        """Search the EHR for the identifiers of these items: the copy found becomes known (and
        is updated rather than created); several copies are a problem for a person, unless
        all of them say what the adapter sent (its own writes, stored twice): then the first
        stored is taken, and reconciliation removes the others. Returns what was found, and
        the problems."""
        found: dict[str, EhrId] = {}
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
                held = copies.get(identifier, [])
                ours = self._ours(held, texts[p.item.resource_id].resource)
                if ours is not None:
                    version = ours.get("meta", {}).get("versionId")
                    ehr: EhrId = (str(ours["id"]), str(version) if version else None)
                    self.known[p.item.resource_id] = found[p.item.resource_id] = ehr
                elif held:
                    problems[p.item.resource_id] = duplicates(len(held))
        return found, problems

    def _ours(self, copies: list[Json], resource: Json) -> Json | None:
        """The EHR's copy of the resource among those carrying its identifier: the one, or the
        first stored of several that all say what the adapter sends."""
        if len(copies) <= 1:
            return copies[0] if copies else None
        return provably_ours(copies, resource, self.rules.extra_codings)

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
        now = self.clock()
        waits: list[str] = []
        later: list[str] = []
        held: list[str] = []
        bundled: list[str] = []

        def resolve(resource_type: str, target_id: str) -> str | object:
            if resource_type == "Encounter" and self.encounters is not None:
                found = self.encounters.reference(target_id)
                if found is None:
                    held.append(target_id)  # sent without; updated once the EHR has the visit
                    return DROP
                return found
            target = targets.get(target_id)
            ehr = self.known.get(target_id) or (
                (target.ehr_id, target.ehr_version) if target and target.ehr_id else None
            )
            if ehr is not None:
                return f"{resource_type}/{ehr[0]}"
            target_plan = self.plans.get(resource_type)
            if not target_plan or not target_plan.deliver:
                return DROP  # the EHR never gets it
            if target is None:
                # Not stored yet: records arrive in any order (vitals before their session).
                held.append(target_id)
                return DROP
            if target.state == "skipped":
                return DROP
            if target_id in in_batch and plan.mode == target_plan.mode == "transaction":
                bundled.append(target_id)
                return f"urn:uuid:{target_id}"
            coming = target.state == "pending" and target.next_attempt_at <= now
            if target_id in in_batch or (target.key > item.key and coming):
                later.append(target_id)
            elif target.key > item.key:
                held.append(target_id)  # a dead letter, held back, or backing off
            else:
                waits.append(f"{resource_type}/{target_id}")
            return DROP

        copy = text_copy(stored, patient, resolve, self.rules.extra_codings)
        if copy is None:  # made by walking the parsed resource, from the start
            waits, later, held, bundled = [], [], [], []
            copy = ehr_copy(stored.resource, patient, resolve, self.rules.extra_codings)
        if waits:
            return None, "waits for " + ", ".join(sorted(waits)) + " to be delivered first"
        return Prepared(pending, plan, copy, bool(later), bool(held), bool(bundled)), ""

    def _nothing_new(self, p: Prepared) -> bool:
        """Whether sending would only repeat what the EHR holds: this version was delivered
        without some references, and none of them can be given now."""
        detail = p.item.detail or {}
        if "left_out" not in detail or self._ehr_id(p.item) is None:
            return False
        return set(p.copy.dropped) >= set(detail.get("left_out", []))

    def _unsent(self, p: Prepared) -> Outcome:
        """An item whose EHR copy is as complete as it can be for now, not sent again: updated
        in this run's completion rounds when what it references comes in this run, else held
        until a later run delivers that."""
        ehr_id, ehr_version = self._ehr_id(p.item) or (None, None)
        detail = self._left_out(p)
        state = "pending" if p.partial else "waiting"
        item = p.item
        return Outcome(
            item.resource_id,
            item.version_id,
            state,
            self.clock(),
            detail,
            ehr_id,
            ehr_version,
            attempted=False,
            sent=False,
        )

    def _again(self, p: Prepared, in_batch: set[str]) -> tuple[Prepared | None, str]:
        """The item prepared anew with what the run has learnt since (ids it delivered or
        found), so that its references and its request (create or update) are current; or why
        it waits now (a resource it references, sent in the same Bundle, was refused since)."""
        stored = StoredText.of(p.pending.content)
        body = p.copy.body()
        patient = (body.get("subject") or body.get("patient") or {}).get("reference")
        targets = self.outbox.items(
            t for t in references([p.pending.content]) if t not in self.known
        )
        return self._prepare(p.pending, stored, patient, in_batch, targets)

    def _request(self, p: Prepared, conditional: bool) -> tuple[Json, str]:
        """An update of the EHR's copy where one is known, else a create (conditional where
        asked and the EHR supports it); the body as JSON text. An update replayed after the
        EHR's copy was changed there goes against the version the person reviewed."""
        resource_type = p.item.resource_type
        ehr = self._ehr_id(p.item)
        if ehr is not None:
            request: Json = {"method": "PUT", "url": f"{resource_type}/{ehr[0]}"}
            reviewed = (p.item.detail or {}).get("edited_in_ehr")
            if reviewed:
                if reviewed != "*":  # "*": the EHR's version was not known; sent over it
                    request["ifMatch"] = f'W/"{reviewed}"'
            elif ehr[1] and (p.plan.if_match or resource_type in self.wants_if_match):
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
        outcomes: list[Outcome] = []
        if not prepared:
            return outcomes
        # The Bundle is written as text around the copies' own text (no parse, no walk).
        entries: list[str] = []
        requests: dict[str, Json] = {}
        for p in prepared:
            request, body = self._request(p, conditional=False)
            requests[p.item.resource_id] = request
            full_url = f"urn:uuid:{p.item.resource_id}"
            entries.append(
                f'{{"fullUrl":"{full_url}","resource":{body},'
                f'"request":{orjson.dumps(request).decode()}}}'
            )
        creates = [i for i, request in requests.items() if request["method"] == "POST"]
        self._mark_sent(creates)
        bundle = f'{{"resourceType":"Bundle","type":"{kind}","entry":[{",".join(entries)}]}}'
        try:
            answer = self.client.request(
                "POST", "", body=bundle, idempotent=not creates, headers=MINIMAL
            )
        except TemporaryEhrError as error:
            # Whether the EHR stored the creates is unknown until it settles: each waits, and
            # is searched for before anything is sent again.
            return outcomes + [
                self._temporary(p.item, error, requests[p.item.resource_id]) for p in prepared
            ]
        except (PermanentEhrError, EhrForbidden):
            # One entry spoils a transaction: single requests find which, and send the rest.
            return outcomes + self._singles(prepared, in_bundle=True)
        answered_bundle = answer.body or {}
        responses = (
            answered_bundle.get("entry")
            if answered_bundle.get("resourceType") == "Bundle"
            else None
        )
        unread = f"the EHR answered the {kind} {answer.status} without an entry for each resource"
        if not isinstance(responses, list) or len(responses) != len(prepared):
            # It acted on the Bundle (a transaction, on all of it): what it stored is searched.
            return outcomes + self._identify(prepared, unread, requests)
        unknown: list[Prepared] = []
        answered = self.clock()
        for p, entry in zip(prepared, responses, strict=True):
            request = requests[p.item.resource_id]
            response = entry.get("response") if isinstance(entry, dict) else None
            status = _status(response)
            if status is None or response is None:
                unknown.append(p)
            elif 200 <= status < 300:
                updated = _updated_id(request)
                ehr = identity(p.item.resource_type, entry.get("resource"), response, updated)
                if ehr[0] is None:
                    unknown.append(p)
                else:
                    outcomes.append(self._delivered(p, ehr, answered))
            elif status in TEMPORARY_STATUSES:
                refused = TemporaryEhrError(status, f"Bundle entry answered {status}")
                outcomes.append(self._temporary(p.item, refused))
            else:
                outcomes += self._singles([p], in_bundle=True)
        unsaid = f"the EHR answered the {kind} without saying the id of every resource it stored"
        return outcomes + self._identify(unknown, unsaid, requests)

    def _identify(
        self, prepared: list[Prepared], reason: str, requests: dict[str, Json]
    ) -> list[Outcome]:
        """Items the EHR answered for, saying it stored them but not their ids: searched for by
        identifier. Found: delivered; several: a problem for a person; none yet: the write is
        unconfirmed (`_temporary`, given each item's request): a create waits for the EHR to
        settle, and is searched for again before it is sent again."""
        if not prepared:
            return []
        texts = {p.item.resource_id: StoredText.of(p.pending.content) for p in prepared}
        try:
            found, problems = self._look_up([p.pending for p in prepared], texts)
        except TemporaryEhrError as error:
            unknown = TemporaryEhrError(None, f"{reason}; searching for them failed: {error}")
            return [
                self._temporary(p.item, unknown, requests[p.item.resource_id]) for p in prepared
            ]
        outcomes: list[Outcome] = []
        answered = self.clock()
        for p in prepared:
            resource_id = p.item.resource_id
            if resource_id in problems:
                outcomes.append(self._settle(p.item, "dead", {"reason": problems[resource_id]}))
            elif resource_id in found:
                outcomes.append(self._delivered(p, found[resource_id], answered))
            else:
                missing = TemporaryEhrError(None, f"{reason}; no copy found yet")
                request = requests[resource_id]
                outcomes.append(self._temporary(p.item, missing, request))
        return outcomes

    def _singles(self, prepared: list[Prepared], in_bundle: bool = False) -> list[Outcome]:
        """Each item in a request of its own; `in_bundle`: after a Bundle that held them, so
        that an item of a type the EHR forbade meanwhile was sent all the same."""
        outcomes = []
        for p in prepared:
            if p.item.resource_type in self.forbidden:
                outcomes.append(self._forbidden(p.item, sent=in_bundle))
                continue
            try:
                outcomes.append(self._single(p))
            except TemporaryEhrError as error:
                outcomes.append(self._temporary(p.item, error))
            except EhrForbidden as error:
                self.forbidden[p.item.resource_type] = error.reason
                outcomes.append(self._forbidden(p.item, sent=True))
            except PermanentEhrError as error:
                detail = {"reason": error.reason, "status": error.status, "outcome": error.outcome}
                outcomes.append(self._settle(p.item, "dead", detail))
        return outcomes

    def _single(self, p: Prepared) -> Outcome:
        if p.partial or p.bundled:
            # Alone, it holds no urn:uuid of another entry: each reference is the EHR's id of
            # what the run has delivered by now, or it waits for what is not there.
            again, waits = self._again(p, set())
            if again is None:
                return self._settle(p.item, "waiting", {"reason": waits}, False)
            p = again
        request, body = self._request(p, conditional=True)
        try:
            # A create, conditional or not, is not repeated at once when its answer is lost:
            # a second create that meets the first still unstored makes a second copy.
            answer = self._send(request, body, request["method"] == "PUT", p.item)
        except TemporaryEhrError as error:
            return self._temporary(p.item, error, request)
        except PermanentEhrError as error:
            return self._recover(p, request, body, error)
        return self._answered(p, request, answer)

    def _answered(self, p: Prepared, request: Json, answer: EhrResponse) -> Outcome:
        """The outcome of a single request the EHR accepted."""
        updated = _updated_id(request)
        ehr = identity(p.item.resource_type, answer.body, answer_of(answer), updated)
        if ehr[0] is None:
            unsaid = f"{request['method']} {p.item.resource_type} answered {answer.status} "
            unsaid += "without saying the id of what it stored"
            return self._identify([p], unsaid, {p.item.resource_id: request})[0]
        return self._delivered(p, ehr, self.clock())

    def _recover(self, p: Prepared, request: Json, body: str, error: PermanentEhrError) -> Outcome:
        """An update refused for a reason the sync can mend: the EHR's copy is not where it was
        (404, 410: searched for), moved on (412: read its version), or If-Match is required
        (428). A copy deleted or changed by someone at the EHR is kept as ehr.yaml says."""
        if request["method"] != "PUT" or error.status not in (404, 410, 412, 428):
            raise error
        if error.status in (404, 410):
            return self._lost(p, request, error)
        if error.status == 428:
            self.wants_if_match.add(p.item.resource_type)
        if error.status == 412 and not self._may_overwrite(p, error):
            return self._edited(p, request)
        # A 412 can also answer the repeat of an update that went through unheard: whichever,
        # the latest version is sent against the version the EHR holds now.
        unheard: PermanentEhrError | TemporaryEhrError = error
        for _ in range(self.client.attempts):
            try:
                version = version_of(self.client.request("GET", request["url"]))
            except TemporaryEhrError as again:
                return self._temporary(p.item, again)
            request = {**request, "ifMatch": f'W/"{version}"'} if version else request
            try:
                return self._answered(p, request, self._send(request, body, idempotent=False))
            except PermanentEhrError as again:
                if again.status != 412:
                    raise
                unheard = again
            except TemporaryEhrError as again:
                if not again.sent:
                    return self._temporary(p.item, again, request)
                unheard = again
        if isinstance(unheard, TemporaryEhrError):
            return self._temporary(p.item, unheard, request)
        raise unheard

    def _may_overwrite(self, p: Prepared, error: PermanentEhrError) -> bool:
        """Whether a 412 may be answered by sending the clinic's version over the EHR's: the
        site says so, or the version the EHR holds may be the sync's own (an update of it went
        unanswered, in this run or an earlier one: the version recorded was then forgotten)."""
        detail = p.item.detail or {}
        unknown = p.item.ehr_version is None or detail.get("edited_in_ehr") == "*"
        return self.rules.edited_in_ehr == "overwrite" or error.after_unheard or unknown

    def _edited(self, p: Prepared, request: Json) -> Outcome:
        """A 412 where the EHR's copy may have been changed there: when it says what is sent,
        it is delivered; otherwise the change is kept and the item is a dead letter for a
        person to review (a replay sends the clinic's version over that EHR version)."""
        try:
            answer = self.client.request("GET", request["url"])
        except TemporaryEhrError as error:
            return self._temporary(p.item, error)
        theirs = answer.body or {}
        version = version_of(answer)
        if says_the_same(p.copy.body(), theirs):
            ehr_id = str(theirs.get("id") or request["url"].split("/", 1)[1])
            return self._delivered(p, (ehr_id, version), self.clock())
        return self._settle(p.item, "dead", edited_in_ehr(version))

    def _lost(self, p: Prepared, request: Json, error: PermanentEhrError) -> Outcome:
        """An update answered 404 or 410: the EHR is searched for the adapter's identifier
        first. Its copy found under another id is updated there; found under the same id, the
        update is tried again later; none found, it is created again (410: as ehr.yaml says)."""
        resource = StoredText.of(p.pending.content).resource
        identifier = adapter_identifier(resource, self.site.identifier_systems.records)
        try:
            copies = (
                copies_by_identifier(self.client, p.item.resource_type, [identifier]).get(
                    identifier, []
                )
                if identifier
                else []
            )
        except TemporaryEhrError as again:
            return self._temporary(p.item, again)
        ours = self._ours(copies, resource)
        if copies and ours is None:
            raise PermanentEhrError(409, duplicates(len(copies)), None)
        if ours is not None and str(ours["id"]) == _updated_id(request):
            reason = (
                f"{request['method']} {p.item.resource_type} answered {error.status} though the "
                "EHR holds the copy; tried again later"
            )
            raise TemporaryEhrError(error.status, reason, sent=False)
        if ours is None and error.status == 410 and self.rules.deleted_in_ehr == "keep":
            return self._settle(p.item, "dead", deleted_in_ehr())
        if ours is not None:
            version = ours.get("meta", {}).get("versionId")
            self.known[p.item.resource_id] = (str(ours["id"]), str(version) if version else None)
            item = p.item._replace(ehr_id=str(ours["id"]), ehr_version=None)
        else:
            self.known.pop(p.item.resource_id, None)
            item = p.item._replace(ehr_id=None, ehr_version=None, detail=None)
        p = replace(p, pending=p.pending._replace(item=item))
        request, body = self._request(p, conditional=True)
        try:
            answer = self._send(request, body, request["method"] == "PUT", item=p.item)
        except TemporaryEhrError as again:
            return self._temporary(p.item, again, request)
        return self._answered(p, request, answer)

    def _send(
        self, request: Json, body: str, idempotent: bool, item: OutboxItem | None = None
    ) -> EhrResponse:
        if item is not None and request["method"] == "POST":
            self.sent.add(item.resource_id)
            if "ifNoneExist" not in request:
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
        if p.partial or p.held:
            return Outcome(
                item.resource_id,
                item.version_id,
                "pending" if p.partial else "waiting",
                answered,
                self._left_out(p),
                ehr_id,
                ehr_version,
                attempted=False,
            )
        return Outcome(
            item.resource_id, item.version_id, "delivered", answered, None, ehr_id, ehr_version
        )

    def _left_out(self, p: Prepared) -> Json:
        """The detail of an item delivered without some references: which, and when they come
        (noted for this run's completion rounds)."""
        left_out = list(dict.fromkeys(p.copy.dropped))
        if p.partial:
            self.partial.add(p.item.resource_id)
            return {"reason": PARTIAL, "left_out": left_out}
        self.held[p.item.resource_id] = [target.partition("/")[2] for target in left_out]
        return {"reason": not_yet_in_the_ehr(left_out), "left_out": left_out}

    def completable(self) -> list[str]:
        """Items this run left waiting for a resource that it has delivered since (stored
        while the run went on): updated in its completion rounds rather than the next run's."""
        ready = [i for i, targets in self.held.items() if any(t in self.known for t in targets)]
        for resource_id in ready:
            del self.held[resource_id]
        return ready

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

    def _temporary(
        self, item: OutboxItem, error: TemporaryEhrError, request: Json | None = None
    ) -> Outcome:
        """The item tried again later, with backoff (at least what the EHR asked for). A write
        the EHR may have acted on is unconfirmed: a create waits for the EHR to settle."""
        wait = max(self._backoff(item), error.retry_after or 0.0)
        detail: Json = {"reason": error.reason, "status": error.status}
        ehr_id = None
        if request is not None and error.sent:
            # Which write it was: a create waits for the EHR to settle before it is looked for,
            # whatever EHR id its row still holds (that of a copy the EHR deleted, say).
            detail["unconfirmed"] = "create" if request["method"] == "POST" else "update"
            if request["method"] == "POST":
                wait = max(wait, self.settle.total_seconds())
                detail["reason"] = (
                    f"{error.reason}; the EHR may still store it: it is searched for by "
                    f"identifier from {self.settle.total_seconds():g} s on, before it is sent again"
                )
            else:
                # The update may have been stored: the version the EHR holds is not known now,
                # and the next update goes over whatever version it is (a 412 is not an edit).
                ehr_id = _updated_id(request)
        self.failures.append(error.reason)
        later = self.clock() + timedelta(seconds=wait)
        return Outcome(item.resource_id, item.version_id, "pending", later, detail, ehr_id, None)

    def _backoff(self, item: OutboxItem) -> float:
        """Seconds before the item is tried again: doubled at each attempt, up to an hour,
        drawn between half and all of it so that the items of one outage spread out."""
        return min(LONGEST_BACKOFF, self.item_retry * 2.0**item.attempts) * random.uniform(0.5, 1.0)

    def _forbidden(self, item: OutboxItem, sent: bool = False) -> Outcome:
        """An item not sent (or, `sent`, refused 403) because the EHR forbids the adapter to
        write its type: tried again later, never a dead letter (no resource is at fault)."""
        backoff = self._backoff(item)
        reason = self.forbidden[item.resource_type]
        detail = {"reason": f"not delivered: {reason}", "status": 403, "forbidden": True}
        later = self.clock() + timedelta(seconds=backoff)
        return Outcome(item.resource_id, item.version_id, "pending", later, detail, sent=sent)

    def _settle(
        self,
        item: OutboxItem,
        state: str,
        detail: Json,
        tried: bool = True,
        sent: bool | None = None,
    ) -> Outcome:
        """`tried`: counted as an attempt; `sent`: carried by a request (as `tried` if unsaid)."""
        sent = tried if sent is None else sent
        now = self.clock()
        return Outcome(
            item.resource_id, item.version_id, state, now, detail, attempted=tried, sent=sent
        )


def edited_in_ehr(version: str | None) -> Json:
    """A dead letter's detail for a copy someone changed in the EHR, kept as ehr.yaml says."""
    return {
        "reason": f"the EHR's copy was changed there after the adapter delivered it (its version "
        f"{version or 'unknown'}); the change is kept (edited_in_ehr: keep in mappings/ehr.yaml): "
        "review it, and replay to send the clinic's version over it",
        "status": 412,
        "edited_in_ehr": version or "*",
    }


def deleted_in_ehr() -> Json:
    """A dead letter's detail for a copy the EHR deleted (410 Gone), kept as ehr.yaml says."""
    return {
        "reason": "the EHR's copy was deleted there (410 Gone); it stays deleted "
        "(deleted_in_ehr: keep in mappings/ehr.yaml): replay to create it again",
        "status": 410,
        "deleted_in_ehr": True,
    }


def _status(response: Any) -> int | None:
    """A Bundle entry's HTTP status (`"201 Created"`), or None when it gives none."""
    if not isinstance(response, dict):
        return None
    code = str(response.get("status", "")).strip()[:3]
    return int(code) if len(code) == 3 and code.isdigit() else None


def _updated_id(request: Json) -> str | None:
    """The id an update was sent to."""
    return str(request["url"]).split("/", 1)[1] if request["method"] == "PUT" else None
