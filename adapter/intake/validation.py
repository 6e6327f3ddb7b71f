"""Turns one received record (JSON bytes) into a validated record or the reasons it is refused."""

import functools
import hashlib
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any, get_args
from zoneinfo import ZoneInfo

import orjson
from pydantic import BaseModel, TypeAdapter, ValidationError

from adapter.errors import FieldError
from adapter.intake.body import read_integer, read_json
from adapter.intake.records import (
    RECORD_TYPES,
    SOURCE_ID_PATTERN,
    VITAL_MEASURES,
    AdverseEvent,
    AnyRecord,
    ClinicRecord,
    FastingAttestation,
    InfusionSession,
    Vitals,
    unknown_fields,
)
from adapter.mapping.config import Limits, MomentLimits, Range
from adapter.mapping.sites import SITE_ID_RULE, is_site_id
from adapter.site_keys import site_key

_RECORD = TypeAdapter[AnyRecord](ClinicRecord)
_TAGS = {*RECORD_TYPES, "fasting", "transport"}
_SOURCE_ID = re.compile(SOURCE_ID_PATTERN)
SITE_FIELD = "clinic_site"
"""The record's clinic site of a group (a session's `site` is its IV line's body site)."""
ID_RULE = "must be 1 to 64 characters of letters, digits, '-', '_' or '.'"


@dataclass(frozen=True)
class ValidatedRecord:
    """A record that passed every intake check, with its raw and parsed JSON."""

    record: AnyRecord
    raw: str
    parsed: str
    content_hash: str
    warnings: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, str]:
        return (self.record.record_type, site_key(self.record.clinic_site, self.record.id))


@dataclass(frozen=True)
class IntakeContext:
    """What validation needs from the site's configuration."""

    limits: Limits
    time_zone: ZoneInfo | None
    sites: Mapping[str, "IntakeContext"] = field(default_factory=dict)
    """Each site of a group, with its own limits and time zone; empty: a single site."""
    default_site: str | None = None
    """The site of a record that names none, from a credential bound to no site."""

    def site_context(
        self, named: Any, bound: frozenset[str] | None
    ) -> "tuple[str | None, IntakeContext] | FieldError":
        """The site a record belongs to and its context, or why its `site` is refused. `named`
        is the record's `site` as received; `bound`, the sites of the sender's credential
        (None: any)."""
        if named is not None and not (isinstance(named, str) and is_site_id(named)):
            return FieldError(SITE_FIELD, f"must be a site id: {SITE_ID_RULE}")
        if not self.sites:
            if named is not None:
                return FieldError(SITE_FIELD, "this deployment has no sites configured")
            return None, self
        if named is None:
            if bound is not None and len(bound) == 1:
                named = next(iter(bound))
            elif bound is None and self.default_site is not None:
                named = self.default_site
            else:
                return FieldError(
                    SITE_FIELD,
                    "required: this deployment serves several sites; name the record's site",
                )
        if bound is not None and named not in bound:
            # The same words for another site and for one the group does not have: a bound
            # credential learns nothing of the sites beyond its own.
            return FieldError(SITE_FIELD, "not a site this credential writes for")
        if named not in self.sites:
            return FieldError(SITE_FIELD, "not a site of this deployment")
        return named, self.sites[named]


def _path(loc: tuple[int | str, ...]) -> str:
    parts = list(loc)
    while parts and parts[0] in _TAGS:
        parts.pop(0)
    path = ""
    for part in parts:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(record)"


