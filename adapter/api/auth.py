"""SMART Backend Services: discovery (`.well-known/smart-configuration`) and the token
endpoint, where a registered client trades a signed assertion for a short-lived access token.
See https://hl7.org/fhir/smart-app-launch/backend-services.html and conformance.html."""

from datetime import UTC, datetime
from urllib.parse import parse_qsl, urlencode

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool

from adapter.api.deps import RuntimeDep, public_base
from adapter.api.responses import JsonResponse
from adapter.errors import AdapterError, OAuthError, TooManyRequests
from adapter.fhir.search_params import SEARCH_PARAMS
from adapter.runtime import Runtime
from adapter.security.access import Caller, open_access
from adapter.security.assertions import (
    ALGORITHMS,
    AssertionRefused,
    unverified_issuer,
    verify_assertion,
)
from adapter.security.middleware import LONGEST_FORM
from adapter.security.scopes import ScopeError, parse_scopes
from adapter.security.throttle import FailureThrottle

router = APIRouter(tags=["auth"], dependencies=[Depends(open_access)])
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def token_url(request: Request) -> str:
    return f"{public_base(request)}/auth/token"


def smart_configuration_body(request: Request) -> dict[str, object]:
    scopes = ["system/*.rs", "system/*.read"]
    for resource_type in SEARCH_PARAMS:
        scopes += [f"system/{resource_type}.rs", f"system/{resource_type}.read"]
    return {
        "token_endpoint": token_url(request),
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(ALGORITHMS),
        "scopes_supported": scopes,
        "scopes_granted_when_none_asked": "the scopes registered for the client",
        "capabilities": ["client-confidential-asymmetric", "permission-v1", "permission-v2"],
    }


@router.get("/.well-known/smart-configuration", summary="SMART configuration (discovery)")
def smart_configuration(request: Request) -> JsonResponse:
    return JsonResponse(smart_configuration_body(request))


@router.get(
    "/fhir/.well-known/smart-configuration",
    summary="SMART configuration, relative to the FHIR base",
)
def fhir_smart_configuration(request: Request) -> JsonResponse:
    return JsonResponse(smart_configuration_body(request))


def _issue(request: Request, runtime: Runtime, form: dict[str, str], address: str) -> JsonResponse:
    if form.get("grant_type") != "client_credentials":
        raise OAuthError("unsupported_grant_type", "grant_type must be client_credentials")
    if form.get("client_assertion_type") != JWT_BEARER:
        raise OAuthError("invalid_request", f"client_assertion_type must be {JWT_BEARER}")
    assertion = form.get("client_assertion", "")
    if not assertion:
        raise OAuthError("invalid_request", "client_assertion is required")
    claimed = unverified_issuer(assertion)
    if claimed:
        request.state.audited_query += "&" + urlencode({"iss": claimed})
    throttle: FailureThrottle = request.app.state.throttle
    by_address = f"address:{address}"
    _throttled(throttle, by_address)
    now = datetime.now(UTC)
    try:
        verified = verify_assertion(
            assertion, {token_url(request)}, runtime.clients, request.app.state.key_fetcher, now
        )
    except AssertionRefused as refused:
        # Only a refusal after the signature verified counts against the client: an unsigned
        # assertion naming a client must not lock that client out.
        throttle.failed(by_address, *([f"client:{refused.client_id}"] * bool(refused.client_id)))
        raise OAuthError("invalid_client", str(refused), status=401) from None
    _throttled(throttle, f"client:{verified.client.id}")
    try:
        asked = parse_scopes(form.get("scope", ""))
    except ScopeError as error:
        raise OAuthError("invalid_scope", str(error)) from None
    # A request without a scope is granted the client's registered scopes (OAuth 2.0, RFC 6749
    # section 3.3: the server may use a pre-defined default); scopes beyond them are refused.
    grant = verified.client.grant.narrowed(asked) if asked else verified.client.grant
    if not grant.scopes:
        raise OAuthError("invalid_scope", "none of the scopes asked for is allowed to this client")
    request.state.caller = Caller(verified.client, grant)
    seconds = runtime.settings.access_token_seconds
    token = runtime.clients.issue_token(verified.client, grant, now, seconds)
    return JsonResponse(
        {"access_token": token, "token_type": "bearer", "expires_in": seconds, "scope": str(grant)},
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _throttled(throttle: FailureThrottle, key: str) -> None:
    """429, as an OAuth error, when `key` has failed too often of late."""
    try:
        throttle.check(key)
    except TooManyRequests as too_many:
        raise OAuthError(
            "temporarily_unavailable", too_many.message, status=429, headers=too_many.headers
        ) from None


_TOKEN_FORM = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": [
                        "grant_type",
                        "client_assertion_type",
                        "client_assertion",
                        "scope",
                    ],
                    "properties": {
                        "grant_type": {"type": "string", "enum": ["client_credentials"]},
                        "client_assertion_type": {"type": "string", "enum": [JWT_BEARER]},
                        "client_assertion": {
                            "type": "string",
                            "pattern": "^[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]+\\.[A-Za-z0-9_-]*$",
                        },
                        "scope": {
                            "type": "string",
                            "pattern": "\\S",
                            "example": "system/*.rs",
                        },
                    },
                }
            }
        },
    }
}


@router.post(
    "/auth/token",
    summary="Access token for a SMART backend client (client_credentials, private_key_jwt)",
    openapi_extra=_TOKEN_FORM,
)
async def token(request: Request, runtime: RuntimeDep) -> JsonResponse:
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("application/x-www-form-urlencoded"):
        raise OAuthError("invalid_request", "send the request as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > LONGEST_FORM:
        raise OAuthError("invalid_request", "the request is too large")
    form = dict(parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True))
    address = request.client.host if request.client else "unknown"
    request.state.audited_query = f"grant_type={form.get('grant_type', '')}"
    try:
        return await run_in_threadpool(_issue, request, runtime, form, address)
    except (OAuthError, AdapterError):
        request.app.state.metrics.token_refusals.inc()
        raise
