"""GET /fhir/metadata: a CapabilityStatement generated from what the endpoint serves."""

from typing import Any

from fastapi import APIRouter, Depends, Request

from adapter import __version__
from adapter.api.deps import public_base
from adapter.api.fhir.wire import FHIR_JSON, FhirResponse, Negotiated, fhir_base
from adapter.fhir import FHIR_VERSION
from adapter.fhir.search_params import INCLUDES, REVINCLUDES, SEARCH_PARAMS
from adapter.fhir.us_core import SUPPORTED_PROFILES
from adapter.security.access import open_access

router = APIRouter()

_BULK = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition"
_EXPORT = f"{_BULK}/export"
_PATIENT_EXPORT = f"{_BULK}/patient-export"
_GROUP_EXPORT = f"{_BULK}/group-export"

_SPECIAL = [
    {"name": "_id", "type": "token", "documentation": "The resource id"},
    {"name": "_lastUpdated", "type": "date", "documentation": "When this version was stored"},
]


_SECURITY_SERVICE = "http://terminology.hl7.org/CodeSystem/restful-security-service"
_OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


def capability_statement(base: str, token_url: str) -> dict[str, Any]:
    resources = []
    for resource_type, params in SEARCH_PARAMS.items():
        profiles = SUPPORTED_PROFILES.get(resource_type)
        resources.append(
            {
                "type": resource_type,
                **({"supportedProfile": profiles} if profiles else {}),
                "interaction": [
                    {"code": code}
                    for code in ("read", "vread", "history-instance", "history-type", "search-type")
                ],
                "versioning": "versioned",
                "readHistory": True,
                "updateCreate": False,
                "conditionalRead": "full-support",
                "searchInclude": INCLUDES.get(resource_type, []),
                "searchRevInclude": REVINCLUDES.get(resource_type, []),
                "searchParam": [
                    *_SPECIAL,
                    *(
                        {"name": p.name, "type": p.type, "documentation": p.description}
                        for p in params.values()
                    ),
                ],
            }
        )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": "2026-11-26",
        "kind": "instance",
        "software": {"name": "infusion-ehr-adapter", "version": __version__},
        "implementation": {"description": "Infusion clinic EHR adapter (read-only)", "url": base},
        "fhirVersion": FHIR_VERSION,
        "format": [FHIR_JSON, "json"],
        "rest": [
            {
                "mode": "server",
                "documentation": "Read-only: resources mapped from the clinic's records.",
                "security": {
                    "extension": [
                        {
                            "url": _OAUTH_URIS,
                            "extension": [{"url": "token", "valueUri": token_url}],
                        }
                    ],
                    "service": [
                        {"coding": [{"system": _SECURITY_SERVICE, "code": "SMART-on-FHIR"}]}
                    ],
                    "description": "SMART Backend Services: client_credentials with a signed "
                    "JWT assertion (RS384 or ES384) at the token URL; system scopes.",
                },
                "resource": resources,
                "operation": [
                    {"name": "export", "definition": _EXPORT},
                    {"name": "patient-export", "definition": _PATIENT_EXPORT},
                    {"name": "group-export", "definition": _GROUP_EXPORT},
                ],
            }
        ],
    }


@router.get(
    "/metadata", dependencies=[Negotiated, Depends(open_access)], summary="CapabilityStatement"
)
def metadata(request: Request) -> FhirResponse:
    return FhirResponse(
        capability_statement(fhir_base(request), f"{public_base(request)}/auth/token")
    )
