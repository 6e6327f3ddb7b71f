"""What every mapped resource shares: ids, identifiers, references, concepts, meta."""

import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from adapter.intake.records import Staff
from adapter.mapping.config import (
    LOCAL_SYSTEM,
    CodeRow,
    CodeTable,
    Coding,
    Concept,
    Mappings,
    Thresholds,
)

Json = dict[str, Any]

_ID_NAMESPACE = uuid.UUID("5d0c8f1e-3b7a-4f52-9a55-1c6a4b1f0e27")
UCUM = "http://unitsofmeasure.org"


def resource_id(system: str, value: str, site: str | None = None) -> str:
    """The FHIR id of the resource whose identifier is system|value: the same input, the same id.
    A site of a group has ids of its own (two sites may share a system and a source id)."""
    name = f"{system}|{value}" if site is None else f"{site}|{system}|{value}"
    return str(uuid.uuid5(_ID_NAMESPACE, name))


def number(value: float) -> int | float:
    """A JSON number as the clinic meant it: 76, not 76.0."""
    return int(value) if float(value).is_integer() else value


def instant(moment: datetime) -> str:
    return moment.isoformat()


def clock_text(moment: datetime) -> str:
    """A moment for people: `2026-11-20 10:01 -05:00`, in the offset the clinic recorded."""
    return moment.strftime("%Y-%m-%d %H:%M ") + moment.isoformat()[-6:].replace("+00:00", "UTC")


def whole_minutes(duration: timedelta) -> int:
    """A duration in whole minutes, rounded toward zero: 7 h 59 min 59 s is 479 minutes, so
    that a duration stated never reaches a rule it fell short of."""
    seconds = int(duration.total_seconds())
    return seconds // 60 if seconds >= 0 else -((-seconds) // 60)


def duration_text(duration: timedelta) -> str:
    """A duration for people, to the minute: `7 h 59 min`, `8 h`, `45 min`."""
    minutes = whole_minutes(duration)
    if minutes < 0:
        return f"minus {duration_text(-duration)}"
    hours, rest = divmod(minutes, 60)
    if hours and rest:
        return f"{hours} h {rest} min"
    return f"{hours} h" if hours else f"{rest} min"


SITE_TAG_SUFFIX = "/site"
"""The meta.tag naming a resource's site has the system `{local_code_system}/site`."""


def site_tag(local_code_system: str, site_id: str) -> Json:
    return {
        "system": f"{local_code_system}{SITE_TAG_SUFFIX}",
        "code": site_id,
        "display": "Clinic site of the group",
    }


@dataclass(frozen=True)
class Missing:
    """A local code with no row in its table: the record waits for a mapping."""

    table: str
    field: str
    code: str

    def as_dict(self) -> dict[str, str]:
        return {"table": self.table, "field": self.field, "code": self.code}


@dataclass
class Built:
    """What mapping one record produced, and which table rows it used or lacked."""

    resources: list[Json] = field(default_factory=list)
    used: list[str] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)
    """Rows whose absence holds the record: it waits until they are added."""
    uncoded: list[Missing] = field(default_factory=list)
    """Rows whose absence left a concept as text alone: the record went out without them,
    and a new version with their codings follows once they are added."""
    waiting_for: str | None = None


