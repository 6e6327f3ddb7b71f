"""The outermost layer of the service: the caller's address, request targets and bodies within
limits (a body is read only once its sender has authenticated), no error's text in a log, and
an audit entry for every request once its answer is sent."""

import asyncio
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import anyio.to_thread
import orjson
from fastapi.routing import APIRoute
from starlette.convertors import Convertor
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapter.api.outcome import INTERNAL_ERROR, log_unexpected, oauth_error, operation_outcome
from adapter.errors import (
    AdapterError,
    BadRequest,
    MalformedJson,
    PayloadTooLarge,
    RequestTimeout,
    UnsupportedMediaType,
)
from adapter.security.access import all_routes
from adapter.security.audit import INTERACTIONS, MOST_IDS, UNAUDITED, AuditEntry, AuditWriter
from adapter.security.clients import KEY_PREFIX, TOKEN_PREFIX, Clients
from adapter.security.forwarded import Networks, caller_address
from adapter.security.json_depth import json_depth
from adapter.store.console_sessions import ConsoleSessions, cookie_value

TOKEN_PATH = "/auth/token"
CONSOLE_SIGN_IN = "/console/sign-in"
OPEN_FORMS = (TOKEN_PATH, CONSOLE_SIGN_IN)
LONGEST_FORM = 16 * 1024
"""The largest body of the token endpoint and the console's sign-in form, the open routes that
take a body (each authenticates its callers itself)."""
BODILESS = ("GET", "HEAD", "DELETE", "OPTIONS")
DEPTH_ON_LOOP = 64 * 1024
"""Bodies up to this size are checked for depth on the event loop (well under a millisecond);
larger ones in a worker thread, so that no body holds the other requests."""


CODINGS = {b"gzip": 31, b"x-gzip": 31, b"deflate": 15}
"""The content codings a body may come in (RFC 9110 8.4.1), with the window bits zlib reads
each with: gzip's members, deflate's zlib stream."""
MEMBERS = 16
"""The most gzip members a body may hold, one after another: each is decoded apart, the rest of
the body copied each time, and a body of thousands of tiny members would take minutes."""
ACCEPT_ENCODING = {"Accept-Encoding": "gzip, deflate, identity"}
"""Said with a 415 for a content coding not taken (RFC 9110 12.5.3)."""


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    max_depth: int
    timeout_seconds: float


def _headers(scope: Scope) -> dict[bytes, bytes]:
    return dict(scope.get("headers", []))


def _is_json(headers: dict[bytes, bytes]) -> bool:
    """JSON by its media type, or no media type at all (FastAPI reads such a body as JSON)."""
    content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
    return not content_type.strip() or "json" in content_type


def _coding(scope: Scope) -> bytes:
    """The body's content coding, every Content-Encoding line of the request read as one list
    (two lines saying gzip are a body coded twice); none named is identity."""
    named = [
        value.strip() for name, value in scope.get("headers", []) if name == b"content-encoding"
    ]
    return b", ".join(value for value in named if value).lower() or b"identity"


def _with_nul(scope: Scope) -> bool:
    """A NUL in the path or query: no id, search value or filter may hold one (PostgreSQL's
    text cannot)."""
    return "\x00" in scope.get("path", "") or b"%00" in scope.get("query_string", b"")


CLOSE = (b"connection", b"close")
UNREAD = "body_unread"
"""Set in a request's state when its body is not read: its answer closes the connection."""


async def _refuse(send: Send, error: AdapterError, oauth: bool, close: bool = False) -> None:
    """The answer to an error found before the app's exception handlers are in reach: an
    OperationOutcome, or OAuth's error object at the token endpoint; with `close`, the
    connection closed after it."""
    if oauth:
        body = orjson.dumps(oauth_error("invalid_request", error.message))
        media_type = b"application/json"
    else:
        body = orjson.dumps(operation_outcome(error.issue_code, error.message))
        media_type = b"application/fhir+json"
    headers = [(b"content-type", media_type), (b"content-length", str(len(body)).encode())]
    headers += [(name.lower().encode(), value.encode()) for name, value in error.headers.items()]
    if close:
        headers.append(CLOSE)
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app `body` once, then whatever the connection says next."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


def _too_deep(body: bytes, lines: bool, deepest: int) -> str | None:
    """Why the body is refused for its nesting, if it is. NDJSON (`lines`) is measured line by
    line, as its records are read (a line cannot close what another opened), naming the first
    line nested too deep."""
    said = f"JSON nested deeper than {deepest} levels"
    if not lines:
        return said if json_depth(body) > deepest else None
    for number, line in enumerate(body.split(b"\n"), start=1):
        if json_depth(line) > deepest:
            return f"line {number}: {said}"
    return None