def _schema_errors(exc: ValidationError, raw: bytes) -> list[FieldError]:
    errors = []
    for err in exc.errors(include_url=False, include_input=False):
        kind = err["type"]
        if kind == "json_invalid":
            # The schema's parser names no field for a number it cannot read (an integer of
            # thousands of digits): the standard library's finds it.
            reason = err["msg"].replace("Invalid JSON", "malformed JSON")
            errors.extend(_out_of_reach(raw) or [FieldError("(record)", reason)])
        elif kind == "union_tag_not_found":
            tag = str((err.get("ctx") or {}).get("discriminator", "")).strip("'")
            errors.append(FieldError(_path((*err["loc"], tag)), "field required"))
        elif kind == "union_tag_invalid":
            ctx = err.get("ctx") or {}
            tag = str(ctx.get("discriminator", "")).strip("'")
            errors.append(
                FieldError(
                    _path((*err["loc"], tag)),
                    f"unknown value; expected one of {ctx.get('expected_tags')}",
                )
            )
        elif (
            kind == "string_pattern_mismatch"
            and (err.get("ctx") or {}).get("pattern") == SOURCE_ID_PATTERN
        ):
            errors.append(FieldError(_path(err["loc"]), ID_RULE))
        else:
            errors.append(FieldError(_path(err["loc"]), err["msg"][:1].lower() + err["msg"][1:]))
    return errors


def _out_of_range(path: str, value: float | None, limit: Range) -> Iterator[FieldError]:
    if value is not None and not limit.holds(value):
        yield FieldError(path, f"not a plausible value: must be {limit.describe()}")


_RANGED_VITALS = ("heart_rate", "systolic", "diastolic", "spo2", "resp_rate", "etco2")


def _vitals_problems(record: Vitals, limits: Limits) -> Iterator[FieldError]:
    vital = limits.vitals
    for name in _RANGED_VITALS:
        value = getattr(record, name)
        if value is not None and not getattr(vital, name).holds(value):
            yield from _out_of_range(name, value, getattr(vital, name))
    if record.temperature is not None:
        scale = (
            vital.temperature_celsius
            if record.temperature.unit == "C"
            else vital.temperature_fahrenheit
        )
        yield from _out_of_range("temperature.value", record.temperature.value, scale)
    systolic, diastolic = record.systolic, record.diastolic
    if (systolic is None) != (diastolic is None):
        missing = "diastolic" if diastolic is None else "systolic"
        present = "systolic" if missing == "diastolic" else "diastolic"
        yield FieldError(missing, f"required when {present} is present: they come together")
    elif systolic is not None and diastolic is not None and systolic <= diastolic:
        yield FieldError("systolic", "must be higher than diastolic")
    if all(getattr(record, name) is None for name in VITAL_MEASURES):
        yield FieldError(
            "(record)", f"no measure present: expected one of {', '.join(VITAL_MEASURES)}"
        )


def _session_problems(record: InfusionSession, limits: Limits) -> Iterator[FieldError]:
    if record.dose is not None:
        for name in ("weight_kg", "rate_mg_per_kg_per_hr", "total_mg"):
            yield from _out_of_range(
                f"dose.{name}", getattr(record.dose, name), getattr(limits.dose, name)
            )
    for index, change in enumerate(record.rate_changes):
        yield from _out_of_range(
            f"rate_changes[{index}].rate_mg_per_kg_per_hr",
            change.rate_mg_per_kg_per_hr,
            limits.dose.rate_mg_per_kg_per_hr,
        )
    if (
        record.status in ("in_progress", "completed", "stopped_early")
        and record.infusion_start is None
    ):
        yield FieldError("infusion_start", f"required when status is {record.status}")
    # A completed session without an infusion end is accepted: the infusion was given and the
    # EHR must learn of it; the protocol checks report the missing end (a DetectedIssue).
    if (
        record.infusion_start
        and record.infusion_end
        and record.infusion_end < record.infusion_start
    ):
        yield FieldError("infusion_end", "is before infusion_start")
    if (
        record.infusion_start
        and record.discharged_at
        and record.discharged_at < record.infusion_start
    ):
        yield FieldError("discharged_at", "is before infusion_start")
    if record.infusion_end and record.discharged_at and record.discharged_at < record.infusion_end:
        yield FieldError("discharged_at", "is before infusion_end")
    for index, change in enumerate(record.rate_changes):
        if record.infusion_start and change.at < record.infusion_start:
            yield FieldError(f"rate_changes[{index}].at", "is before infusion_start")
        if record.infusion_end and change.at > record.infusion_end:
            yield FieldError(f"rate_changes[{index}].at", "is after infusion_end")


