"""The clinic's record format (shared/clinic-export/README.md) as strict pydantic models.

These models check shape: required fields, types, the format's own enumerations and scales.
Local codes (indication, event, site, drug, route, actions) are free strings here: whether the
mapping tables know them is the mapping's business, not the sender's fault.
"""

import re
from datetime import date, datetime, timedelta, timezone
from functools import cache
from typing import Annotated, Any, Literal, get_args
from zoneinfo import ZoneInfo

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
)
from pydantic_core import PydanticCustomError

SOURCE_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
SITE_ID_PATTERN = r"^[a-z0-9-]{1,32}$"
MAX_REVISION = 2**53 - 1
"""The highest revision: the largest whole number every JSON reader holds exactly, and the
same on both stores. A record at this revision can be amended no further."""
MOST_RATE_CHANGES = 500
"""Rate changes of one session: one a minute through an eight-hour infusion is under 500."""
MOST_ACTIONS = 20
MOST_MEDICATIONS_GIVEN = 50
MOST_SESSIONS = 1000
"""The highest session_number and sessions_planned of a series."""


def _aware(value: datetime, info: ValidationInfo) -> datetime:
    """Give a timestamp without offset the site's zone, or refuse it when there is none."""
    if value.tzinfo is not None:
        return value
    zone: ZoneInfo | None = (info.context or {}).get("time_zone")
    if zone is None:
        raise PydanticCustomError(
            "timestamp_without_offset",
            "timestamp has no UTC offset and the site configuration names no time zone",
        )
    # The zone's offset at that moment, fixed: two moments with one ZoneInfo subtract as wall
    # clock times, wrong by an hour across a change to or from daylight saving time.
    local = value.replace(tzinfo=zone)
    offset = local.utcoffset()
    assert offset is not None
    # A wall clock time the change skips (02:30 as clocks go forward) or shows twice (01:30 as
    # they go back) names no one moment: an hour's guess is not made for the sender.
    other = value.replace(tzinfo=zone, fold=1 - value.fold).utcoffset()
    if other != offset:
        raise PydanticCustomError(
            "timestamp_ambiguous",
            "timestamp has no UTC offset and falls in a daylight saving change of the site's "
            "time zone (a time skipped or shown twice): give its offset",
        )
    return value.replace(tzinfo=timezone(offset))


ISO_TIMESTAMP = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt ][0-9]{2}:[0-9]{2}(:(?P<second>[0-9]{2})([.,][0-9]+)?)?"
    r"(?P<offset>[Zz]|[+-][0-9]{2}(?P<minutes>:?[0-9]{2})?)?"
)
"""An ISO 8601 date and time (the format's timestamps): a date alone, or digits alone (which
the parser would take for seconds since 1970: `"20261120"` for 23 August 1970), are not. An
offset may be of hours alone (`+05`), as ISO 8601 allows."""
LONGEST_OFFSET = timedelta(hours=14)
"""The widest UTC offset there is, and the widest FHIR's dateTime takes (R4 datatypes)."""


_DATETIME = TypeAdapter(datetime)


def _iso(value: Any) -> Any:
    """An ISO 8601 timestamp, read as pydantic reads one (what follows is strict, and takes a
    datetime alone once a validator has run before it); anything else as it came."""
    if not isinstance(value, str):
        return value
    found = ISO_TIMESTAMP.fullmatch(value)
    if not found:
        raise PydanticCustomError(
            "timestamp_format",
            "timestamp is not an ISO 8601 date and time (YYYY-MM-DDThh:mm[:ss][offset])",
        )
    if found["second"] == "60":
        raise PydanticCustomError(
            "timestamp_leap_second",
            "timestamp is in a leap second (:60), which no stored time holds: give it as :59",
        )
    hours_alone = found["offset"] not in (None, "Z", "z") and found["minutes"] is None
    try:
        return _DATETIME.validate_python(value + ":00" if hours_alone else value)
    except ValidationError as refused:
        reason = refused.errors()[0]["msg"]
        if "extra characters" not in reason:
            raise
        # The parser stops at the first part out of range and calls the rest extra.
        raise PydanticCustomError(
            "timestamp_range",
            "timestamp has a time or offset out of range (hours 00 to 23, minutes and seconds "
            "00 to 59, an offset within 14 hours)",
        ) from None


