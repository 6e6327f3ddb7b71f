"""Search: GET /fhir/{type} and POST /fhir/{type}/_search, paged by an opaque cursor."""

from typing import Annotated
from urllib.parse import parse_qsl, urlencode

import orjson
from fastapi import APIRouter, Depends, Header, Request

from adapter.api.deps import RuntimeDep
from adapter.api.fhir.wire import (
    FhirResponse,
    Negotiated,
    bundle,
    entry,
    fhir_base,
    handling,
    known_type,
    link,
    media_type,
)
from adapter.api.outcome import operation_outcome
from adapter.errors import UnsupportedMediaType
from adapter.fhir.search import (
    SearchRequest,
    encode_cursor,
    include_parts,
    included_types,
    parse,
    search_digest,
)
from adapter.runtime import Runtime
from adapter.security.access import Caller, fhir_scope
from adapter.store.fhir_reads import Hit, of_sites

router = APIRouter()
FORM = "application/x-www-form-urlencoded"
Searcher = Annotated[Caller, Depends(fhir_scope("s"))]


def _cursor(search: SearchRequest, hit: Hit, secret: str, direction: str) -> str:
    value = hit.sort_value.isoformat() if hasattr(hit.sort_value, "isoformat") else hit.sort_value
    payload = {"v": value, "id": hit.id, "d": direction, "s": search_digest(search)}
    return encode_cursor(payload, secret)


def _search(
    request: Request,
    runtime: Runtime,
    resource_type: str,
    params: list[tuple[str, str]],
    prefer: str | None,
    caller: Caller,
) -> FhirResponse:
    known_type(resource_type)
    secret = runtime.settings.secret_key
    base = fhir_base(request)
    search: SearchRequest = parse(resource_type, params, handling(prefer, "strict"), secret, base)
    for other_type in sorted(included_types(search)):
        caller.require(other_type, "r")
    sites = caller.client.sites
    search.where += of_sites(sites)  # a client bound to sites sees theirs alone
    reader = runtime.fhir_reads
    if search.summary_count:
        return FhirResponse(
            bundle(
                "searchset",
                [],
                [("self", link(base, resource_type, search.query))],
                reader.count(search),
            )
        )
    backwards = bool(search.cursor and search.cursor.get("d") == "prev")
    hits, more = reader.page(search, backwards)
    entries = [entry(base, h.resource_type, h.id, h.content, "match") for h in hits]
    targets = [f"{h.resource_type}/{h.id}" for h in hits]
    warnings = []
    for spec in search.revincludes:
        source_type, param = spec.split(":")
        included, cut = reader.revincluded(source_type, param, targets, sites)
        entries += [entry(base, h.resource_type, h.id, h.content, "include") for h in included]
        if cut:
            warnings.append(
                f"_revinclude={spec}: more than {len(included)} resources; the rest were left out"
            )
    for spec in search.includes:
        _, param, target = include_parts(spec)
        included_hits = reader.included(param, [h.id for h in hits], sites, target)
        entries += [entry(base, h.resource_type, h.id, h.content, "include") for h in included_hits]
    if search.ignored:
        warnings.append(f"ignored unknown or unsupported parameters: {', '.join(search.ignored)}")
    if warnings:
        outcome = operation_outcome("not-supported", "; ".join(warnings), severity="warning")
        entries.append(
            '{"resource":' + orjson.dumps(outcome).decode() + ',"search":{"mode":"outcome"}}'
        )
    current = [("_cursor", token)] if (token := dict(params).get("_cursor")) else []
    links = [("self", link(base, resource_type, [*search.query, *current]))]
    has_next = more if not backwards else bool(search.cursor)
    has_previous = bool(search.cursor) if not backwards else more
    if hits and has_next:
        links.append(
            (
                "next",
                link(
                    base,
                    resource_type,
                    [*search.query, ("_cursor", _cursor(search, hits[-1], secret, "next"))],
                ),
            )
        )
    if hits and has_previous:
        links.append(
            (
                "previous",
                link(
                    base,
                    resource_type,
                    [*search.query, ("_cursor", _cursor(search, hits[0], secret, "prev"))],
                ),
            )
        )
    total = reader.count(search) if search.total else None
    return FhirResponse(bundle("searchset", entries, links, total))


@router.get("/{resource_type}", dependencies=[Negotiated], summary="search-type")
def search_get(
    request: Request,
    runtime: RuntimeDep,
    resource_type: str,
    caller: Searcher,
    prefer: Annotated[str | None, Header()] = None,
) -> FhirResponse:
    params = list(request.query_params.multi_items())
    return _search(request, runtime, resource_type, params, prefer, caller)


@router.post("/{resource_type}/_search", dependencies=[Negotiated], summary="search-type (POST)")
async def search_post(
    request: Request,
    runtime: RuntimeDep,
    resource_type: str,
    caller: Searcher,
    prefer: Annotated[str | None, Header()] = None,
) -> FhirResponse:
    body = (await request.body()).decode("utf-8", "replace")
    kind = media_type(request)
    if body.strip() and kind != FORM:
        # R4 http.html#search: the parameters of a POSTed search are a form's.
        raise UnsupportedMediaType(
            f"a POSTed search's parameters are sent as {FORM}, not {kind or 'untyped'}"
        )
    params = list(request.query_params.multi_items()) + parse_qsl(body, keep_blank_values=True)
    request.state.audited_query = urlencode(params)
    return _search(request, runtime, resource_type, params, prefer, caller)
