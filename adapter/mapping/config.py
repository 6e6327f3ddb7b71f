"""Loads the YAML files in mappings/ into strict pydantic models, naming file and key on error."""

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from adapter.errors import MappingFileError
from adapter.fhir.rules import UCUM_UNITS, EventStatus, MedicationAdministrationStatus
from adapter.fhir.rules import AdverseEventOutcome as AdverseEventOutcomeCode


class MappingModel(BaseModel):
    """Base of every mapping file model: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


LOCAL_SYSTEM = "local"
"""A coding whose system is `local` takes the site's `local_code_system`."""


class IdentifierSystems(MappingModel):
    mrn: str = Field(
        description="System of the clinic's medical record numbers, as the EHR knows it."
    )
    records: str = Field(
        description="Base of the adapter's identifier systems, one per record type."
    )
    staff: str = Field(description="System of the clinic's staff ids.")
    series: str = Field(description="System of the clinic's infusion series ids.")
    devices: str = Field(description="System of the clinic's monitor ids.")
    npi: str = Field(description="System of US National Provider Identifiers.")


class Rule(MappingModel):
    """A number of the clinic's protocol, with where it comes from."""

    value: float = Field(ge=0)
    source: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="Where the number comes from: the clinic's protocol, a guideline."
    )


class Protocol(MappingModel):
    """The clinic's protocol, checked for every session; a breach becomes a DetectedIssue."""

    fasting_minimum_hours: Rule = Field(
        description="Least time from the last solid food to the infusion start."
    )
    clear_liquid_minimum_hours: Rule | None = Field(
        None, description="Least time from the last clear liquid to the start; null: not checked."
    )
    monitoring_minimum_minutes: Rule = Field(
        description="Least time on the premises from the infusion end to discharge."
    )
    discharge_systolic_max: Rule = Field(
        description="Highest systolic pressure (mmHg) of the discharge vitals."
    )
    discharge_diastolic_max: Rule = Field(
        description="Highest diastolic pressure (mmHg) of the discharge vitals."
    )
    dose_total_tolerance_percent: Rule = Field(
        description="How far the recorded total dose may differ from the one the rate periods "
        "and the dosing weight give before it is reported."
    )

    @field_validator("fasting_minimum_hours", "clear_liquid_minimum_hours")
    @classmethod
    def _whole_minutes(cls, rule: Rule | None) -> Rule | None:
        if rule is None:
            return None
        if not 0 < rule.value <= 48:
            raise ValueError("value: more than 0 and at most 48 hours")
        if abs(rule.value * 60 - round(rule.value * 60)) > 1e-9:
            raise ValueError(
                "value: a whole number of minutes (8, 7.5, 7.75), so that a fast is "
                "compared with the rule exactly"
            )
        return rule


class Address(MappingModel):
    lines: list[Annotated[str, StringConstraints(min_length=1)]] = Field(default_factory=list)
    city: str | None = None
    state: str | None = None
    postal_code: str | None = None
    country: str | None = None


class SiteOrganization(MappingModel):
    """The clinic as an Organization: Encounter.serviceProvider of its visits."""

    name: Annotated[str, StringConstraints(min_length=1)]
    npi: Annotated[str, StringConstraints(pattern=r"^\d{10}$")] | None = Field(
        None, description="The clinic's organization NPI, if it has one."
    )


class SiteLocation(MappingModel):
    """The clinic's premises as a Location: where its infusions and visits take place."""

    name: Annotated[str, StringConstraints(min_length=1)]
    address: Address | None = None


class Site(MappingModel):
    """mappings/site.yaml: facts about the clinic site."""

    time_zone: str | None = Field(
        None,
        description="IANA time zone that timestamps without a UTC offset are read in; "
        "null refuses such timestamps.",
    )
    protocol: Protocol
    temperature_unit: Literal["Cel", "[degF]"] = Field(
        "Cel", description="UCUM unit body temperature is sent to the EHR in."
    )
    identifier_systems: IdentifierSystems
    meta_source: str = Field(description="meta.source of every resource the adapter emits.")
    local_code_system: str = Field(description="Code system of the adapter's own codes.")
    extension_base: str = Field(description="Base URL of the adapter's extension definitions.")
    organization: SiteOrganization | None = Field(
        None,
        description="The site as an Organization (Encounter.serviceProvider); unset: none is "
        "made and visits name no provider.",
    )
    location: SiteLocation | None = Field(
        None,
        description="The site's premises as a Location (Encounter.location, Procedure.location); "
        "unset: none is made and locations are named in text.",
    )

    @field_validator("time_zone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                ZoneInfo(value)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown IANA time zone {value!r}") from None
        return value

    def zone(self) -> ZoneInfo | None:
        return ZoneInfo(self.time_zone) if self.time_zone else None