def _offset(value: datetime) -> datetime:
    offset = value.utcoffset()
    if offset is not None and abs(offset) > LONGEST_OFFSET:
        raise PydanticCustomError(
            "timestamp_offset", "timestamp has a UTC offset beyond +14:00 or -14:00"
        )
    return value


Timestamp = Annotated[
    datetime, BeforeValidator(_iso), AfterValidator(_offset), AfterValidator(_aware)
]
SourceId = Annotated[str, StringConstraints(pattern=SOURCE_ID_PATTERN)]
Text = Annotated[str, StringConstraints(min_length=1, max_length=4000)]
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
LocalCode = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
PainScore = Annotated[int, Field(ge=0, le=10)]


class Part(BaseModel):
    """A strict part of a record; fields the format does not name are kept, never dropped."""

    model_config = ConfigDict(strict=True, extra="allow", frozen=True)


def _mrn(value: str) -> str:
    """An MRN as the EHR holds it: one with spaces about it, or of spaces alone, would be a
    patient of its own, never found in the EHR."""
    if not value.strip():
        raise PydanticCustomError("mrn_blank", "mrn is blank")
    if value != value.strip():
        raise PydanticCustomError("mrn_padded", "mrn has spaces before or after it")
    return value


class Patient(Part):
    mrn: Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_mrn)]
    family: Name | None = None
    given: Name | None = None
    birth_date: date | None = None


class Staff(Part):
    staff_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    name: Name | None = None
    role: LocalCode | None = None
    npi: Annotated[str, StringConstraints(pattern=r"^\d{10}$")] | None = None


class RecordBase(Part):
    id: SourceId
    clinic_site: Annotated[str, StringConstraints(pattern=SITE_ID_PATTERN)] | None = None
    """The clinic site of a group the record comes from (mappings/sites/<site>/); not to be
    confused with a session's `site`, the body site of its IV line."""
    revision: Annotated[int, Field(ge=1, le=MAX_REVISION)]
    patient: Patient
    recorded_by: Staff | None = None

    @property
    def withdrawn(self) -> bool:
        return getattr(self, "status", None) == "entered_in_error"

    @property
    def linked_session_id(self) -> str | None:
        return getattr(self, "session_id", None)


class Dose(Part):
    weight_kg: float | None = None
    rate_mg_per_kg_per_hr: float | None = None
    total_mg: float | None = None


class RateChange(Part):
    at: Timestamp
    rate_mg_per_kg_per_hr: float
    reason: Text | None = None


SessionStatus = Literal[
    "scheduled",
    "checked_in",
    "in_progress",
    "completed",
    "stopped_early",
    "cancelled",
    "no_show",
    "entered_in_error",
]


class InfusionSession(RecordBase):
    record_type: Literal["infusion_session"]
    status: SessionStatus
    series_id: SourceId | None = None
    session_number: Annotated[int, Field(ge=1, le=MOST_SESSIONS)] | None = None
    sessions_planned: Annotated[int, Field(ge=1, le=MOST_SESSIONS)] | None = None
    indication: LocalCode
    stop_reason: Text | None = None
    scheduled_start: Timestamp
    infusion_start: Timestamp | None = None
    infusion_end: Timestamp | None = None
    discharged_at: Timestamp | None = None
    drug: LocalCode
    route: LocalCode | None = None
    site: LocalCode | None = None
    dose: Dose | None = None
    rate_changes: list[RateChange] = Field(default_factory=list, max_length=MOST_RATE_CHANGES)
    performer: Staff | None = None
    physician: Staff | None = None
    location: Text | None = None
    pain_before: PainScore | None = None
    pain_after: PainScore | None = None
    notes: Text | None = None


class Temperature(Part):
    value: float
    unit: Literal["C", "F"]


