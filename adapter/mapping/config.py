"""Loads the YAML files in mappings/ into strict pydantic models, naming file and key on error."""

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


class Site(MappingModel):
    """mappings/site.yaml: facts about the clinic site."""

    time_zone: str | None = Field(
        None,
        description="IANA time zone that timestamps without a UTC offset are read in; "
        "null refuses such timestamps.",
    )
    fasting_minimum_hours: float = Field(8, gt=0, le=48, description="The clinic's fasting rule.")
    temperature_unit: Literal["Cel", "[degF]"] = Field(
        "Cel", description="UCUM unit body temperature is sent to the EHR in."
    )
    identifier_systems: IdentifierSystems
    meta_source: str = Field(description="meta.source of every resource the adapter emits.")
    local_code_system: str = Field(description="Code system of the adapter's own codes.")
    extension_base: str = Field(description="Base URL of the adapter's extension definitions.")

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

    @field_validator("dose_units")
    @classmethod
    def _ucum(cls, units: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(units.values()) - UCUM_UNITS)
        if unknown:
            raise ValueError(f"not among the UCUM units the adapter emits: {', '.join(unknown)}")
        return units


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


class Limits(MappingModel):
    """mappings/limits.yaml: values outside these ranges cannot be real and are refused."""

    vitals: VitalsLimits
    dose: DoseLimits


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


def load_file(path: Path, model: type[M]) -> M:
    """Load one mapping file into its model; errors read `mappings/site.yaml: key.path: why`."""
    try:
        data: Any = yaml.load(path.read_text(encoding="utf-8"), Loader=SAFE_LOADER)
    except FileNotFoundError:
        raise MappingFileError(f"{path}: file not found") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise MappingFileError(f"{path}: not valid YAML{where}") from None
    try:
        return model.model_validate(data if data is not None else {})
    except ValidationError as exc:
        lines = [f"{path}: {_key_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise MappingFileError("\n".join(lines)) from None


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
    assert isinstance(site, Site) and isinstance(limits, Limits)
    assert isinstance(procedure, ProcedureMapping)
    assert isinstance(observations, ObservationsMapping)
    assert isinstance(adverse_event, AdverseEventMapping)
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
        version=digest.hexdigest()[:12],
    )


class TypeDelivery(MappingModel):
    """How one resource type goes to the EHR; `auto` follows the EHR's CapabilityStatement."""

    deliver: Literal["auto", "yes", "no"] = "auto"
    mode: Literal["auto", "transaction", "batch", "single"] = "auto"
    conditional_create: Literal["auto", "yes", "no"] = "auto"
    if_match: Literal["auto", "yes", "no"] = "auto"


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

    resource_types: dict[
        Literal["Procedure", "Observation", "AdverseEvent", "MedicationAdministration"],
        TypeDelivery,
    ] = Field(default_factory=dict)
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
    models: dict[str, type[MappingModel]] = {**FILES, EHR_FILE: EhrRules}
    return {name: model.model_json_schema() for name, model in models.items()}