class Coding(MappingModel):
    """One code, with where it comes from."""

    system: str = Field(description="Code system URI, or `local` for the site's own code system.")
    code: Annotated[str, StringConstraints(min_length=1)]
    display: Annotated[str, StringConstraints(min_length=1)]
    source: Annotated[str, StringConstraints(min_length=1)] = Field(
        description="Where the code comes from: a page of its code system's publisher."
    )


class Concept(MappingModel):
    """A CodeableConcept: a text and its codings."""

    text: Annotated[str, StringConstraints(min_length=1)]
    codings: list[Coding]


class CodeRow(Concept):
    """One row of a code table: a local code of the clinic and what it becomes."""

    local: Annotated[str, StringConstraints(min_length=1, max_length=64)]


class CodeTable(MappingModel):
    """mappings/codes/*.yaml: local codes (matched without regard to case) and their codings."""

    rows: list[CodeRow]

    @model_validator(mode="after")
    def _unique(self) -> Self:
        seen: set[str] = set()
        for index, row in enumerate(self.rows):
            key = row.local.upper()
            if key in seen:
                raise ValueError(f"rows[{index}].local: {row.local!r} appears twice")
            seen.add(key)
        return self

    def find(self, local: str) -> CodeRow | None:
        for row in self.rows:
            if row.local.upper() == local.upper():
                return row
        return None


class ProcedureStatus(MappingModel):
    """Session status -> Procedure.status (http://hl7.org/fhir/event-status)."""

    scheduled: EventStatus
    checked_in: EventStatus
    in_progress: EventStatus
    completed: EventStatus
    stopped_early: EventStatus
    cancelled: EventStatus
    no_show: EventStatus
    entered_in_error: Literal["entered-in-error"]


class MedicationStatus(MappingModel):
    """Session status -> MedicationAdministration.status; null emits no administration."""

    scheduled: MedicationAdministrationStatus | None
    checked_in: MedicationAdministrationStatus | None
    in_progress: MedicationAdministrationStatus | None
    completed: MedicationAdministrationStatus | None
    stopped_early: MedicationAdministrationStatus | None
    cancelled: MedicationAdministrationStatus | None
    no_show: MedicationAdministrationStatus | None
    entered_in_error: Literal["entered-in-error"]


class Cpt(MappingModel):
    enabled: bool
    coding: Coding


class PerformerFunctions(MappingModel):
    nurse: Concept
    physician: Concept


class StatusReasons(MappingModel):
    no_show: Annotated[str, StringConstraints(min_length=1)]
    cancelled: Annotated[str, StringConstraints(min_length=1)]


class ProcedureMapping(MappingModel):
    """mappings/resources/procedure.yaml."""

    status: ProcedureStatus
    medication_status: MedicationStatus
    status_reasons: StatusReasons
    code: Concept
    cpt: Cpt
    category: Concept
    performer_functions: PerformerFunctions


class Unit(MappingModel):
    code: Annotated[str, StringConstraints(min_length=1)] = Field(description="UCUM code.")
    display: str


class Thresholds(MappingModel):
    """Interpretation flags: below LL, below L, above H, above HH (each optional)."""

    LL: float | None = None
    L: float | None = None
    H: float | None = None
    HH: float | None = None

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        values = [v for v in (self.LL, self.L, self.H, self.HH) if v is not None]
        if values != sorted(values):
            raise ValueError("thresholds must rise in the order LL, L, H, HH")
        return self


class Measure(Concept):
    category: Literal["vital-signs", "survey"]
    unit: Unit | None = None
    interpretation: Thresholds | None = None


class Measures(MappingModel):
    heart_rate: Measure
    blood_pressure: Measure
    systolic: Measure
    diastolic: Measure
    spo2: Measure
    resp_rate: Measure
    temperature: Measure
    etco2: Measure
    pain: Measure
    sedation_rass: Measure
    body_weight: Measure


class FastingAnswers(MappingModel):
    """The fasting Observation's value: whether the fast met the site minimum."""

    met: Coding
    not_met: Coding


class FastingMapping(Concept):
    duration: Concept
    answers: FastingAnswers
    below_minimum_interpretation: Coding
    clear_liquid: Concept


