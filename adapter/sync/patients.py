"""The EHR's Patient behind each MRN: found by identifier, followed to the surviving record
where the EHR merged it, confirmed by family name and birth date where the clinic's record has
them, and never guessed. Nothing is filed under an inactive Patient."""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from adapter.mapping.detected_issue import SOURCE_TYPE as PROTOCOL
from adapter.store.outbox import Pending
from adapter.store.records import Key, RecordStore
from adapter.store.sync_state import PatientConfirmation, PatientMatch, PatientMatches
from adapter.sync.client import EhrClient
from adapter.sync.ehr_ids import copies_by_identifier, location
from adapter.sync.errors import PermanentEhrError

MATCHED = "matched"
MAX_LINKS = 5
"""`replaced-by` links followed from one Patient at most (a merge of a merge...)."""
Json = dict[str, Any]


@dataclass(frozen=True)
class PatientFacts:
    """What a clinic record says about its patient, beyond the MRN (either may be missing)."""

    family: str | None
    birth_date: str | None


class RecordFacts:
    """The patient facts of clinic records, read from the store once per run: a record maps to
    several resources, which come in different batches. At most `limit` are kept."""

    def __init__(self, records: RecordStore, limit: int = 50_000) -> None:
        self.records = records
        self.limit = limit
        self._known: dict[Key, PatientFacts] = {}

    def of(self, keys: Iterable[Key]) -> dict[Key, PatientFacts]:
        wanted = set(keys)
        missing = {key for key in wanted if key not in self._known}
        if len(self._known) + len(missing) > self.limit:
            self._known.clear()
            missing = wanted
        parsed = self.records.parsed_current(_record(key) for key in missing)
        for key in missing:
            patient = parsed.get(_record(key), {}).get("patient", {})
            self._known[key] = PatientFacts(patient.get("family"), patient.get("birth_date"))
        return {key: self._known[key] for key in wanted}


def _record(source: Key) -> Key:
    """The record whose patient facts a resource's source has: the session's, for the
    resources of its protocol checks."""
    source_type, source_id = source
    return ("infusion_session", source_id) if source_type == PROTOCOL else source


class PatientResolver:
    def __init__(
        self, client: EhrClient, matches: PatientMatches, mrn_system: str, refresh: timedelta
    ) -> None:
        self.client = client
        self.matches = matches
        self.mrn_system = mrn_system
        self.refresh = refresh
        self._this_run: dict[str, PatientMatch] = {}

    def resolve(self, mrns: Iterable[str], now: datetime) -> dict[str, PatientMatch]:
        """The match of each MRN: a fresh cached match, else asked of the EHR. An MRN that was
        not found or was ambiguous is asked again on each run, once per run."""
        wanted = {mrn for mrn in mrns if mrn not in self._this_run}
        cached = self.matches.get(wanted)
        asked: list[str] = []
        for mrn in sorted(wanted):
            known = cached.get(mrn)
            if known and known.state == MATCHED and now - known.checked_at < self.refresh:
                self._this_run[mrn] = known
            else:
                asked.append(mrn)
        # One search for the batch's new MRNs (by POST: they stay out of URLs and logs).
        found = copies_by_identifier(
            self.client, "Patient", [(self.mrn_system, mrn) for mrn in asked]
        )
        fresh = [self._match(mrn, found.get((self.mrn_system, mrn), []), now) for mrn in asked]
        for match in fresh:
            self._this_run[match.mrn] = match
        self.matches.put(fresh)
        return {mrn: self._this_run[mrn] for mrn in mrns}

    def _match(self, mrn: str, patients: list[Json], now: datetime) -> PatientMatch:
        """What the EHR's Patients with this MRN say: none, several, or the one, each inactive
        one followed to the record that replaced it (FHIR R4 Patient.link, `replaced-by`)."""
        if not patients:
            return PatientMatch(mrn, "not-found", None, {}, now)
        survivors: dict[str, Json] = {}
        states: set[str] = set()
        for patient in patients:
            state, survivor = self._survivor(patient)
            states.add(state)
            if survivor is not None:
                survivors[str(survivor["id"])] = survivor
        if "unconfirmed" in states:
            return PatientMatch(mrn, "unconfirmed", None, {}, now)
        if len(survivors) > 1:
            return PatientMatch(mrn, "ambiguous", None, {"candidates": len(survivors)}, now)
        if not survivors:
            return PatientMatch(mrn, "inactive", None, {}, now)
        patient = next(iter(survivors.values()))
        detail: dict[str, Any] = {
            "family": sorted({n["family"] for n in patient.get("name", []) if n.get("family")}),
            "birth_date": patient.get("birthDate"),
        }
        if "merged" in states:
            detail["merged"] = True
        return PatientMatch(mrn, MATCHED, str(patient["id"]), detail, now)

    def _survivor(self, patient: Json) -> tuple[str, Json | None]:
        """The active record a Patient stands for: itself (`active`), the record its chain of
        `replaced-by` links ends at (`merged`), none (`inactive`: no link to follow), or none
        that could be confirmed (`unconfirmed`: a link to a record the EHR does not show, to
        an inactive one, or a loop)."""
        current, followed = patient, 0
        seen = {str(patient.get("id"))}
        while current.get("active") is False:
            target = next(
                (
                    link.get("other", {}).get("reference")
                    for link in current.get("link", [])
                    if link.get("type") == "replaced-by"
                ),
                None,
            )
            if not target:
                return ("inactive" if followed == 0 else "unconfirmed"), None
            target_id, _ = location("Patient", target)
            if target_id is None or target_id in seen or followed == MAX_LINKS:
                return "unconfirmed", None
            seen.add(target_id)
            followed += 1
            try:
                current = self.client.request("GET", f"Patient/{target_id}").body or {}
            except PermanentEhrError:
                return "unconfirmed", None
            if current.get("resourceType") != "Patient" or current.get("id") != target_id:
                return "unconfirmed", None
        return ("merged" if followed else "active"), current


