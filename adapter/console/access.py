"""Console sign-in: an admin API key exchanged for a session cookie (HttpOnly, SameSite=Strict,
Secure outside development), every form checked for the sign-in's CSRF token, sign-out."""

import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, Response

from adapter.console.web import (
    ConsoleRefused,
    SignInNeeded,
    check_csrf,
    form,
    one,
    page,
    redirect,
)
from adapter.errors import TooManyRequests
from adapter.runtime import Runtime
from adapter.security.access import Caller, open_access
from adapter.security.clients import Client
from adapter.store.console_sessions import COOKIE, ConsoleSessions

SIGN_IN_COOKIE = "adapter_console_sign_in"
PATH = "/console"


@dataclass(frozen=True)
class ConsoleCaller:
    client: Client
    csrf: str
    cookie: str


def _runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def _sessions(request: Request) -> ConsoleSessions:
    return ConsoleSessions(_runtime(request).store.engine)


def _signed_in(request: Request) -> ConsoleCaller:
    cookie = request.cookies.get(COOKIE, "")
    now = datetime.now(UTC)
    found = _sessions(request).find(cookie, now) if cookie else None
    client = _runtime(request).clients.get(found.client_id) if found else None
    if found is None or client is None or client.revoked_at is not None or client.role != "admin":
        raise SignInNeeded
    request.state.caller = Caller(client, None)
    caller = ConsoleCaller(client, found.csrf, cookie)
    request.state.console = caller
    return caller


async def console_admin(request: Request) -> ConsoleCaller:
    """A dependency: the admin signed in to the console with this request's cookie."""
    return await run_in_threadpool(_signed_in, request)


console_admin.access = "console:admin"  # type: ignore[attr-defined]

router = APIRouter(prefix=PATH, include_in_schema=False, dependencies=[Depends(open_access)])


def _cookie(request: Request, response: Response, name: str, value: str, seconds: int) -> None:
    secure = request.app.state.settings.env != "development"
    response.set_cookie(
        name,
        value,
        max_age=seconds,
        path=PATH,
        httponly=True,
        secure=secure,
        samesite="strict",
    )


def _form_page(request: Request, status: int = 200, message: str = "") -> HTMLResponse:
    token = secrets.token_urlsafe(24)
    response = page(request, "sign_in.html", status=status, token=token, message=message)
    _cookie(request, response, SIGN_IN_COOKIE, token, 3600)
    return response


@router.get("/sign-in")
def console_sign_in_form(request: Request) -> HTMLResponse:
    return _form_page(request)


@router.post("/sign-in")
async def console_sign_in(request: Request) -> Response:
    fields = await form(request)
    expected = request.cookies.get(SIGN_IN_COOKIE, "")
    given = one(fields, "csrf", 128)
    if not expected or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ConsoleRefused("the sign-in form is stale: load it again", status=403)
    address = request.client.host if request.client else "unknown"
    throttle = request.app.state.throttle
    try:
        throttle.check(f"console:{address}")
    except TooManyRequests:
        return _form_page(request, 429, "Too many refused sign-ins: wait a minute, then retry.")
    runtime = _runtime(request)
    key = one(fields, "api_key", 128).strip()
    client = await run_in_threadpool(runtime.clients.by_key, key) if key else None
    # The console shows and changes every site's records: a key bound to sites may not sign in.
    if client is None or client.role != "admin" or client.sites is not None:
        throttle.failed(f"console:{address}")
        return _form_page(
            request, 401, "That key is not an admin API key of this adapter (or it was revoked)."
        )
    request.state.caller = Caller(client, None)
    minutes = runtime.settings.console_session_minutes
    cookie, _ = await run_in_threadpool(
        _sessions(request).start, client.id, datetime.now(UTC), timedelta(minutes=minutes)
    )
    response = redirect(PATH)
    _cookie(request, response, COOKIE, cookie, minutes * 60)
    response.delete_cookie(SIGN_IN_COOKIE, path=PATH)
    return response


def console_router() -> APIRouter:
    """A router of console pages: each needs a signed-in admin."""
    return APIRouter(prefix=PATH, include_in_schema=False, dependencies=[Depends(console_admin)])


signed_in = console_router()


def current(request: Request) -> ConsoleCaller:
    """The signed-in admin of this request (the router's dependency found it)."""
    caller: ConsoleCaller = request.state.console
    return caller


async def checked_form(request: Request) -> dict[str, list[str]]:
    """The request's form, refused unless it carries this sign-in's CSRF token."""
    fields = await form(request)
    check_csrf(fields, current(request).csrf)
    return fields


@signed_in.post("/sign-out")
async def console_sign_out(request: Request) -> Response:
    caller = current(request)
    await checked_form(request)
    await run_in_threadpool(_sessions(request).end, caller.cookie)
    response = redirect(f"{PATH}/sign-in")
    response.delete_cookie(COOKIE, path=PATH)
    return response