class TransportModes(MappingModel):
    escort_private_vehicle: Coding
    escort_rideshare: Coding
    medical_transport: Coding
    none_arranged: Coding


class TransportMapping(Concept):
    modes: TransportModes
    escort: Concept
    will_not_drive: Concept
    unsafe_interpretation: Coding = Field(
        description="Interpretation of an unsafe answer: none arranged, or the patient may drive."
    )


class Categories(MappingModel):
    vital_signs: Coding
    survey: Coding


class Interpretations(MappingModel):
    LL: Coding
    L: Coding
    H: Coding
    HH: Coding


class ObservationsMapping(MappingModel):
    """mappings/resources/observations.yaml."""

    vital_signs_profile: str
    measures: Measures
    fasting: FastingMapping
    transport: TransportMapping
    categories: Categories
    interpretations: Interpretations


class AdverseEventOutcomes(MappingModel):
    """Clinic outcome -> http://hl7.org/fhir/adverse-event-outcome."""

    resolved: AdverseEventOutcomeCode
    resolving: AdverseEventOutcomeCode
    not_resolved: AdverseEventOutcomeCode
    resolved_with_sequelae: AdverseEventOutcomeCode
    fatal: AdverseEventOutcomeCode
    unknown: AdverseEventOutcomeCode


class Severities(MappingModel):
    mild: Coding
    moderate: Coding
    severe: Coding


class Seriousness(MappingModel):
    serious: Coding
    not_serious: Coding


class AdverseEventMapping(MappingModel):
    """mappings/resources/adverse_event.yaml."""

    outcome: AdverseEventOutcomes
    outcome_system: str
    severity: Severities
    seriousness: Seriousness
    dose_units: dict[str, str]
    causality_text: str
    withdrawn_status_extension: str = Field(
        description="URL of the extension that says a withdrawn AdverseEvent is entered-in-error."
    )

    @field_validator("dose_units")
    @classmethod
    def _ucum(cls, units: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(units.values()) - UCUM_UNITS)
        if unknown:
            raise ValueError(f"not among the UCUM units the adapter emits: {', '.join(unknown)}")
        return units


IssueSeverity = Literal["high", "moderate", "low"]


class IssueRule(Concept):
    """One rule of the protocol as a DetectedIssue: its code, and how severe a breach is."""

    severity: IssueSeverity = Field(
        description="DetectedIssue.severity (required binding: "
        "http://hl7.org/fhir/R4/valueset-detectedissue-severity.html)."
    )


class IssueRules(MappingModel):
    fasting_short: IssueRule
    fasting_unattested: IssueRule
    fasting_attested_late: IssueRule
    clear_liquid_short: IssueRule
    transport_unattested: IssueRule
    transport_none_arranged: IssueRule
    transport_patient_drives: IssueRule
    monitoring_short: IssueRule
    recovery_vitals_missing: IssueRule
    discharge_vitals_missing: IssueRule
    discharge_blood_pressure_high: IssueRule
    completed_without_end: IssueRule
    series_number_repeated: IssueRule
    series_out_of_order: IssueRule
    dose_total_mismatch: IssueRule


class DetectedIssueMapping(MappingModel):
    """mappings/resources/detected_issue.yaml: each protocol rule as a DetectedIssue."""

    rules: IssueRules


class NotesMapping(MappingModel):
    """mappings/resources/notes.yaml: a side effect and a protocol breach as a clinical note
    (DocumentReference), and a side effect as a coded Observation, for EHRs that take neither
    AdverseEvent nor DetectedIssue."""

    type: Concept = Field(description="DocumentReference.type of every note.")
    category: Concept = Field(description="DocumentReference.category of every note.")
    side_effect: Concept = Field(description="Observation.code of a side effect's Observation.")
    side_effect_category: Coding = Field(description="Its Observation.category.")


class DataAbsentReason(MappingModel):
    url: str
    code: Literal["unknown", "asked-unknown", "not-asked", "masked", "unsupported"]


class PatientMapping(MappingModel):
    """mappings/resources/patient.yaml."""

    mrn_type: Coding
    gender_not_recorded: Literal["unknown", "other"]
    data_absent_reason: DataAbsentReason


EncounterStatus = Literal[
    "planned",
    "arrived",
    "triaged",
    "in-progress",
    "onleave",
    "finished",
    "cancelled",
    "entered-in-error",
    "unknown",
]