def _decoded(body: bytes, coding: bytes, largest: int) -> bytes | AdapterError:
    """The body as it was before its content coding, refused past `largest` bytes decoded (a
    small body may decode to a great one: it is never decoded further than that), or when it
    is not what its coding says. A gzip body may hold several members, one after another; an
    empty body is empty whatever its coding."""
    name = coding.decode("latin-1")
    parts: list[bytes] = []
    size = 0
    rest = body
    members = 0
    while rest:
        if members == MEMBERS:
            return BadRequest(f"the body holds more than {MEMBERS} {name} members")
        members += 1
        inflater = zlib.decompressobj(CODINGS[coding])
        try:
            parts.append(inflater.decompress(rest, largest + 1 - size))
        except zlib.error:
            return BadRequest(f"the body is not {name} as its Content-Encoding says")
        size += len(parts[-1])
        if size > largest:
            return PayloadTooLarge(
                f"the body, decoded from {name}, is over the limit of {largest} bytes"
            )
        if not inflater.eof:
            return BadRequest(f"the body is not {name} as its Content-Encoding says: it ends early")
        rest = inflater.unused_data
        if rest and coding == b"deflate":  # one zlib stream; gzip may hold several members
            return BadRequest(
                f"the body is not {name} as its Content-Encoding says: it goes on past its end"
            )
    return b"".join(parts)


