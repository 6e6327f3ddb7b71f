"""What a batch of records changes beyond their own resources: each session they touch (its
protocol breaches and its Encounter), each series (its CarePlan), each patient (its Patient)."""

import logging
from collections.abc import Sequence

from pydantic import TypeAdapter

from adapter.fhir.validation import InvalidResource
from adapter.intake.records import AnyRecord, ClinicRecord, InfusionSession
from adapter.mapping.common import Built
from adapter.mapping.detected_issue import SOURCE_TYPE as PROTOCOL
from adapter.mapping.detected_issue import protocol_to_resources
from adapter.mapping.mapper import Mapper
from adapter.mapping.patient import SOURCE_TYPE as PATIENT
from adapter.mapping.patient import demographics, patient_id, patient_to_resource
from adapter.mapping.protocol import SessionFacts
from adapter.mapping.series import SOURCE_TYPE as SERIES
from adapter.mapping.series import series_to_care_plan
from adapter.mapping.site import SOURCE_TYPE as SITE
from adapter.mapping.site import site_to_resources
from adapter.mapping.visit import SOURCE_TYPE as ENCOUNTER
from adapter.mapping.visit import visit_to_encounter
from adapter.site_keys import site_key
from adapter.store.mapping_queue import MappingQueue, QueuedRecord
from adapter.store.resources import MappedRecord, ResourceStore

log = logging.getLogger(__name__)
_RECORD = TypeAdapter[AnyRecord](ClinicRecord)


def derived_resources(
    mapper: Mapper,
    queue: MappingQueue,
    store: ResourceStore,
    batch: Sequence[QueuedRecord],
    parsed: Sequence[AnyRecord],
) -> list[MappedRecord]:
    """The resources made from several records, for everything the batch touches; an empty
    MappedRecord withdraws what its source made before (a breach no longer found)."""
    vocabulary, site = mapper.vocabulary, mapper.site_id
    # Store keys hold the site of a group (adapter/site_keys.py); resources say the ids alone.
    changed = {record.id for record in parsed if isinstance(record, InfusionSession)}
    # A session that moved to another series leaves its old series to be read again too.
    series = {
        record.series_id
        for record in parsed
        if isinstance(record, InfusionSession) and record.series_id
    } | store.series_of_procedures(
        {vocabulary.reference("Procedure", "infusion_session", sid)["reference"] for sid in changed}
    )
    touched = {item.session_id for item in batch if item.session_id}
    touched |= {site_key(site, session_id) for session_id in changed}
    touched |= queue.series_members({site_key(site, name) for name in series})
    results: list[MappedRecord] = []
    members: dict[str, dict[str, InfusionSession]] = {name: {} for name in series}
    for session_key, rows in queue.session_rows(touched).items():
        if rows.session is None:
            continue
        session = _RECORD.validate_json(rows.session)
        assert isinstance(session, InfusionSession)
        siblings = [
            member
            for raw in rows.series
            if isinstance(member := _RECORD.validate_json(raw), InfusionSession)
        ]
        facts = SessionFacts(
            session, [_RECORD.validate_json(raw) for raw in rows.records], siblings
        )
        results += _checked(mapper, PROTOCOL, session_key, protocol_to_resources(vocabulary, facts))
        results += _checked(mapper, ENCOUNTER, session_key, visit_to_encounter(vocabulary, facts))
        if session.series_id in members:
            for member in (session, *siblings):
                members[session.series_id][member.id] = member
    for series_id, sessions in members.items():
        plan = series_to_care_plan(vocabulary, series_id, list(sessions.values()))
        results += _checked(
            mapper, SERIES, site_key(site, series_id), Built([plan] if plan else [])
        )
    for mrn in sorted({record.patient.mrn for record in parsed}):
        facts_of = demographics(
            _RECORD.validate_json(raw) for raw in queue.patient_records(site_key(site, mrn))
        )
        patient = patient_to_resource(vocabulary, mrn, facts_of)
        assert patient["id"] == patient_id(vocabulary, mrn)
        results += _checked(mapper, PATIENT, site_key(site, mrn), Built([patient]))
    results += site_resources(mapper)
    return results


def derived_from(mapper: Mapper, records: Sequence[AnyRecord]) -> list[tuple[str, str, Built]]:
    """What `derived_resources` makes, for records held in memory (a preview, a test): the
    current revision of each record is its highest, the newest record the last given;
    (source type, source id, built), every resource checked (InvalidResource if one fails)."""
    vocabulary = mapper.vocabulary
    current: dict[tuple[str, str], AnyRecord] = {}
    for record in records:
        key = (record.record_type, record.id)
        if key not in current or record.revision > current[key].revision:
            current[key] = record
    sessions = {r.id: r for r in current.values() if isinstance(r, InfusionSession)}
    named: dict[str, list[AnyRecord]] = {}
    for record in current.values():
        session_id = getattr(record, "session_id", None)
        if session_id:
            named.setdefault(session_id, []).append(record)
    made: list[tuple[str, str, Built]] = []
    series: dict[str, list[InfusionSession]] = {}
    for session in sessions.values():
        siblings = [
            other
            for other in sessions.values()
            if session.series_id and other.series_id == session.series_id and other is not session
        ]
        facts = SessionFacts(session, named.get(session.id, []), siblings)
        made.append((PROTOCOL, session.id, protocol_to_resources(vocabulary, facts)))
        made.append((ENCOUNTER, session.id, visit_to_encounter(vocabulary, facts)))
        if session.series_id:
            series.setdefault(session.series_id, []).append(session)
    for series_id, members in series.items():
        plan = series_to_care_plan(vocabulary, series_id, members)
        made.append((SERIES, series_id, Built([plan] if plan else [])))
    by_mrn: dict[str, list[AnyRecord]] = {}
    for record in reversed(list(current.values())):
        by_mrn.setdefault(record.patient.mrn, []).append(record)
    for mrn, theirs in sorted(by_mrn.items()):
        patient = patient_to_resource(vocabulary, mrn, demographics(theirs))
        made.append((PATIENT, mrn, Built([patient])))
    for _, _, built in made:
        mapper.checked(built)
    return made


def site_resources(mapper: Mapper) -> list[MappedRecord]:
    """The Organization and Location of the mapper's site, where its site.yaml names them: a
    batch stores them again unchanged, and their first batch or an edit makes a version."""
    built = Built(site_to_resources(mapper.vocabulary))
    if not built.resources:
        return []
    return _checked(mapper, SITE, site_key(mapper.site_id, SITE), built)


def _checked(mapper: Mapper, source_type: str, source_id: str, built: Built) -> list[MappedRecord]:
    """The built resources as a MappedRecord, each checked; none (what was stored stays) when
    one is invalid, which is logged without its content."""
    try:
        mapper.checked(built)
    except InvalidResource as exc:
        log.error("the %s resources produced an invalid %s", source_type, exc.resource_type)
        return []
    return [MappedRecord(source_type, source_id, built.resources, site=mapper.site_id)]
