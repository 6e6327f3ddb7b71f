"""How the console's pages are made: Jinja2 templates rendered on the server, answered with
headers that keep them out of caches and frames, and forms read and checked for their CSRF
token."""

import hmac
import secrets
import unicodedata
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, PackageLoader, select_autoescape
from starlette.exceptions import HTTPException as StarletteHTTPException

LONGEST_FORM = 64 * 1024
Handler = Callable[[Request, Exception], Awaitable[Response]]
environment = Environment(
    loader=PackageLoader("adapter.console", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def visible(value: str) -> str:
    """Text a caller wrote, as the audit shows it: its invisible format characters (a
    right-to-left override, say, which would show `/fhir/Patient` for what was sent as
    something else) written out as `<U+202E>`."""
    return "".join(
        f"<U+{ord(c):04X}>" if unicodedata.category(c) in ("Cf", "Cc") else c for c in value
    )


environment.filters["visible"] = visible


class SignInNeeded(Exception):
    """No valid console sign-in came with the request."""


class ConsoleRefused(Exception):
    """A console request refused with a page that says why (a stale form, a bad field)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def _local(moment: datetime | None, zone: ZoneInfo | None, pattern: str) -> str:
    if moment is None:
        return ""
    return moment.astimezone(zone or UTC).strftime(pattern)


def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page with the console's security headers (a fresh style nonce each time)."""
    nonce = secrets.token_urlsafe(16)
    zone: ZoneInfo | None = context.get("zone")
    rendered = environment.get_template(template).render(
        request=request,
        console=getattr(request.state, "console", None),
        nonce=nonce,
        when=lambda m, p="%Y-%m-%d %H:%M": _local(m, zone, p),
        **context,
    )
    return HTMLResponse(rendered, status_code=status, headers=security_headers(nonce))


def security_headers(nonce: str = "") -> dict[str, str]:
    style = f"style-src 'nonce-{nonce}'" if nonce else "style-src 'none'"
    return {
        "Content-Security-Policy": f"default-src 'none'; {style}; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        "Cache-Control": "no-store",
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


async def form(request: Request) -> dict[str, list[str]]:
    """The urlencoded form of a POST, each field with all its values."""
    if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
        raise ConsoleRefused("send the form as application/x-www-form-urlencoded")
    body = await request.body()
    if len(body) > LONGEST_FORM:
        raise ConsoleRefused("the form is too large")
    fields: dict[str, list[str]] = {}
    for name, value in parse_qsl(body.decode("utf-8", "replace"), keep_blank_values=True):
        fields.setdefault(name, []).append(value)
    return fields


def one(fields: dict[str, list[str]], name: str, longest: int = 512) -> str:
    value = (fields.get(name) or [""])[0]
    if len(value) > longest:
        raise ConsoleRefused(f"{name}: longer than {longest} characters")
    return value


def check_csrf(fields: dict[str, list[str]], expected: str) -> None:
    """Every form carries the sign-in's CSRF token; a form without it, or from an older
    sign-in, is refused."""
    given = one(fields, "csrf", 128)
    if not given or not hmac.compare_digest(given.encode(), expected.encode()):
        raise ConsoleRefused(
            "the form's security token does not match this sign-in (the page was older than "
            "the sign-in, or came from elsewhere): load the page again and resend",
            status=403,
        )


async def _sign_in_needed(request: Request, _exc: Exception) -> RedirectResponse:
    return redirect("/console/sign-in")


async def _refused(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, ConsoleRefused)
    return page(request, "refused.html", status=exc.status, message=exc.message)


def _for_people(handler: Handler) -> Handler:
    """A handler of the API's errors that answers a console page's with a page: a query
    parameter out of shape, a page that is not there."""

    async def answer(request: Request, exc: Exception) -> Response:
        if not request.url.path.startswith("/console"):
            return await handler(request, exc)
        if isinstance(exc, RequestValidationError):
            said = "; ".join(
                f"{'.'.join(str(part) for part in error['loc'][1:])}: {error['msg']}"
                for error in exc.errors()[:5]
            )
            return page(request, "refused.html", status=400, message=said)
        status = exc.status_code if isinstance(exc, StarletteHTTPException) else 400
        message = "no such page in the console" if status == 404 else "that was not understood"
        return page(request, "refused.html", status=status, message=message)

    return answer


def install(app: Any) -> None:
    """The console's two errors, answered as pages: sign in, or what was wrong; and the API's
    errors about a console page too. Installed after the API's handlers, which it wraps."""
    app.add_exception_handler(SignInNeeded, _sign_in_needed)
    app.add_exception_handler(ConsoleRefused, _refused)
    for kind in (RequestValidationError, StarletteHTTPException):
        app.add_exception_handler(kind, _for_people(app.exception_handlers[kind]))
