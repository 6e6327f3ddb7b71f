"""The outermost layer of the service: request bodies within size and nesting limits, and an
audit entry for every request once its answer is sent."""

import re
from datetime import UTC, datetime
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from adapter.api.outcome import operation_outcome
from adapter.errors import AdapterError, MalformedJson, PayloadTooLarge
from adapter.security.audit import (
    INTERACTIONS,
    MOST_IDS,
    UNAUDITED,
    AuditEntry,
    AuditWriter,
)

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"')
_BRACKETS = re.compile(rb"[\[\]{}]")
JSON_TYPES = ("json", "ndjson")


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON (or NDJSON) body."""
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


async def _refuse(send: Send, error: AdapterError) -> None:
    """The OperationOutcome of an error found before the app's exception handlers are in reach."""
    body = orjson.dumps(operation_outcome(error.issue_code, error.message))
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": [
                (b"content-type", b"application/fhir+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Guard:
    """ASGI middleware: body limits, then the audit entry of the request."""

    def __init__(self, app: ASGIApp, writer: AuditWriter, max_body: int, max_depth: int) -> None:
        self.app = app
        self.writer = writer
        self.max_body = max_body
        self.max_depth = max_depth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = {"code": 500}

        async def remember(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            refused = await self._limits(scope, receive)
            if isinstance(refused, AdapterError):
                status["code"] = refused.status
                await _refuse(send, refused)
            else:
                await self.app(scope, refused, remember)
        finally:
            self._audit(scope, status["code"])

    async def _limits(self, scope: Scope, receive: Receive) -> Receive | AdapterError:
        """The body, read within the size limit and checked for depth when it is JSON, handed
        on; or why it is refused."""
        if scope["method"] in ("GET", "HEAD", "DELETE", "OPTIONS"):
            return receive
        headers = dict(scope["headers"])
        declared = headers.get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_body:
            return PayloadTooLarge(f"the body is over the limit of {self.max_body} bytes")
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return receive
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body:
                return PayloadTooLarge(f"the body is over the limit of {self.max_body} bytes")
        body = b"".join(chunks)
        content_type = headers.get(b"content-type", b"").decode("latin-1").lower()
        if any(kind in content_type for kind in JSON_TYPES) and json_depth(body) > self.max_depth:
            return MalformedJson(f"JSON nested deeper than {self.max_depth} levels")
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        return replay

    def _audit(self, scope: Scope, outcome: int) -> None:
        endpoint = scope.get("endpoint")
        name = getattr(endpoint, "__name__", None)
        if name in UNAUDITED:
            return
        state: dict[str, Any] = scope.get("state", {})
        caller = state.get("caller")
        params: dict[str, Any] = scope.get("path_params", {})
        path = scope.get("path", "")
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
        self.writer.record(
            AuditEntry(
                recorded_at=datetime.now(UTC),
                client_id=caller.client.id if caller is not None else None,
                interaction=INTERACTIONS.get(name or "", f"admin:{name}" if name else "unrouted"),
                method=scope.get("method", ""),
                path=path[:2000],
                resource_type=params.get("resource_type"),
                resource_ids=(ids or [])[:MOST_IDS] or None,
                query=query[:8000] or None,
                outcome=outcome,
                address=client[0] if client else None,
            )
        )
