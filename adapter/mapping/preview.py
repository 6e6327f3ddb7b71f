"""What the records of a file would become, without storing anything: each line with whether
it is the current revision of its record, and each session's protocol breaches."""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from adapter.fhir.validation import InvalidResource
from adapter.intake.records import AnyRecord, InfusionSession
from adapter.intake.validation import IntakeContext, validate_record
from adapter.mapping.common import Built
from adapter.mapping.derived import derived_from
from adapter.mapping.mapper import Mapper, SourceRecord

Json = dict[str, Any]
CURRENT, STALE, REPEAT, WITHDRAWN, REJECTED = "current", "stale", "repeat", "withdrawn", "rejected"


@dataclass
class PreviewEntry:
    """One line of the file, or what several records make together (`line` None): a
    session's protocol breaches or Encounter, a series' CarePlan, a patient's Patient."""

    line: int | None
    state: str
    """current, withdrawn (the current revision withdraws the record), stale (a later revision
    of the record is in the file), repeat (the same revision again), rejected; or, for what
    records make together, its source: protocol, encounter, series, patient."""
    record_type: str | None = None
    id: str | None = None
    revision: int | None = None
    reasons: list[str] = field(default_factory=list)
    built: Built | None = None

    def as_json(self) -> Json:
        body: Json = {"line": self.line, "state": self.state}
        for key in ("record_type", "id", "revision"):
            if getattr(self, key) is not None:
                body[key] = getattr(self, key)
        if self.reasons:
            body["reasons"] = self.reasons
        if self.built is not None:
            built = self.built
            body["used"] = built.used
            if built.missing:
                body["waiting_for_rows"] = [m.as_dict() for m in built.missing]
            if built.uncoded:
                body["uncoded"] = [m.as_dict() for m in built.uncoded]
            if built.waiting_for:
                body["waiting_for"] = built.waiting_for
            body["resources"] = built.resources
        return body


def preview(
    mapper: Mapper,
    lines: Iterable[tuple[int, bytes]],
    context: IntakeContext,
    site_mappers: Mapping[str, Mapper] | None = None,
    bound: frozenset[str] | None = None,
) -> list[PreviewEntry]:
    """Every line of the file as mapping would treat it, then each session's breaches. In a
    clinic group each record is mapped with its site's mapper (`site_mappers`: the shared
    files with the site's overlays); `bound`, the sites the file may hold (`--site`)."""
    site_mappers = site_mappers or {}
    entries: list[PreviewEntry] = []
    latest: dict[tuple[str | None, str, str], tuple[int, AnyRecord]] = {}
    seen: set[tuple[str | None, str, str, int]] = set()
    records: list[tuple[int, AnyRecord]] = []
    for number, raw in lines:
        result = validate_record(raw, context, bound)
        if isinstance(result, list):
            reasons = [f"{error.field}: {error.reason}" for error in result]
            entries.append(PreviewEntry(number, REJECTED, reasons=reasons))
            continue
        record = result.record
        key = (record.clinic_site, record.record_type, record.id)
        if (*key, record.revision) in seen:
            entries.append(PreviewEntry(number, REPEAT, *key[1:], record.revision))
            continue
        seen.add((*key, record.revision))
        records.append((number, record))
        if key not in latest or record.revision > latest[key][1].revision:
            latest[key] = (number, record)
    current = {number for number, _ in latest.values()}
    sessions = {
        (record.clinic_site, record.id): record
        for _, record in latest.values()
        if isinstance(record, InfusionSession)
    }
    now = datetime.now(UTC)
    for number, record in records:
        if number not in current:
            later = latest[(record.clinic_site, record.record_type, record.id)][1].revision
            entries.append(
                PreviewEntry(
                    number,
                    STALE,
                    record.record_type,
                    record.id,
                    record.revision,
                    [f"revision {later} of the record is later in the file"],
                )
            )
            continue
        session = sessions.get((record.clinic_site, getattr(record, "session_id", "") or ""))
        state = WITHDRAWN if record.withdrawn else CURRENT
        entry = PreviewEntry(number, state, record.record_type, record.id, record.revision)
        chosen = site_mappers.get(record.clinic_site or "", mapper)
        try:
            entry.built = chosen.map(SourceRecord(record, now, session))
        except InvalidResource as exc:
            entry.reasons.append(f"invalid {exc}")
        entries.append(entry)
    by_site: dict[str | None, list[AnyRecord]] = {}
    for _, record in records:
        by_site.setdefault(record.clinic_site, []).append(record)
    for site, site_records in by_site.items():
        try:
            derived = derived_from(site_mappers.get(site or "", mapper), site_records)
        except InvalidResource as exc:
            entries.append(PreviewEntry(None, "derived", reasons=[f"invalid {exc}"]))
            derived = []
        for source_type, source_id, built in derived:
            entries.append(PreviewEntry(None, source_type, source_type, source_id, built=built))
    return sorted(entries, key=lambda e: (e.line is None, e.line or 0))