NOT_FOUND = "no Patient in the EHR has this MRN"
FAMILY_DIFFERS = "the EHR's Patient with this MRN has a different family name than the record"
BIRTH_DATE_DIFFERS = "the EHR's Patient with this MRN has a different birth date than the record"
CONFIRMABLE = (FAMILY_DIFFERS, BIRTH_DATE_DIFFERS)
"""The reasons an admin may settle from the console by confirming the EHR's Patient."""


def differences(match: PatientMatch, facts: PatientFacts) -> list[str]:
    """What of the record's patient the EHR's Patient of the MRN disagrees with: `family`,
    `birth_date` (a fact either side does not give cannot disagree)."""
    found: list[str] = []
    families = {name.casefold() for name in match.detail.get("family", [])}
    if facts.family and families and facts.family.casefold() not in families:
        found.append("family")
    birth_date = match.detail.get("birth_date")
    if facts.birth_date and birth_date and facts.birth_date != birth_date:
        found.append("birth_date")
    return found


def mismatch(
    match: PatientMatch, facts: PatientFacts, confirmed: PatientConfirmation | None = None
) -> str | None:
    """Why the EHR's patient is not the record's, or None. Names what differs, not the values.
    `confirmed` is an admin's confirmation of the MRN's EHR Patient: the facts it names as
    differing are then no reason, for that Patient alone."""
    if match.state == "not-found":
        return NOT_FOUND
    if match.state == "ambiguous":
        return "several Patients in the EHR have this MRN"
    if match.state == "inactive":
        return "the EHR's Patient with this MRN is inactive and names no record that replaced it"
    if match.state == "unconfirmed":
        return (
            "the EHR's Patient with this MRN was merged into another record (link replaced-by) "
            "that the EHR does not show as active: held until the surviving record can be "
            "confirmed"
        )
    differs = differences(match, facts)
    if confirmed is not None and confirmed.ehr_id == match.ehr_id:
        differs = [name for name in differs if name not in confirmed.differs]
    if not differs:
        return None
    return FAMILY_DIFFERS if "family" in differs else BIRTH_DATE_DIFFERS


def patient_references(
    resolver: PatientResolver,
    facts: RecordFacts,
    batch: Sequence[Pending],
    mrns: dict[str, str | None],
    now: datetime,
) -> tuple[dict[str, str | None], list[tuple[Pending, dict[str, Any]]]]:
    """The EHR reference of each item's patient (None for a resource without one; `mrns`
    gives each item's MRN), and the items held back because their patient is not settled,
    with why."""
    matches = resolver.resolve({m for m in mrns.values() if m}, now)
    recorded = facts.of((p.source_type, p.source_id) for p in batch if mrns[p.item.resource_id])
    # An admin's confirmation matters only where a fact differs: read for those MRNs alone
    # (for most batches, none: no statement).
    differing = {
        mrn
        for p in batch
        if (mrn := mrns[p.item.resource_id]) is not None
        and matches[mrn].state == MATCHED
        and differences(matches[mrn], recorded[(p.source_type, p.source_id)])
    }
    confirmed = resolver.matches.confirmations(differing)
    found: dict[str, str | None] = {}
    held: list[tuple[Pending, dict[str, Any]]] = []
    for pending in batch:
        mrn = mrns[pending.item.resource_id]
        if mrn is None:
            found[pending.item.resource_id] = None
            continue
        facts_of = recorded[(pending.source_type, pending.source_id)]
        problem = mismatch(matches[mrn], facts_of, confirmed.get(mrn))
        if problem:
            held.append((pending, {"reason": problem, "patient_mrn": mrn}))
        else:
            found[pending.item.resource_id] = f"Patient/{matches[mrn].ehr_id}"
    return found, held