def _adverse_event_problems(record: AdverseEvent) -> Iterator[FieldError]:
    if record.resolved_at is not None and record.resolved_at < record.onset_at:
        yield FieldError("resolved_at", "is before onset_at")
    if record.event == "OTHER" and not record.description:
        yield FieldError("description", "required when event is OTHER")


def _fasting_problems(record: FastingAttestation) -> Iterator[FieldError]:
    for name in ("last_solid_food_at", "last_clear_liquid_at"):
        moment = getattr(record, name)
        if moment is not None and moment > record.attested_at:
            yield FieldError(name, "is after attested_at")


PLANNED = frozenset({"scheduled_start"})
"""The only moment a record may give in the future: when a session is planned to start (it is
held to the past's bounds all the same)."""


def _types_in(annotation: Any) -> set[Any]:
    if isinstance(annotation, type):
        return {annotation}
    return {found for part in get_args(annotation) for found in _types_in(part)}


@functools.cache
def _moments(model: type[BaseModel]) -> tuple[tuple[str, type[BaseModel] | None], ...]:
    """The fields of a record's model that hold a charted moment (None beside them), or models
    (or lists of them) that do (the model)."""
    found: list[tuple[str, type[BaseModel] | None]] = []
    for name, info in model.model_fields.items():
        types = _types_in(info.annotation)
        if datetime in types:
            found.append((name, None))
        found += [
            (name, kind)
            for kind in types
            if issubclass(kind, BaseModel) and kind is not model and _moments(kind)
        ]
    return tuple(found)


def _moments_out_of_time(
    model: BaseModel,
    bounds: MomentLimits,
    latest: datetime | None,
    born: date | None,
    path: str = "",
) -> Iterator[FieldError]:
    """The moments of a record past `latest` (None: not looked for), of a year before the
    earliest (`mappings/limits.yaml`), or before the patient's birth date `born`."""
    for name, nested in _moments(type(model)):
        value = getattr(model, name)
        if value is None:
            continue
        if nested is None:
            where = f"{path}{name}"
            if latest is not None and value > latest and name not in PLANNED:
                yield FieldError(
                    where,
                    f"is in the future: more than {bounds.ahead_hours:g} hours past the "
                    "adapter's clock",
                )
            elif value.year < bounds.earliest_year:
                yield FieldError(where, f"is before {bounds.earliest_year}")
            elif born is not None and value.date() < born:
                yield FieldError(where, "is before the patient's birth date")
        elif isinstance(value, list):
            for index, item in enumerate(value):
                where = f"{path}{name}[{index}]."
                yield from _moments_out_of_time(item, bounds, latest, born, where)
        else:
            yield from _moments_out_of_time(value, bounds, latest, born, f"{path}{name}.")


def _out_of_time(record: AnyRecord, bounds: MomentLimits) -> list[FieldError]:
    """A record's moments that have not come yet (but when a session is planned to start), or
    that came before the earliest year or before the patient was born, and a patient born
    after today or before the earliest year (`moments` in mappings/limits.yaml). A withdrawal
    is held to none of it (it is how such a record is taken back), and the moments of a
    session still a plan may lie ahead."""
    if record.withdrawn:
        return []
    latest = datetime.now(UTC) + timedelta(hours=bounds.ahead_hours)
    born = record.patient.birth_date
    unborn: list[FieldError] = []
    if born is not None and born > latest.date():
        unborn, born = [FieldError("patient.birth_date", "is after today")], None
    elif born is not None and born.year < bounds.earliest_year:
        unborn = [FieldError("patient.birth_date", f"is before {bounds.earliest_year}")]
        born = None
    planned = isinstance(record, InfusionSession) and record.status == "scheduled"
    ahead = None if planned else latest
    return unborn + list(_moments_out_of_time(record, bounds, ahead, born))