class EncounterStatuses(MappingModel):
    """Session status -> Encounter.status (http://hl7.org/fhir/encounter-status)."""

    scheduled: EncounterStatus
    checked_in: EncounterStatus
    in_progress: EncounterStatus
    completed: EncounterStatus
    stopped_early: EncounterStatus
    cancelled: EncounterStatus
    no_show: EncounterStatus
    entered_in_error: Literal["entered-in-error"]


class EncounterParticipants(MappingModel):
    nurse: Concept
    physician: Concept


class EncounterLocation(MappingModel):
    text: Annotated[str, StringConstraints(min_length=1)]
    physical_type: Coding


class EncounterMapping(MappingModel):
    """mappings/resources/encounter.yaml."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    status: EncounterStatuses
    class_: Coding = Field(alias="class")
    type: Concept
    participant_types: EncounterParticipants
    infusion_location: EncounterLocation
    recovery_location: EncounterLocation
    discharged_home: Coding


class CarePlanMapping(MappingModel):
    """mappings/resources/care_plan.yaml."""

    category: Concept
    title: Annotated[str, StringConstraints(min_length=1)]


class Range(MappingModel):
    """An inclusive range of plausible values in the unit named beside it."""

    min: float
    max: float
    unit: str

    @model_validator(mode="after")
    def _ordered(self) -> Self:
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self

    def holds(self, value: float) -> bool:
        return self.min <= value <= self.max

    def describe(self) -> str:
        return f"{self.min:g} to {self.max:g} {self.unit}"


class VitalsLimits(MappingModel):
    heart_rate: Range
    systolic: Range
    diastolic: Range
    spo2: Range
    resp_rate: Range
    temperature_celsius: Range
    temperature_fahrenheit: Range
    etco2: Range


class DoseLimits(MappingModel):
    weight_kg: Range
    rate_mg_per_kg_per_hr: Range
    total_mg: Range


class MomentLimits(MappingModel):
    earliest_year: int = Field(ge=1, le=9999)
    """No charted moment, and no birth, is of a year before this one: such a year is mistyped
    (0026 for 2026)."""
    ahead_hours: float = Field(ge=0, le=72)
    """How far past the adapter's clock a charted moment may lie: the charting system's clock
    may run ahead, or a time be sent with the wrong offset (+14:00 and -12:00 are 26 hours
    apart)."""


class Limits(MappingModel):
    """mappings/limits.yaml: values outside these ranges cannot be real and are refused."""

    vitals: VitalsLimits
    dose: DoseLimits
    moments: MomentLimits


M = TypeVar("M", bound=MappingModel)


@dataclass(frozen=True)
class CodeTables:
    indications: CodeTable
    events: CodeTable
    sites: CodeTable
    drugs: CodeTable
    routes: CodeTable
    actions: CodeTable


@dataclass(frozen=True)
class Mappings:
    """Every mapping file, loaded and checked, and the version they make together."""

    site: Site
    limits: Limits
    codes: CodeTables
    procedure: ProcedureMapping
    observations: ObservationsMapping
    adverse_event: AdverseEventMapping
    detected_issue: DetectedIssueMapping
    notes: NotesMapping
    patient: PatientMapping
    encounter: EncounterMapping
    care_plan: CarePlanMapping
    version: str


FILES: dict[str, type[MappingModel]] = {
    "site.yaml": Site,
    "limits.yaml": Limits,
    "codes/indications.yaml": CodeTable,
    "codes/events.yaml": CodeTable,
    "codes/sites.yaml": CodeTable,
    "codes/drugs.yaml": CodeTable,
    "codes/routes.yaml": CodeTable,
    "codes/actions.yaml": CodeTable,
    "resources/procedure.yaml": ProcedureMapping,
    "resources/observations.yaml": ObservationsMapping,
    "resources/adverse_event.yaml": AdverseEventMapping,
    "resources/detected_issue.yaml": DetectedIssueMapping,
    "resources/notes.yaml": NotesMapping,
    "resources/patient.yaml": PatientMapping,
    "resources/encounter.yaml": EncounterMapping,
    "resources/care_plan.yaml": CarePlanMapping,
}
"""Every mapping file, by its path under the mappings folder, and the model it loads into."""


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
"""PyYAML's safe loader on libyaml where the wheel has it (the mapping files load in a tenth of
the time, at every start of the service and the CLI), else in pure Python."""


def read_yaml(path: Path) -> Any:
    """A mapping file's YAML. A process loads the same files again at every mapping change it
    hears of and every runtime it opens: the documents are kept by text, so that only a changed
    file is parsed again. The data is shared: read it, do not change it."""
    try:
        return _parsed(_text(path))
    except yaml.YAMLError as exc:
        raise _not_yaml(path, exc) from None


def load_file(path: Path, model: type[M]) -> M:
    """Load one mapping file into its model; errors read `mappings/site.yaml: key.path: why`.
    The models are frozen, and kept by text as the documents are (`read_yaml`): validating them
    cost more than parsing."""
    text = _text(path)
    try:
        loaded = _loaded(model, text)
    except yaml.YAMLError as exc:
        raise _not_yaml(path, exc) from None
    except ValidationError as exc:
        lines = [f"{path}: {_key_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise MappingFileError("\n".join(lines)) from None
    assert isinstance(loaded, model)  # the cache's type is lost to mypy
    return loaded


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MappingFileError(f"{path}: file not found") from None


def _not_yaml(path: Path, exc: yaml.YAMLError) -> MappingFileError:
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
    return MappingFileError(f"{path}: not valid YAML{where}")


@functools.lru_cache(maxsize=256)
def _parsed(text: str) -> Any:
    return yaml.load(text, Loader=SAFE_LOADER)


@functools.lru_cache(maxsize=256)
def _loaded(model: type[M], text: str) -> M:
    data = _parsed(text)
    return model.model_validate(data if data is not None else {})


def load_mappings(folder: Path) -> Mappings:
    """Load every mapping file in `folder`; every broken file is named in one MappingFileError."""
    loaded: dict[str, MappingModel] = {}
    problems: list[str] = []
    digest = hashlib.sha256()
    for name, model in FILES.items():
        path = folder / name
        try:
            loaded[name] = load_file(path, model)
        except MappingFileError as exc:
            problems.append(str(exc))
            continue
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    if problems:
        raise MappingFileError("\n".join(problems))

    def table(name: str) -> CodeTable:
        found = loaded[f"codes/{name}.yaml"]
        assert isinstance(found, CodeTable)
        return found

    site, limits = loaded["site.yaml"], loaded["limits.yaml"]
    procedure = loaded["resources/procedure.yaml"]
    observations = loaded["resources/observations.yaml"]
    adverse_event = loaded["resources/adverse_event.yaml"]
    detected_issue = loaded["resources/detected_issue.yaml"]
    notes = loaded["resources/notes.yaml"]
    patient = loaded["resources/patient.yaml"]
    encounter = loaded["resources/encounter.yaml"]
    care_plan = loaded["resources/care_plan.yaml"]
    assert isinstance(site, Site) and isinstance(limits, Limits)
    assert isinstance(procedure, ProcedureMapping)
    assert isinstance(observations, ObservationsMapping)
    assert isinstance(adverse_event, AdverseEventMapping)
    assert isinstance(detected_issue, DetectedIssueMapping)
    assert isinstance(notes, NotesMapping)
    assert isinstance(patient, PatientMapping)
    assert isinstance(encounter, EncounterMapping)
    assert isinstance(care_plan, CarePlanMapping)
    return Mappings(
        site=site,
        limits=limits,
        codes=CodeTables(
            *(
                table(name)
                for name in ("indications", "events", "sites", "drugs", "routes", "actions")
            )
        ),
        procedure=procedure,
        observations=observations,
        adverse_event=adverse_event,
        detected_issue=detected_issue,
        notes=notes,
        patient=patient,
        encounter=encounter,
        care_plan=care_plan,
        version=digest.hexdigest()[:12],
    )


class TypeDelivery(MappingModel):
    """How one resource type goes to the EHR; `auto` follows the EHR's CapabilityStatement."""

    deliver: Literal["auto", "yes", "no"] = "auto"
    mode: Literal["auto", "transaction", "batch", "single"] = "auto"
    conditional_create: Literal["auto", "yes", "no"] = "auto"
    if_match: Literal["auto", "yes", "no"] = "auto"
    withdraw: Literal["auto", "delete", "update"] = Field(
        "auto",
        description="How a withdrawn resource reaches the EHR: `update` sends the withdrawn "
        "version; `delete` deletes the EHR's copy; `auto` deletes where the type has no status "
        "(AdverseEvent in R4) and the EHR's CapabilityStatement lists delete, else updates.",
    )