class Guard:
    """ASGI middleware: caller address, limits, then the audit entry of the request."""

    def __init__(
        self,
        app: ASGIApp,
        writer: AuditWriter,
        clients: Clients,
        limits: BodyLimits,
        proxies: Networks,
        routes: Sequence[BaseRoute],
    ) -> None:
        self.app = app
        self.writer = writer
        self.clients = clients
        self.limits = limits
        self.proxies = proxies
        self.routes = routes
        self._paths: list[tuple[re.Pattern[str], dict[str, Convertor[Any]], APIRoute]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope = self._addressed(scope)
        status = {"code": 500, "started": False, "audited": False}

        def audit() -> None:
            # Kept before the answer's last byte leaves: whoever has the answer finds its entry.
            if not status["audited"]:
                status["audited"] = True
                self._audit(scope, int(status["code"]))

        async def remember(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["started"] = True
                if scope.get("state", {}).get(UNREAD):
                    message = {**message, "headers": [*message.get("headers", []), CLOSE]}
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                audit()
            await send(message)

        try:
            refused = await self._limits(scope, receive)
            if isinstance(refused, AdapterError):
                status["code"] = refused.status
                audit()
                # The body is left unread, or read in part: the connection is closed after
                # the answer, not kept for a sender that may trickle the rest for ever.
                await _refuse(send, refused, oauth=scope["path"] == TOKEN_PATH, close=True)
            else:
                await self.app(scope, refused, remember)
        except Exception as exc:  # no handler took it: answer 500, log no text of it
            log_unexpected(exc)
            if not status["started"]:
                status["code"] = 500
                body = orjson.dumps(INTERNAL_ERROR)
                await send(
                    {
                        "type": "http.response.start",
                        "status": 500,
                        "headers": [(b"content-type", b"application/fhir+json")],
                    }
                )
                await send({"type": "http.response.body", "body": body})
        finally:
            audit()

    def _addressed(self, scope: Scope) -> Scope:
        """The scope with the caller's address: a forwarded one only from a trusted proxy."""
        client = scope.get("client")
        if not self.proxies or not client:
            return scope
        forwarded = _headers(scope).get(b"x-forwarded-for", b"").decode("latin-1")
        address = caller_address(client[0], forwarded, self.proxies)
        if address == client[0]:
            return scope
        return {**scope, "client": (address, 0)}

    async def _limits(self, scope: Scope, receive: Receive) -> Receive | AdapterError:
        """The body, read within the limits once its sender is known, handed on; or why the
        request is refused. An unknown sender's body is never read: the app answers 401."""
        if _with_nul(scope):
            return BadRequest(
                "the path or query holds a NUL character (%00), which no id, "
                "search value or filter may contain"
            )
        if scope["method"] in BODILESS:
            return receive
        headers = _headers(scope)
        if scope["path"] in OPEN_FORMS:
            largest = min(self.limits.max_bytes, LONGEST_FORM)
        else:
            client_id = await self._authenticated(headers)
            if client_id is None:
                # The app answers 401 to a body it never reads: the connection then closes.
                scope.setdefault("state", {})[UNREAD] = True
                return _replay(b"", receive)
            scope.setdefault("state", {})["authenticated_client"] = client_id
            largest = self.limits.max_bytes
        coding = _coding(scope)
        if coding != b"identity" and coding not in CODINGS:
            return UnsupportedMediaType(
                "the body's Content-Encoding is not one taken here: send it as gzip, "
                "deflate or uncompressed",
                headers=ACCEPT_ENCODING,
            )
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > largest:
            return PayloadTooLarge(f"the body is over the limit of {largest} bytes")
        try:
            async with asyncio.timeout(self.limits.timeout_seconds):
                body = await self._read(receive, largest)
        except TimeoutError:
            return RequestTimeout(
                f"the body did not arrive within {self.limits.timeout_seconds:g} seconds"
            )
        if isinstance(body, AdapterError) or body is None:
            return body or receive
        if coding in CODINGS:
            decoded = await anyio.to_thread.run_sync(_decoded, body, coding, largest)
            if isinstance(decoded, AdapterError):
                return decoded
            body = decoded
            # The app reads the body as sent before its coding: its headers say so.
            scope["headers"] = [
                (name, value)
                for name, value in scope.get("headers", [])
                if name not in (b"content-encoding", b"content-length")
            ] + [(b"content-length", str(len(body)).encode())]
        if _is_json(headers):
            lines = b"ndjson" in headers.get(b"content-type", b"").lower()
            deepest = self.limits.max_depth
            too_deep = (
                _too_deep(body, lines, deepest)
                if len(body) <= DEPTH_ON_LOOP
                else await anyio.to_thread.run_sync(_too_deep, body, lines, deepest)
            )
            if too_deep:
                return MalformedJson(too_deep)
        return _replay(body, receive)

    @staticmethod
    async def _read(receive: Receive, largest: int) -> bytes | AdapterError | None:
        """The whole body, refused past `largest` bytes; None when the caller went away."""
        chunks: list[bytes] = []
        size, more = 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > largest:
                return PayloadTooLarge(f"the body is over the limit of {largest} bytes")
        return b"".join(chunks)

    async def _authenticated(self, headers: dict[bytes, bytes]) -> str | None:
        """The id of the active client whose API key or access token the request carries, or
        who signed in to the console with its cookie."""
        scheme, _, value = headers.get(b"authorization", b"").decode("latin-1").partition(" ")
        credential = value.strip()
        if scheme.lower() != "bearer" or not credential:
            cookie = cookie_value(headers.get(b"cookie", b"").decode("latin-1"))
            return await anyio.to_thread.run_sync(self._signed_in, cookie) if cookie else None
        if credential.startswith(KEY_PREFIX):
            client = await anyio.to_thread.run_sync(self.clients.by_key, credential)
            return client.id if client else None
        if credential.startswith(TOKEN_PREFIX):
            holder = await anyio.to_thread.run_sync(
                self.clients.by_token, credential, datetime.now(UTC)
            )
            return holder.client.id if holder else None
        return None

    def _signed_in(self, cookie: str) -> str | None:
        """The active client of a console sign-in."""
        found = ConsoleSessions(self.clients.engine).find(cookie, datetime.now(UTC))
        client = self.clients.get(found.client_id) if found else None
        return client.id if client and client.revoked_at is None else None

    def _route(self, scope: Scope) -> tuple[str | None, dict[str, Any]]:
        """The endpoint's name and path parameters: from the routing, or, for a request
        refused before it, from matching the app's API routes here (an included router matches
        as a whole and names none of its routes)."""
        endpoint = scope.get("endpoint")
        if endpoint is not None:
            return getattr(endpoint, "__name__", None), scope.get("path_params", {})
        if self._paths is None:
            self._paths = [
                (*compile_path(path)[::2], route) for path, route in all_routes(self.routes)
            ]
        path, method = scope.get("path", ""), scope.get("method", "")
        for regex, convertors, route in self._paths:
            found = regex.match(path)
            if found and (not route.methods or method in route.methods):
                params = {
                    name: convertors[name].convert(value)
                    for name, value in found.groupdict().items()
                }
                return getattr(route.endpoint, "__name__", None), params
        return None, {}

    def _audit(self, scope: Scope, outcome: int) -> None:
        name, params = self._route(scope)
        if name in UNAUDITED:
            return
        state: dict[str, Any] = scope.get("state", {})
        caller = state.get("caller")
        ids = state.get("audited_ids")
        if ids is None and "resource_id" in params:
            version = f"/_history/{params['version_id']}" if "version_id" in params else ""
            ids = [f"{params.get('resource_type')}/{params['resource_id']}{version}"]
        elif ids is None and "job_id" in params:
            ids = [params["job_id"]]
        elif ids is None and "source_id" in params:
            ids = [f"{params.get('record_type')}/{params['source_id']}"]
        query = state.get("audited_query") or scope.get("query_string", b"").decode("latin-1")
        client = scope.get("client")
        # The caller the route settled on; or, for a request refused before its route ran,
        # the client whose credentials were checked before its body was read.
        client_id = caller.client.id if caller is not None else state.get("authenticated_client")
        self.writer.record(
            AuditEntry(
                recorded_at=datetime.now(UTC),
                client_id=client_id,
                interaction=INTERACTIONS.get(name or "", f"admin:{name}" if name else "unrouted"),
                method=scope.get("method", ""),
                path=scope.get("path", ""),
                resource_type=params.get("resource_type"),
                resource_ids=(ids or [])[:MOST_IDS] or None,
                query=query or None,
                outcome=outcome,
                address=client[0] if client else None,
            )
        )


class HeadAsGet:
    """ASGI middleware: HEAD answered as GET is, headers alone (RFC 9110 section 9.3.2), so
    that a client asking whether a resource exists, or when it changed, need not read it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Message) -> None:
            if message["type"] == "http.response.body":
                if message.get("more_body"):
                    return
                message = {"type": "http.response.body", "body": b"", "more_body": False}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)