VITAL_MEASURES = (
    "heart_rate",
    "systolic",
    "diastolic",
    "spo2",
    "resp_rate",
    "temperature",
    "pain",
    "sedation_rass",
    "etco2",
)


class Vitals(RecordBase):
    record_type: Literal["vitals"]
    session_id: SourceId
    status: Literal["entered_in_error"] | None = None
    taken_at: Timestamp
    phase: Literal["baseline", "intra", "recovery", "discharge"]
    heart_rate: float | None = None
    systolic: float | None = None
    diastolic: float | None = None
    spo2: float | None = None
    resp_rate: float | None = None
    temperature: Temperature | None = None
    pain: PainScore | None = None
    sedation_rass: Annotated[int, Field(ge=-5, le=4)] | None = None
    etco2: float | None = None
    device: Annotated[str, StringConstraints(min_length=1, max_length=64)] | None = None


class MedicationGiven(Part):
    drug: Name
    dose: Name | None = None
    route: LocalCode | None = None
    at: Timestamp | None = None


class AdverseEvent(RecordBase):
    record_type: Literal["adverse_event"]
    session_id: SourceId
    status: Literal["entered_in_error"] | None = None
    event: LocalCode
    description: Text | None = None
    onset_at: Timestamp
    resolved_at: Timestamp | None = None
    severity: Literal["mild", "moderate", "severe"] | None = None
    serious: bool | None = None
    actions: list[LocalCode] = Field(default_factory=list, max_length=MOST_ACTIONS)
    medications_given: list[MedicationGiven] = Field(
        default_factory=list, max_length=MOST_MEDICATIONS_GIVEN
    )
    outcome: (
        Literal[
            "resolved", "resolving", "not_resolved", "resolved_with_sequelae", "fatal", "unknown"
        ]
        | None
    ) = None


class AttestationBase(RecordBase):
    record_type: Literal["attestation"]
    session_id: SourceId
    status: Literal["entered_in_error"] | None = None
    attested_at: Timestamp
    verified_by: Staff | None = None


class FastingAttestation(AttestationBase):
    kind: Literal["fasting"]
    last_solid_food_at: Timestamp
    last_clear_liquid_at: Timestamp | None = None


class Escort(Part):
    name: Name | None = None
    relationship: Name | None = None
    phone: Annotated[str, StringConstraints(min_length=1, max_length=40)] | None = None


class TransportAttestation(AttestationBase):
    kind: Literal["transport"]
    mode: Literal[
        "escort_private_vehicle", "escort_rideshare", "medical_transport", "none_arranged"
    ]
    escort: Escort | None = None
    patient_will_not_drive: bool | None = None


Attestation = Annotated[FastingAttestation | TransportAttestation, Field(discriminator="kind")]

ClinicRecord = Annotated[
    InfusionSession | Vitals | AdverseEvent | Attestation, Field(discriminator="record_type")
]
AnyRecord = InfusionSession | Vitals | AdverseEvent | FastingAttestation | TransportAttestation

RECORD_TYPES = ("infusion_session", "vitals", "adverse_event", "attestation")


@cache
def _nested_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """The fields of `model` that can hold another model (or a list of them)."""
    return tuple(
        name
        for name, info in model.model_fields.items()
        if any(
            isinstance(arg, type) and issubclass(arg, BaseModel)
            for arg in (info.annotation, *_flatten_args(info.annotation))
        )
    )


def _flatten_args(annotation: Any) -> list[Any]:
    found = []
    for arg in get_args(annotation):
        found.append(arg)
        found += _flatten_args(arg)
    return found


def unknown_fields(model: BaseModel, prefix: str = "") -> list[str]:
    """Paths of every field the format does not name, found anywhere in the record."""
    found = [f"{prefix}{key}" for key in (model.__pydantic_extra__ or {})]
    for name in _nested_fields(type(model)):
        value: Any = getattr(model, name)
        if isinstance(value, BaseModel):
            found += unknown_fields(value, f"{prefix}{name}.")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                found += unknown_fields(item, f"{prefix}{name}[{index}].")
    return found
