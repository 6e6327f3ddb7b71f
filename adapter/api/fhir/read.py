"""read, vread and history; writes are refused (the endpoint is read-only)."""

import re
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response

from adapter.api.deps import RuntimeDep
from adapter.api.fhir.wire import (
    FhirResponse,
    Negotiated,
    bundle,
    fhir_base,
    known_type,
    link,
    version_headers,
)
from adapter.errors import BadRequest, MethodNotAllowed, NotFound
from adapter.fhir.search import MAX_COUNT, decode_cursor, encode_cursor, parse_instant
from adapter.runtime import Runtime
from adapter.security.access import caller_sites, fhir_scope, fhir_write
from adapter.store.resources import StoredResource

router = APIRouter()
IF_NONE_MATCH = {
    "name": "If-None-Match",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
}
IF_MODIFIED_SINCE = {
    "name": "If-Modified-Since",
    "in": "header",
    "required": False,
    "schema": {"type": "string"},
}
"""Read from the request in `read` (see there), so stated here for the OpenAPI."""


def unchanged(request: Request, version_id: int, last_updated: datetime) -> bool:
    """A conditional read answered 304 (R4 http.html#cread; RFC 9110 section 13.1): an
    If-None-Match naming the version (weak or strong, among others, or `*`), else an
    If-Modified-Since not before the version's time (to the second, as Last-Modified says)."""
    if_none_match = request.headers.get("if-none-match")
    if if_none_match is not None:
        tags = {tag.strip().removeprefix("W/") for tag in if_none_match.split(",")}
        return "*" in tags or f'"{version_id}"' in tags
    if_modified_since = request.headers.get("if-modified-since")
    if if_modified_since is None:
        return False
    try:
        since = parsedate_to_datetime(if_modified_since)
    except (TypeError, ValueError):
        return False  # not an HTTP date: ignored, as RFC 9110 says
    if since.tzinfo is None:
        return False
    return last_updated.replace(microsecond=0) <= since


Readable = Depends(fhir_scope("r"))
Searchable = Depends(fhir_scope("s"))


def _history_entry(base: str, version: StoredResource) -> str:
    first = version.version_id == 1
    # A create is made on the type, an update on the instance (FHIR R4 http.html#history).
    url = version.resource_type if first else f"{version.resource_type}/{version.id}"
    request = {"method": "POST" if first else "PUT", "url": url}
    response = {
        "status": "201 Created" if first else "200 OK",
        "etag": f'W/"{version.version_id}"',
        "lastModified": version.last_updated.isoformat(),
    }
    full_url = orjson.dumps(f"{base}/{version.resource_type}/{version.id}").decode()
    return (
        f'{{"fullUrl":{full_url},"resource":{version.content},'
        f'"request":{orjson.dumps(request).decode()},"response":{orjson.dumps(response).decode()}}}'
    )


def _history(
    request: Request,
    found: list[StoredResource],
    links: list[tuple[str, str]] | None = None,
    total: int | None = None,
) -> FhirResponse:
    base = fhir_base(request)
    entries = [_history_entry(base, version) for version in found]
    links = links or [("self", str(request.url))]
    return FhirResponse(bundle("history", entries, links, len(found) if total is None else total))


def _history_position(cursor: str, secret: str) -> tuple[datetime, str, int]:
    """Where the previous page of a type history ended, from the cursor it issued."""
    position = decode_cursor(cursor, secret)
    if (
        set(position) != {"t", "id", "v"}
        or not isinstance(position["v"], int)
        or not isinstance(position["id"], str)
    ):
        raise BadRequest("_cursor: not a cursor of this history", expression=["_cursor"])
    return parse_instant(str(position["t"]), "_cursor"), position["id"], position["v"]


UNSUPPORTED_HISTORY = ("_at", "_list")
"""History parameters of R4 (http.html#history) this server does not support: refused rather
than ignored, since the history without them would say what was not asked."""


@dataclass(frozen=True)
class HistoryQuery:
    since: str | None
    count: int
    cursor: str | None


def _history_query(
    since: Annotated[str | None, Query(alias="_since")] = None,
    count: Annotated[int, Query(alias="_count", ge=0)] = 100,
    cursor: Annotated[str | None, Query(alias="_cursor")] = None,
) -> HistoryQuery:
    return HistoryQuery(since, count, cursor)


HistoryDep = Annotated[HistoryQuery, Depends(_history_query)]