DeliveredType = Literal[
    "Encounter",
    "CarePlan",
    "Procedure",
    "Observation",
    "AdverseEvent",
    "MedicationAdministration",
    "DetectedIssue",
    "DocumentReference",
]
StandInType = Literal["DocumentReference", "Observation"]


class StandIn(MappingModel):
    """What an EHR gets instead of a type it may not take."""

    deliver: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="`auto`: when the EHR does not take the type stood in for; `yes`: always, "
        "besides it; `no`: never.",
    )
    types: list[StandInType] = Field(
        description="DocumentReference: the clinical note; Observation: the coded Observation "
        "(a side effect only)."
    )


class StandIns(MappingModel):
    AdverseEvent: StandIn = Field(
        default_factory=lambda: StandIn(types=["DocumentReference", "Observation"]),
        description="A side effect for an EHR without AdverseEvent writes.",
    )
    DetectedIssue: StandIn = Field(
        default_factory=lambda: StandIn(types=["DocumentReference"]),
        description="A protocol breach for an EHR without DetectedIssue writes.",
    )


class Encounters(MappingModel):
    """Which Encounter the delivered resources name as their visit."""

    use: Literal["auto", "create", "ehr", "omit"] = Field(
        "auto",
        description="`create`: the adapter's own Encounter is delivered and referenced; `ehr`: "
        "the EHR's own Encounter for the visit is found by identifier (`identifier_system` "
        "and the session id) and referenced, and the adapter's is never sent; `omit`: the "
        "reference is left out; `auto`: `create` where the EHR's CapabilityStatement lists "
        "create and update for Encounter, else `omit`.",
    )
    identifier_system: str | None = Field(
        None,
        description="With `use: ehr`: the system under which the EHR holds the clinic's "
        "session id as an identifier of its Encounter for the visit.",
    )

    @model_validator(mode="after")
    def _system_for_ehr(self) -> Self:
        if self.use == "ehr" and not self.identifier_system:
            raise ValueError(
                "identifier_system is required with use: ehr (the system under which the "
                "EHR holds the clinic's session id)"
            )
        return self