class Vocabulary:
    """Turns mapping rows into FHIR JSON, with every `local` system resolved, once per load."""

    def __init__(self, mappings: Mappings, site_id: str | None = None) -> None:
        self.mappings = mappings
        self.site_id = site_id
        """The site of a group these resources belong to; None in a single-site deployment."""
        site = mappings.site
        self.local_system = site.local_code_system
        self.systems = site.identifier_systems
        self.meta: Json = {
            "source": site.meta_source,
            "tag": [
                {
                    "system": site.local_code_system,
                    "code": f"mapping-{mappings.version}",
                    "display": "Mapping version that produced this resource",
                }
            ],
        }
        if site_id is not None:
            self.meta["tag"].append(site_tag(site.local_code_system, site_id))
        self.withdrawn_tag: Json = {
            "system": site.local_code_system,
            "code": "entered-in-error",
            "display": "Withdrawn by the clinic: entered in error",
        }

    def coding(self, coding: Coding) -> Json:
        system = self.local_system if coding.system == LOCAL_SYSTEM else coding.system
        return {"system": system, "code": coding.code, "display": coding.display}

    def concept(self, concept: Concept, text: str | None = None) -> Json:
        body: Json = {}
        if concept.codings:
            body["coding"] = [self.coding(c) for c in concept.codings]
        body["text"] = text or concept.text
        return body

    def lookup(
        self,
        table_name: str,
        table: CodeTable,
        field_path: str,
        local: str,
        built: Built,
        holds: bool = False,
    ) -> CodeRow | None:
        """The row of a local code. Without one, the code is listed for IT: as `missing` where
        the record must wait for it (`holds`), else as `uncoded` (the record goes out now)."""
        row = table.find(local)
        if row is None:
            missing = Missing(f"codes/{table_name}.yaml", field_path, local)
            (built.missing if holds else built.uncoded).append(missing)
        else:
            built.used.append(f"codes/{table_name}.yaml: {row.local}")
        return row

    def coded(self, row: CodeRow | None, local: str, text: str | None = None) -> Json:
        """The concept of a row, or, without one, the clinic's own words as its text alone (a
        CodeableConcept with text only is valid FHIR, and claims nothing more)."""
        if row is None:
            return {"text": text or local}
        return self.concept(row, text)

    def identifier(self, record_type: str, value: str) -> Json:
        return {"system": f"{self.systems.records}/{record_type}", "value": value}

    def reference(self, resource_type: str, record_type: str, value: str) -> Json:
        system = f"{self.systems.records}/{record_type}"
        return {"reference": f"{resource_type}/{self.id_of(system, value)}"}

    def id_of(self, system: str, value: str) -> str:
        """The id of the resource whose identifier is system|value, at this site."""
        return resource_id(system, value, self.site_id)

    def patient(self, mrn: str) -> Json:
        """A literal reference to the adapter's Patient of an MRN, keeping the MRN: the sync
        files the resource under the EHR's own Patient found by it."""
        return {
            "reference": f"Patient/{self.id_of(self.systems.mrn, mrn)}",
            "type": "Patient",
            "identifier": {"system": self.systems.mrn, "value": mrn},
        }

    def encounter(self, session_id: str) -> Json:
        """The reference to a session's Encounter (its visit)."""
        return self.reference("Encounter", "infusion_session", f"{session_id}/encounter")

    def care_plan(self, series_id: str) -> Json:
        """The reference to a series' CarePlan, with the series' identifier: which series a
        session belongs to stays readable (and searchable) without reading the CarePlan."""
        return {
            **self.reference("CarePlan", "infusion_series", series_id),
            "identifier": {"system": self.systems.series, "value": series_id},
        }

    def staff(self, staff: Staff) -> Json:
        if staff.npi:
            identifier = {"system": self.systems.npi, "value": staff.npi}
        else:
            identifier = {"system": self.systems.staff, "value": staff.staff_id}
        body: Json = {"type": "Practitioner", "identifier": identifier}
        if staff.name:
            body["display"] = staff.name
        return body

    def quantity(self, value: float, unit_code: str, unit_display: str) -> Json:
        return {"value": number(value), "unit": unit_display, "system": UCUM, "code": unit_code}

    def category(self, code: str) -> list[Json]:
        categories = self.mappings.observations.categories
        coding = categories.vital_signs if code == "vital-signs" else categories.survey
        return [{"coding": [self.coding(coding)]}]

    def interpretation(self, value: float, thresholds: Thresholds | None) -> list[Json] | None:
        if thresholds is None:
            return None
        flag = None
        if thresholds.LL is not None and value < thresholds.LL:
            flag = "LL"
        elif thresholds.L is not None and value < thresholds.L:
            flag = "L"
        elif thresholds.HH is not None and value > thresholds.HH:
            flag = "HH"
        elif thresholds.H is not None and value > thresholds.H:
            flag = "H"
        if flag is None:
            return None
        coding = getattr(self.mappings.observations.interpretations, flag)
        return [{"coding": [self.coding(coding)]}]

    def extension(self, name: str) -> str:
        return f"{self.mappings.site.extension_base}/{name}"

    def resource(self, resource_type: str, record_type: str, value: str) -> Json:
        """The start of a resource: type, deterministic id, meta and identifier."""
        identifier = self.identifier(record_type, value)
        return {
            "resourceType": resource_type,
            "id": self.id_of(identifier["system"], value),
            "meta": {**self.meta},
            "identifier": [identifier],
        }
