"""The one module that imports fhir.resources: R4B models, wire-identical to R4 for our types."""

from functools import cache
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir_core.fhirabstractmodel import FHIRAbstractModel
from pydantic import ValidationError

__all__ = ["FHIRAbstractModel", "ValidationError", "model_class", "parse"]


@cache
def model_class(resource_type: str) -> type[FHIRAbstractModel]:
    """The fhir.resources model of a resource type; KeyError when FHIR has no such type."""
    try:
        found: type[FHIRAbstractModel] = get_fhir_model_class(resource_type)
    except (KeyError, ValueError):
        raise KeyError(resource_type) from None
    return found


def parse(resource: dict[str, Any]) -> FHIRAbstractModel:
    """Validate a resource with its fhir.resources model; raises pydantic's ValidationError."""
    return model_class(str(resource.get("resourceType"))).model_validate(resource)
