"""The one place where an error becomes an OperationOutcome response."""

import logging
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from adapter.api.responses import JsonResponse, OutcomeResponse
from adapter.errors import AdapterError, OAuthError
from adapter.logs import without_text
from adapter.security.access import all_routes

log = logging.getLogger(__name__)

_HTTP_ISSUE_CODES = {404: "not-found", 405: "not-supported", 406: "not-supported", 413: "too-long"}


def operation_outcome(
    code: str, diagnostics: str, expression: list[str] | None = None, severity: str = "error"
) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        issue["expression"] = expression
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def _respond(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> JsonResponse:
    """An OperationOutcome as application/fhir+json; any other error body as JSON."""
    kind = OutcomeResponse if body.get("resourceType") == "OperationOutcome" else JsonResponse
    return kind(body, status_code=status, headers=headers)


def _allow(request: Request) -> dict[str, str]:
    """The Allow header of a 405: every method some route takes at this path, through the
    included routers (the routes that only refuse writes on the read-only FHIR endpoint take
    none), and HEAD wherever GET is taken."""
    methods: set[str] = set()
    for path, route in all_routes(request.app.router.routes):
        if route.name == "refuse_write":
            continue
        if compile_path(path)[0].match(request.url.path):
            methods |= route.methods or set()
    if "GET" in methods:
        methods.add("HEAD")
    return {"Allow": ", ".join(sorted(methods))}


async def _adapter_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, AdapterError)
    body = operation_outcome(exc.issue_code, exc.message, exc.expression)
    headers = {**exc.headers, **_allow(request)} if exc.status == 405 else exc.headers
    return _respond(exc.status, body, headers)


def oauth_error(error: str, description: str) -> dict[str, str]:
    """The body of an OAuth 2.0 error (RFC 6749, 5.2)."""
    return {"error": error, "error_description": description}


async def _oauth_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, OAuthError)
    body = oauth_error(exc.error, exc.description)
    return _respond(exc.status, body, {"Cache-Control": "no-store", **exc.headers})


async def _validation_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    issues = [
        {
            "severity": "error",
            "code": "invalid",
            "diagnostics": f"{'.'.join(str(part) for part in err['loc'])}: {err['msg']}",
            "expression": [".".join(str(part) for part in err["loc"][1:]) or str(err["loc"][0])],
        }
        for err in exc.errors()
    ]
    return _respond(400, {"resourceType": "OperationOutcome", "issue": issues})


async def _http_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ISSUE_CODES.get(exc.status_code, "processing")
    headers = {**(exc.headers or {}), **_allow(request)} if exc.status_code == 405 else exc.headers
    return _respond(exc.status_code, operation_outcome(code, str(exc.detail)), headers)


def log_unexpected(exc: BaseException) -> None:
    """Log an error no handler expected: its type and the traceback's frames, never its text,
    which may quote what a caller sent."""
    log.error("unexpected error: %s", without_text(exc))


INTERNAL_ERROR = operation_outcome("exception", "internal error; it has been logged")


async def _unexpected(_request: Request, exc: Exception) -> JsonResponse:
    log_unexpected(exc)
    return _respond(500, INTERNAL_ERROR)


def install(app: FastAPI) -> None:
    app.add_exception_handler(AdapterError, _adapter_error)
    app.add_exception_handler(OAuthError, _oauth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