class CodingMatch(MappingModel):
    system: str
    code: Annotated[str, StringConstraints(min_length=1)]


class ExtraCoding(MappingModel):
    """A coding added to `code` of the resources that carry `match`, on the way to the EHR."""

    resource_type: Literal["Observation", "Procedure", "AdverseEvent"] = "Observation"
    match: CodingMatch
    add: Coding


class EhrRules(MappingModel):
    """mappings/ehr.yaml: what the site overrides in how the sync delivers to its EHR."""

    resource_types: dict[DeliveredType, TypeDelivery] = Field(default_factory=dict)
    stand_ins: StandIns = Field(default_factory=StandIns)
    encounters: Encounters = Field(default_factory=Encounters)
    extra_codings: list[ExtraCoding] = Field(default_factory=list)
    fhir_versions: list[Annotated[str, StringConstraints(pattern=r"^\d+\.\d+(\.\d+)?$")]] = Field(
        default_factory=lambda: ["4.0"],
        min_length=1,
        description="FHIR versions the EHR may announce in its CapabilityStatement "
        "(`fhirVersion`), each a version or its major.minor: 4.0 takes 4.0.0 and 4.0.1. "
        "An EHR announcing another is refused: the adapter sends R4 (4.0.1) resources.",
    )
    edited_in_ehr: Literal["keep", "overwrite"] = Field(
        "keep",
        description="A copy someone changed in the EHR after the adapter delivered it (found "
        "by reconciliation, or by a 412 to an update): `keep` leaves the change and lists the "
        "resource as a dead letter for review (a replay then sends the clinic's version over "
        "that change); `overwrite` sends the clinic's version over it.",
    )
    deleted_in_ehr: Literal["keep", "recreate"] = Field(
        "keep",
        description="A copy the EHR answers 410 Gone for (deleted there): `keep` leaves it "
        "deleted and lists the resource as a dead letter (a replay creates it again); "
        "`recreate` creates it again.",
    )


EHR_FILE = "ehr.yaml"
"""Outside the mapping version: editing it changes how resources travel, not what they say."""


def load_ehr_rules(folder: Path) -> EhrRules:
    return load_file(folder / EHR_FILE, EhrRules)


def json_schemas() -> dict[str, dict[str, Any]]:
    """A JSON Schema per mapping file, for editors (mappings/schema/)."""
    from adapter.mapping.sites import site_json_schemas  # the sites' models build on these

    models: dict[str, type[MappingModel]] = {**FILES, EHR_FILE: EhrRules}
    schemas = {name: model.model_json_schema() for name, model in models.items()}
    return {**schemas, **site_json_schemas()}