def plausibility_problems(record: AnyRecord, limits: Limits) -> list[FieldError]:
    """What the schema cannot say: impossible values, moments that have not come yet (a year
    mistyped would chart a vital sign in 2062) or came before 1900 or before the patient was
    born, and fields that contradict each other. A withdrawn record is checked too, but for
    its moments: what it says is stored and shown, withdrawn or not."""
    return _out_of_time(record, limits.moments) + list(_contradictions(record, limits))


def _contradictions(record: AnyRecord, limits: Limits) -> Iterator[FieldError]:
    if isinstance(record, Vitals):
        yield from _vitals_problems(record, limits)
    elif isinstance(record, InfusionSession):
        yield from _session_problems(record, limits)
    elif isinstance(record, AdverseEvent):
        yield from _adverse_event_problems(record)
    elif isinstance(record, FastingAttestation):
        yield from _fasting_problems(record)


class _Refused(ValueError):
    def __init__(self, error: FieldError) -> None:
        super().__init__(error.reason)
        self.error = error


def _once_each(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object's members, refused when a key is given twice (a JSON parser would keep one
    of them without a word) or a key or text holds a NUL character."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise _Refused(FieldError(key, "given more than once in the same object"))
        texts = value if isinstance(value, list) else [value]
        if "\x00" in key or any(isinstance(text, str) and "\x00" in text for text in texts):
            raise _Refused(FieldError(key, "holds a NUL character (\\u0000)"))
        found[key] = value
    return found


_KEY = re.compile(rb'"([^"\\]*)"\s*:')


def _maybe_repeated(raw: bytes) -> bool:
    """Whether a key may appear twice in one object or a text hold a NUL: only then is the
    record parsed again to look closer. (Any backslash may escape either, so it is a reason
    too; a key may well recur in different objects.)"""
    if b"\\" in raw:
        return True
    keys = _KEY.findall(raw)
    return len(set(keys)) < len(keys)


def _member_problems(raw: bytes) -> list[FieldError]:
    """Duplicate keys and NUL characters, which the schema's parser cannot see."""
    if not _maybe_repeated(raw):
        return []
    try:
        json.loads(raw, object_pairs_hook=_once_each, parse_int=read_integer)
    except _Refused as refused:
        return [refused.error]
    except (ValueError, RecursionError):
        return []  # malformed: the schema's parser says where
    return []


_DIGITS_AND_POINT = bytes.maketrans(b"123456789.", b"0" * 10)
_SEVENTEEN = b"0" * 17
"""Digits and points, seventeen in a row: a number this long, or one with an exponent, is the
only kind a float may read as 0 or as infinity."""


def _maybe_not_held(raw: bytes) -> bool:
    """Whether the record may hold a number written with an exponent or at great length: only
    then is it parsed again to look closer (a text may well hold such characters too)."""
    masked = raw.translate(_DIGITS_AND_POINT)
    return b"0e" in masked or b"0E" in masked or _SEVENTEEN in masked


def _not_held(sent: object, kept: object, path: str) -> Iterator[FieldError]:
    """The numbers of a record, as `sent`, that it cannot keep. `kept` is the value validated,
    None in a field outside the format: such a field is kept as sent, but for a number that
    could not be read back and shown (beyond a float, or an integer beyond 64 bits); in the
    format's own fields a number a float reads as 0 is refused too."""
    if isinstance(sent, Decimal | float):
        number = float(sent)
        if not math.isfinite(number):
            yield FieldError(path, "too large for a number to hold")
        elif number == 0 and sent != 0 and kept is not None:
            yield FieldError(path, "too small for a number to hold: it would be kept as 0")
    elif type(sent) is int and kept is None and not -(2**63) <= sent < 2**64:
        yield FieldError(path, "too large for a number to hold (an integer beyond 64 bits)")
    elif isinstance(sent, dict):
        known = type(kept).model_fields if isinstance(kept, BaseModel) else {}
        for name, member in sent.items():
            where = f"{path}.{name}" if path else name
            yield from _not_held(member, getattr(kept, name) if name in known else None, where)
    elif isinstance(sent, list):
        items = kept if isinstance(kept, list) else []
        for index, member in enumerate(sent):
            item = items[index] if index < len(items) else None
            yield from _not_held(member, item, f"{path}[{index}]")


