"""The OpenAPI document states every status a route can answer: its own successes, and the
errors any request may meet on the way (credentials, limits, negotiation), each with its body:
an OperationOutcome, or OAuth's error object at the token endpoint."""

import re
from collections.abc import Iterable
from typing import Any

from adapter.export.service import OUTPUT_FORMATS
from adapter.fhir.search_params import SEARCH_PARAMS
from adapter.security.access import OPEN, all_routes, route_access

OUTCOME = {"$ref": "#/components/schemas/OperationOutcome"}
OAUTH_ERROR = {"$ref": "#/components/schemas/OAuthError"}
SCHEMAS = {
    "OperationOutcome": {
        "type": "object",
        "required": ["resourceType", "issue"],
        "properties": {
            "resourceType": {"type": "string", "enum": ["OperationOutcome"]},
            "issue": {"type": "array", "items": {"type": "object"}},
        },
    },
    "OAuthError": {
        "type": "object",
        "required": ["error"],
        "properties": {"error": {"type": "string"}, "error_description": {"type": "string"}},
    },
}
ERRORS = {
    400: "Malformed request: a parameter, the body, or a NUL character in the path or query",
    401: "No credentials, or credentials not known",
    403: "Known credentials without the scope or role this needs",
    404: "Nothing there",
    409: "The service is not set up for this (no EHR configured)",
    406: "Only JSON is served",
    408: "The body did not arrive in time",
    413: "The body is over the limit",
    415: "A media type this route does not take, or a content coding other than gzip or deflate",
    429: "Too many at once, or too many refusals; see Retry-After",
    503: "The store is unavailable; nothing was changed",
}
SUCCESSES: dict[str, dict[int, str]] = {
    "read": {304: "Not modified (If-None-Match)"},
    "export_system": {202: "Accepted; poll Content-Location"},
    "export_patients": {202: "Accepted; poll Content-Location"},
    "export_group": {202: "Accepted; poll Content-Location"},
    "export_system_posted": {202: "Accepted; poll Content-Location"},
    "export_patients_posted": {202: "Accepted; poll Content-Location"},
    "export_group_posted": {202: "Accepted; poll Content-Location"},
    "export_status": {202: "Still running; see X-Progress and Retry-After"},
    "export_cancel": {202: "Cancelled"},
    "submit_records": {207: "Some records rejected", 422: "Every record rejected"},
    "run_now": {202: "Scheduled"},
    "health": {503: "The store does not answer"},
}
"""Statuses routes answer by design beside 200, by the route's function name."""
LIMITED = {
    "export_system",
    "export_patients",
    "export_group",
    "export_system_posted",
    "export_patients_posted",
    "export_group_posted",
    "token",
}
MEDIA_CHECKED = {"submit_records"}
UNAVAILABLE = {"submit_records"}
CONFLICTING = {"run_now"}
FHIR_TOO = {"audit"}
"""Routes of the admin API that also answer FHIR (format=fhir)."""
JSON_BODIES = ("application/json", "application/fhir+json")
_ONE_TYPE = "(" + "|".join(SEARCH_PARAMS) + ")"
EXPORT_PARAMETERS = {
    "prefer": {"type": "string", "pattern": "respond-async"},
    "_type": {"type": "string", "pattern": f"^{_ONE_TYPE}(,{_ONE_TYPE})*$"},
    "_since": {"type": "string", "format": "date-time"},
    "_outputFormat": {"type": "string", "enum": sorted(OUTPUT_FORMATS)},
}
"""What the Bulk Data kick-off takes, stated as exactly as a schema can (Prefer is required)."""


def _export_parameters(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        if parameter["name"] in EXPORT_PARAMETERS:
            parameter["schema"] = EXPORT_PARAMETERS[parameter["name"]]
            parameter["required"] = parameter["name"] == "prefer" or parameter["required"]


NO_NUL = "^[^\\u0000]*$"
"""No text the service takes may hold a NUL character (PostgreSQL's text cannot)."""


def _no_nul(operation: dict[str, Any]) -> None:
    for parameter in operation.get("parameters", []):
        kind = parameter.get("schema", {})
        for schema in [kind, *kind.get("anyOf", [])]:
            if schema.get("type") == "string" and not {"pattern", "enum", "format"} & set(schema):
                schema["pattern"] = NO_NUL


def _fhir_content(operation: dict[str, Any]) -> None:
    """A route that negotiates answers application/fhir+json (application/json asked for)."""
    found = operation.get("responses", {}).get("200", {}).get("content")
    if found and "application/json" in found:
        found.setdefault("application/fhir+json", found["application/json"])


def _errors(name: str, path: str, method: str, open_: bool, negotiates: bool) -> set[int]:
    statuses = {400}
    if not open_:
        statuses |= {401, 403}
    if name == "token":
        statuses.add(401)  # invalid_client
    if "{" in path or path.startswith("/fhir/$export-") or name == "export_status":
        statuses.add(404)
    if negotiates:
        statuses.add(406)
    if method in ("post", "put", "patch"):
        statuses |= {408, 413, 415}
    if name in MEDIA_CHECKED:
        statuses.add(415)
    if name in LIMITED:
        statuses.add(429)
    if name in UNAVAILABLE:
        statuses.add(503)
    if name in CONFLICTING:
        statuses.add(409)
    return statuses


def _error_response(status: int, oauth: bool) -> dict[str, Any]:
    if oauth:
        return {
            "description": ERRORS[status],
            "content": {"application/json": {"schema": OAUTH_ERROR}},
        }
    return {
        "description": ERRORS[status],
        "content": {media: {"schema": OUTCOME} for media in JSON_BODIES},
    }


def document_statuses(routes: Iterable[Any], schema: dict[str, Any], negotiating: set[str]) -> None:
    """Put each route's possible statuses into its OpenAPI operations. `negotiating`: the
    names of the routes that answer 406."""
    schema.setdefault("components", {}).setdefault("schemas", {}).update(SCHEMAS)
    for path, route in all_routes(routes):
        operations = schema["paths"].get(re.sub(r"{(\w+):\w+}", r"{\1}", path), {})
        name = route.endpoint.__name__
        open_ = OPEN in route_access(route)
        for method in route.methods or ():
            operation = operations.get(method.lower())
            if operation is None:
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            if name in negotiating or name in FHIR_TOO:
                _fhir_content(operation)
            if name.startswith("export_") and name in LIMITED:
                _export_parameters(operation)
            _no_nul(operation)
            if name != "submit_records":
                responses.pop("422", None)
            for status, description in SUCCESSES.get(name, {}).items():
                responses.setdefault(str(status), {"description": description})
            for status in sorted(_errors(name, path, method.lower(), open_, name in negotiating)):
                error = _error_response(status, oauth=name == "token")
                responses.setdefault(str(status), error)
