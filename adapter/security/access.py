"""Who is calling, and may they: dependencies every route declares. API keys (a role) open the
intake and admin API; access tokens from /auth/token (SMART scopes) open the FHIR endpoint.

Each route states its access with one of these; `check_routes` refuses to build an app with a
route that states none, so that a route added later cannot be left open by mistake."""

from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.routing import APIRoute

from adapter.errors import Forbidden, Unauthorized
from adapter.security.clients import KEY_PREFIX, TOKEN_PREFIX, Client, Clients
from adapter.security.scopes import Grant

WRITE_LETTERS = {"POST": "c", "PUT": "u", "PATCH": "u", "DELETE": "d"}
OPEN = "open"
"""The access of a route anyone may call (health, CapabilityStatement, SMART discovery,
the token endpoint, which authenticates its callers itself)."""


@dataclass(frozen=True)
class Caller:
    client: Client
    grant: Grant | None
    """The scopes of an access token; None for an API-key caller."""

    def may(self, resource_type: str, letter: str) -> bool:
        return self.grant is not None and self.grant.allows(resource_type, letter)

    def require(self, resource_type: str, letter: str) -> None:
        if not self.may(resource_type, letter):
            raise Forbidden(
                f"the access token's scopes do not allow this on {resource_type} "
                f"(needs system/{resource_type}.{letter})"
            )


def _clients(request: Request) -> Clients:
    clients: Clients = request.app.state.clients
    return clients


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if not header:
        raise Unauthorized("credentials are required: Authorization: Bearer <credential>")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("only Bearer credentials are accepted", error="invalid_request")
    return value.strip()


def caller_sites(request: Request) -> frozenset[str] | None:
    """The clinic sites the request's caller is bound to (None: every site), once its access
    was checked."""
    caller: Caller | None = getattr(request.state, "caller", None)
    return caller.client.sites if caller is not None else None


def _remember(request: Request, caller: Caller) -> Caller:
    request.state.caller = caller
    return caller


def api_caller(*roles: str, site_bound: bool = False) -> Callable[[Request], Awaitable[Caller]]:
    """A dependency: an API key of a client with one of the roles (admin may do everything).
    A key bound to sites passes only where `site_bound` says the route answers for the key's
    sites alone; the group-wide APIs (sync, audit, mapping, metrics) refuse it, since what they
    show and do spans every site."""
    allowed = {*roles, "admin"}

    async def dependency(request: Request) -> Caller:
        credential = _bearer(request)
        if credential.startswith(TOKEN_PREFIX):
            raise Unauthorized(
                "this API takes an API key, not a FHIR access token", error="invalid_token"
            )
        client = _clients(request).by_key(credential) if credential.startswith(KEY_PREFIX) else None
        if client is None:
            raise Unauthorized("the API key is not known or was revoked", error="invalid_token")
        caller = _remember(request, Caller(client, None))
        if client.role not in allowed:
            raise Forbidden(f"this needs the role {' or '.join(sorted(allowed))}")
        if client.sites is not None and not site_bound:
            raise Forbidden(
                "this API spans every site of the clinic group: a key bound to sites may not use it"
            )
        return caller

    dependency.access = "role:" + ",".join(sorted(allowed))  # type: ignore[attr-defined]
    return dependency


def token_caller(request: Request) -> Caller:
    """The holder of the request's unexpired access token, whatever its scopes."""
    credential = _bearer(request)
    if credential.startswith(KEY_PREFIX):
        raise Unauthorized(
            "the FHIR endpoint takes an access token from /auth/token, not an API key",
            error="invalid_token",
        )
    holder = _clients(request).by_token(credential, datetime.now(UTC))
    if holder is None:
        raise Unauthorized("the access token is not known or has expired", error="invalid_token")
    return _remember(request, Caller(holder.client, holder.grant))


async def fhir_caller(request: Request) -> Caller:
    """A dependency: the holder of an unexpired access token, whatever its scopes. (Async:
    the check is a memo lookup, not worth a hop to the thread pool.)"""
    return token_caller(request)


fhir_caller.access = "token"  # type: ignore[attr-defined]


def fhir_scope(letter: str) -> Callable[..., Awaitable[Caller]]:
    """A dependency: a token whose scopes allow `letter` on the path's resource type."""

    async def dependency(request: Request) -> Caller:
        # The type is read from the path here, not declared: FastAPI resolves each declared
        # parameter on every request, and this runs on every read.
        caller = token_caller(request)
        caller.require(request.path_params["resource_type"], letter)
        return caller

    dependency.access = f"scope:{letter}"  # type: ignore[attr-defined]
    return dependency


async def fhir_write(request: Request) -> Caller:
    """A dependency of the write routes: a token with the write scope (the route then says
    that this endpoint takes no writes). The type is read from the path, as in `fhir_scope`."""
    caller = token_caller(request)
    caller.require(request.path_params["resource_type"], WRITE_LETTERS.get(request.method, "c"))
    return caller


fhir_write.access = "scope:write"  # type: ignore[attr-defined]


async def open_access() -> None:
    """A dependency that lets anyone in, stated on purpose."""


open_access.access = OPEN  # type: ignore[attr-defined]

CallerDep = Annotated[Caller, Depends(fhir_caller)]


def route_access(route: APIRoute) -> list[str]:
    """The access each dependency of a route states (empty: the route states none)."""
    found: list[str] = []

    def walk(dependant: Any) -> None:
        for sub in dependant.dependencies:
            access = getattr(sub.call, "access", None)
            if access:
                found.append(access)
            walk(sub)

    walk(route.dependant)
    return found


def all_routes(routes: Iterable[Any], prefix: str = "") -> list[tuple[str, APIRoute]]:
    """Every API route of the app with its full path, through included routers."""
    found: list[tuple[str, APIRoute]] = []
    for route in routes:
        if hasattr(route, "original_router"):
            found += all_routes(route.original_router.routes, prefix + route.include_context.prefix)
        elif isinstance(route, APIRoute):
            found.append((prefix + route.path, route))
    return found


def check_routes(app: FastAPI) -> None:
    """Refuse an app in which some route states no access, or is not an API route (whose
    dependencies would not run)."""
    unguarded = [
        f"{sorted(route.methods or [])} {path}"
        for path, route in all_routes(app.routes)
        if not route_access(route)
    ]
    unguarded += [
        str(getattr(route, "path", route))
        for route in app.routes
        if not hasattr(route, "original_router") and not isinstance(route, APIRoute)
    ]
    if unguarded:
        raise RuntimeError("routes that state no access: " + ", ".join(unguarded))
