"""The one place where an error becomes an OperationOutcome response."""

import logging
import traceback
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from adapter.api.responses import JsonResponse, OutcomeResponse
from adapter.errors import AdapterError, OAuthError

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


async def _adapter_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, AdapterError)
    body = operation_outcome(exc.issue_code, exc.message, exc.expression)
    return _respond(exc.status, body, exc.headers)


async def _oauth_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, OAuthError)
    body = {"error": exc.error, "error_description": exc.description}
    return _respond(exc.status, body, {"Cache-Control": "no-store"})


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


async def _http_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_ISSUE_CODES.get(exc.status_code, "processing")
    return _respond(exc.status_code, operation_outcome(code, str(exc.detail)), exc.headers)


async def _unexpected(_request: Request, exc: Exception) -> JsonResponse:
    # The exception's text may quote data; only its type is logged, with the traceback's frames.
    log.error(
        "unexpected error: %s\n%s",
        type(exc).__name__,
        "".join(traceback.format_tb(exc.__traceback__)),
    )
    return _respond(500, operation_outcome("exception", "internal error; it has been logged"))


def install(app: FastAPI) -> None:
    app.add_exception_handler(AdapterError, _adapter_error)
    app.add_exception_handler(OAuthError, _oauth_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