def _number_problems(raw: bytes, record: AnyRecord) -> list[FieldError]:
    """Numbers of the record that its floats do not hold as they were sent: so small that they
    were read as 0 (an ETCO2 of 1.0e-400, read as no CO2 at all) or so large that they were
    read as infinity. (A number with more digits than a float keeps is read as the nearest
    float, and the record keeps the digits as they were sent.)"""
    if not _maybe_not_held(raw):
        return []
    return _out_of_reach(raw, record)


def _out_of_reach(raw: bytes, record: AnyRecord | None = None) -> list[FieldError]:
    """`_not_held` of the record as sent: without the `record` validated, every field is
    looked at as one outside the format."""
    try:
        sent = json.loads(raw, parse_float=Decimal, parse_int=read_integer)
    except (ValueError, RecursionError):
        return []  # malformed: the schema's parser says where
    return list(_not_held(sent, record, ""))


def _named_site(raw: bytes) -> Any:
    try:
        data: Any = read_json(raw)
    except orjson.JSONDecodeError:
        return None  # malformed: the schema's parser says where
    return data.get("clinic_site") if isinstance(data, dict) else None


def validate_record(
    raw: bytes, context: IntakeContext, bound: frozenset[str] | None = None
) -> ValidatedRecord | list[FieldError]:
    """Validate one record's JSON; the result is the record or every reason it was refused.
    In a group, the record is read with its site's configuration (`bound`: the sites the
    sender's credential may write for; None: any)."""
    members = _member_problems(raw)
    if members:
        return members
    site: str | None = None
    if context.sites or b'"clinic_site"' in raw:
        chosen = context.site_context(_named_site(raw), bound)
        if isinstance(chosen, FieldError):
            return [chosen]
        site, context = chosen
    try:
        record = _RECORD.validate_json(raw, strict=True, context={"time_zone": context.time_zone})
    except ValidationError as exc:
        return _schema_errors(exc, raw)
    if site is not None and record.clinic_site != site:
        record = record.model_copy(update={"clinic_site": site})
    problems = _number_problems(raw, record) or plausibility_problems(record, context.limits)
    if problems:
        return problems
    parsed = record.model_dump_json(exclude_none=True)
    warnings = [
        f"{path}: not in the record format; kept in the stored record, not mapped"
        for path in unknown_fields(record)
    ]
    return ValidatedRecord(
        record=record,
        raw=raw.decode("utf-8"),
        parsed=parsed,
        content_hash=hashlib.sha256(parsed.encode()).hexdigest(),
        warnings=warnings,
    )


def identify(raw: bytes) -> tuple[str | None, str | None, int | None]:
    """Best-effort record_type, id and revision of a refused record, for its outcome line.

    Values are echoed only when they have the shape the format allows, so a refused record can
    never smuggle arbitrary text into a response or a log.
    """
    try:
        data: Any = read_json(raw)
    except orjson.JSONDecodeError:
        return None, None, None
    if not isinstance(data, dict):
        return None, None, None
    record_type = data.get("record_type") if data.get("record_type") in RECORD_TYPES else None
    source_id = data.get("id")
    if not isinstance(source_id, str) or not _SOURCE_ID.fullmatch(source_id):
        source_id = None
    revision = data.get("revision")
    if not isinstance(revision, int) or isinstance(revision, bool):
        revision = None
    return record_type, source_id, revision
