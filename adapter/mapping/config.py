"""Loads the YAML files in mappings/ into strict pydantic models, naming file and key on error."""

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, TypeVar
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from adapter.errors import MappingFileError


class MappingModel(BaseModel):
    """Base of every mapping file model: unknown keys are an error, not a silent no-op."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class Site(MappingModel):
    """mappings/site.yaml: facts about the clinic site."""

    time_zone: str | None = Field(
        None,
        description="IANA time zone that timestamps without a UTC offset are read in; "
        "null refuses such timestamps.",
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
class Mappings:
    """Every mapping file, loaded and checked."""

    site: Site
    limits: Limits


def _key_path(loc: tuple[int | str, ...]) -> str:
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path or "(top level)"


def load_file(path: Path, model: type[M]) -> M:
    """Load one mapping file into its model; errors read `mappings/site.yaml: key.path: why`."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
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
    """Load every mapping file in `folder`; the first broken file raises MappingFileError."""
    return Mappings(
        site=load_file(folder / "site.yaml", Site),
        limits=load_file(folder / "limits.yaml", Limits),
    )