def _history_page(
    request: Request,
    runtime: Runtime,
    resource_type: str,
    resource_id: str | None,
    asked: HistoryQuery,
) -> FhirResponse:
    """A type's history, or one resource's, newest first (since a moment), `count` versions a
    page, paged by an opaque cursor in the `next` link."""
    since, count, cursor = asked.since, asked.count, asked.cursor
    known_type(resource_type)
    for name in UNSUPPORTED_HISTORY:
        if name in request.query_params:
            raise BadRequest(
                f"{name}: not supported in a history here (_since, _count are)", expression=[name]
            )
    moment = parse_instant(since, "_since") if since is not None else None
    secret = runtime.settings.secret_key
    after = _history_position(cursor, secret) if cursor is not None else None
    limit = min(count, MAX_COUNT)
    sites = caller_sites(request)
    reads = runtime.fhir_reads
    found = (
        reads.versions(
            resource_type, resource_id, since=moment, limit=limit + 1, after=after, sites=sites
        )
        if limit
        else []
    )
    # An empty page of one resource's history: the resource unknown, or no version since.
    unknown = resource_id is not None and not found
    if unknown and not reads.versions(resource_type, resource_id, limit=1, sites=sites):
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    total = reads.count_versions(resource_type, since=moment, sites=sites, resource_id=resource_id)
    page = found[:limit]
    query = [(k, v) for k, v in (("_since", since), ("_count", str(count))) if v is not None]
    base = fhir_base(request)
    path = f"{resource_type}/{resource_id}/_history" if resource_id else f"{resource_type}/_history"
    here = [*query, ("_cursor", cursor)] if cursor else query
    links = [("self", link(base, path, here))]
    if len(found) > limit:
        last = page[-1]
        token = encode_cursor(
            {"t": last.last_updated.isoformat(), "id": last.id, "v": last.version_id}, secret
        )
        links.append(("next", link(base, path, [*query, ("_cursor", token)])))
    return _history(request, page, links, total)


@router.get(
    "/{resource_type:fhir_type}/_history",
    dependencies=[Negotiated, Searchable],
    summary="Type history, newest first, paged by an opaque cursor in the `next` link",
)
def type_history(
    request: Request, runtime: RuntimeDep, resource_type: str, asked: HistoryDep
) -> FhirResponse:
    return _history_page(request, runtime, resource_type, None, asked)


@router.get(
    "/{resource_type:fhir_type}/{resource_id:fhir_id}",
    dependencies=[Negotiated, Readable],
    summary="read",
    openapi_extra={"parameters": [IF_NONE_MATCH, IF_MODIFIED_SINCE]},
)
async def read(request: Request, resource_type: str, resource_id: str) -> Response:
    """The busiest route: on the event loop (one primary-key lookup, awaited on PostgreSQL),
    and with no parameter or dependency beyond the access check and the format, each of which
    FastAPI resolves per request; If-None-Match is read directly."""
    known_type(resource_type)
    runtime: Runtime = request.app.state.runtime
    found = await runtime.fhir_reads.read(resource_type, resource_id, caller_sites(request))
    if found is None:
        raise NotFound(f"{resource_type}/{resource_id} is not known")
    headers = version_headers(found.version_id, found.last_updated)
    if unchanged(request, found.version_id, found.last_updated):
        return Response(status_code=304, headers=headers)
    return FhirResponse(found.content, headers=headers)


@router.get(
    "/{resource_type:fhir_type}/{resource_id:fhir_id}/_history",
    dependencies=[Negotiated, Readable],
    summary="Instance history, newest first, paged by an opaque cursor in the `next` link",
)
def instance_history(
    request: Request, runtime: RuntimeDep, resource_type: str, resource_id: str, asked: HistoryDep
) -> FhirResponse:
    return _history_page(request, runtime, resource_type, resource_id, asked)


@router.get(
    "/{resource_type:fhir_type}/{resource_id:fhir_id}/_history/{version_id}",
    dependencies=[Negotiated, Readable],
    summary="vread",
)
def vread(
    request: Request, runtime: RuntimeDep, resource_type: str, resource_id: str, version_id: str
) -> FhirResponse:
    known_type(resource_type)
    found = (
        runtime.fhir_reads.versions(
            resource_type, resource_id, int(version_id), sites=caller_sites(request)
        )
        if re.fullmatch("[0-9]{1,18}", version_id)
        else []
    )
    if not found:
        raise NotFound(f"{resource_type}/{resource_id} has no version {version_id}")
    version = found[0]
    return FhirResponse(
        version.content, headers=version_headers(version.version_id, version.last_updated)
    )


@router.api_route(
    "/{resource_type:fhir_type}",
    methods=["POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
    dependencies=[Depends(fhir_write)],
)
@router.api_route(
    "/{resource_type:fhir_type}/{resource_id:fhir_id}",
    methods=["POST", "PUT", "PATCH", "DELETE"],
    include_in_schema=False,
    dependencies=[Depends(fhir_write)],
)
def refuse_write(resource_type: str) -> None:
    raise MethodNotAllowed("this FHIR endpoint is read-only (see /fhir/metadata)")
