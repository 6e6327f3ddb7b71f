"""How FHIR leaves the endpoint: application/fhir+json, stored bytes, Bundles, negotiation."""

import re
from collections.abc import Iterable
from datetime import datetime
from email.utils import format_datetime
from typing import Any
from urllib.parse import urlencode

import orjson
from fastapi import Depends, Request
from fastapi.responses import Response
from starlette.convertors import Convertor, register_url_convertor

from adapter.api.deps import public_base
from adapter.errors import NotAcceptable, NotFound
from adapter.fhir.search_params import SEARCH_PARAMS
from adapter.security.access import all_routes

FHIR_JSON = "application/fhir+json"
_JSON_FORMATS = {"json", "application/json", "application/fhir+json"}
_XML_WORDS = ("xml",)


class _Segment(Convertor[str]):
    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


class _ResourceType(_Segment):
    regex = "[A-Z][A-Za-z]{0,63}"


class _Id(_Segment):
    regex = "[A-Za-z0-9.-]{1,64}"


register_url_convertor("fhir_type", _ResourceType())
register_url_convertor("fhir_id", _Id())
"""Path segments shaped as a resource type and as a FHIR id (R4 datatypes, `id`:
[A-Za-z0-9\\-\\.]{1,64}). Routes that take them are routed first: a read is matched without
walking the other routes, and never takes `_history`, `_search`, `$export` or `.well-known`."""


class FhirResponse(Response):
    media_type = FHIR_JSON

    def render(self, content: Any) -> bytes:
        if isinstance(content, bytes):
            return content
        if isinstance(content, str):
            return content.encode()
        return orjson.dumps(content)


FHIR_VERSION = re.compile(r"fhirVersion\s*=\s*\"?([0-9.]+)", re.IGNORECASE)
"""The `fhirVersion` parameter of an Accept's media type (R4 versioning.html)."""


async def negotiate(request: Request) -> None:
    """JSON only: an XML `_format` or an Accept that takes no JSON is answered 406. `_format`
    is read from the query here rather than declared (FastAPI resolves each declared parameter
    on every request, reads included); `document_format` puts it in the OpenAPI."""
    format_ = request.query_params.get("_format")
    # A `+` left unencoded in a query string arrives as a space (application/fhir json).
    if format_ is not None and format_.split(";")[0].strip().replace(" ", "+") not in _JSON_FORMATS:
        raise NotAcceptable(f"_format {format_!r} is not served; this server speaks {FHIR_JSON}")
    if format_ is not None:
        return  # _format overrides Accept (R4 http.html, "Content Types and encodings")
    accept = request.headers.get("accept", "")
    versions = FHIR_VERSION.findall(accept)
    if versions and not any(v.startswith("4.0") for v in versions):
        # R4 versioning.html: a version asked for that is not served is 406.
        raise NotAcceptable(f"FHIR {', '.join(versions)} is not served; this server speaks 4.0")
    if (
        accept
        and any(word in accept for word in _XML_WORDS)
        and not any(kind in accept for kind in ("json", "*/*"))
    ):
        raise NotAcceptable(f"only {FHIR_JSON} is served")


Negotiated = Depends(negotiate)
FORMAT_PARAMETER = {
    "name": "_format",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": sorted(_JSON_FORMATS)},
    "description": "json, application/json or application/fhir+json; XML is answered 406",
}


def document_format(routes: Iterable[Any], schema: dict[str, Any]) -> set[str]:
    """Add `_format` to the OpenAPI operations of the routes that negotiate; their names."""
    negotiating: set[str] = set()
    for path, route in all_routes(routes):
        if not any(d.call is negotiate for d in route.dependant.dependencies):
            continue
        negotiating.add(route.endpoint.__name__)
        operations = schema["paths"].get(re.sub(r"{(\w+):\w+}", r"{\1}", path), {})
        for method in route.methods or ():
            parameters = operations.get(method.lower(), {}).setdefault("parameters", [])
            if FORMAT_PARAMETER not in parameters:
                parameters.append(FORMAT_PARAMETER)
    return negotiating


def handling(prefer: str | None, asked: str) -> bool:
    """Whether `Prefer` asks for this handling of parameters the server does not support
    (`strict`: refused; `lenient`: left out; R4 search.html and Bulk Data IG 2.0)."""
    return f"handling={asked}" in (prefer or "").replace(" ", "")


def media_type(request: Request) -> str:
    """The type of the request's body, without its parameters ("" when none is given)."""
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


def fhir_base(request: Request) -> str:
    return public_base(request) + "/fhir"


def known_type(resource_type: str) -> str:
    if resource_type not in SEARCH_PARAMS:
        raise NotFound(
            f"resource type {resource_type!r} is not served; served: {', '.join(SEARCH_PARAMS)}"
        )
    return resource_type


def version_headers(version_id: int, last_updated: datetime) -> dict[str, str]:
    return {
        "ETag": f'W/"{version_id}"',
        "Last-Modified": format_datetime(last_updated, usegmt=True),
    }


def link(base: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{base}/{path}" + (f"?{query}" if query else "")


def bundle(
    kind: str,
    entries: list[str],
    links: list[tuple[str, str]],
    total: int | None = None,
) -> bytes:
    """A Bundle around entries that are already JSON text (stored resources are not re-parsed)."""
    head: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
    if total is not None:
        head["total"] = total
    if links:
        head["link"] = [{"relation": relation, "url": url} for relation, url in links]
    text = orjson.dumps(head)[:-1]
    if entries:
        text += b',"entry":[' + ",".join(entries).encode() + b"]"
    return text + b"}"


def entry(base: str, resource_type: str, resource_id: str, content: str, mode: str | None) -> str:
    full_url = orjson.dumps(f"{base}/{resource_type}/{resource_id}").decode()
    search = f',"search":{{"mode":"{mode}"}}' if mode else ""
    return f'{{"fullUrl":{full_url},"resource":{content}{search}}}'
