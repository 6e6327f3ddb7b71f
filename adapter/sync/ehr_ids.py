"""Learning the EHR's id and version of the adapter's resources: from the EHR's answers, and by
searching it for the adapter's identifiers."""

import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from adapter.sync.client import EhrClient, EhrResponse
from adapter.sync.errors import TemporaryEhrError
from adapter.sync.outgoing import identifiers

Json = dict[str, Any]
EhrId = tuple[str, str | None]
"""The EHR's id of a resource, and its version when known."""
SEARCH_CHUNK = 50
MAX_PAGES = 1000
"""Pages of one search followed at most: an EHR whose `next` links never end is failing."""
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
"""An id (and a version id) as FHIR R4 defines it (datatypes.html#id)."""
_LOCATION = re.compile(
    r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
    r"(?:/_history/(?P<vid>[A-Za-z0-9\-.]{1,64}))?/?$"
)
"""The end of a Location's path: `[type]/[id]` or `[type]/[id]/_history/[vid]` (FHIR R4
http.html#create, #update; bundle.html#transaction-response), absolute or relative."""


def duplicates(count: int) -> str:
    return (
        f"the EHR holds {count} resources with this resource's identifier; "
        "remove the duplicates there, then replay"
    )


def copies_by_identifier(
    client: EhrClient, resource_type: str, wanted: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[Json]]:
    """The EHR's resources carrying each identifier (system, value), 50 identifiers a search
    (token search with OR values; a comma inside a value is escaped), every page of each
    (`next` links followed on the EHR's own origin). The search is POSTed to `_search` as a
    form: fifty identifiers make a URL longer than some servers take."""
    copies: dict[tuple[str, str], list[Json]] = {}
    seen: set[str] = set()
    for start in range(0, len(wanted), SEARCH_CHUNK):
        chunk = wanted[start : start + SEARCH_CHUNK]
        values = ",".join(f"{s}|{v}".replace(",", r"\,") for s, v in chunk)
        form = {"identifier": values, "_count": str(4 * len(chunk))}
        for resource in search_pages(
            client, resource_type, client.request("POST", f"{resource_type}/_search", form=form)
        ):
            if resource.get("resourceType") != resource_type or resource.get("id") in seen:
                continue
            seen.add(str(resource.get("id")))
            for identifier in identifiers(resource):
                copies.setdefault(identifier, []).append(resource)
    return copies


def search_pages(client: EhrClient, resource_type: str, first: EhrResponse) -> list[Json]:
    """The resources matched on every page of a search, from its first answer on."""
    found: list[Json] = []
    answer = first
    followed: set[str] = set()
    while True:
        bundle = answer.body or {}
        if bundle.get("resourceType") != "Bundle":
            reason = f"a search of {resource_type} was answered without a Bundle"
            raise TemporaryEhrError(answer.status, reason)
        for entry in bundle.get("entry", []):
            if entry.get("search", {}).get("mode", "match") == "match" and "resource" in entry:
                found.append(entry["resource"])
        following = next(
            (link.get("url") for link in bundle.get("link", []) if link.get("relation") == "next"),
            None,
        )
        if not following:
            return found
        if following in followed or len(followed) >= MAX_PAGES:
            reason = f"a search of {resource_type} pages without end"
            raise TemporaryEhrError(answer.status, reason)
        followed.add(following)
        answer = client.request("GET", following)


def location(resource_type: str, value: str | None) -> tuple[str | None, str | None]:
    """The id and version a Location names for `resource_type`, parsed as FHIR defines it:
    the query and fragment are not part of it, and an id that is not a FHIR id is none."""
    if not value:
        return None, None
    found = _LOCATION.search(urlsplit(value.strip()).path)
    if found is None or found["type"] != resource_type:
        return None, None
    return found["id"], found["vid"]


def identity(
    resource_type: str, resource: Json | None, response: Json, updated: str | None = None
) -> tuple[str | None, str | None]:
    """The EHR's id and version of what it stored: from the returned resource, else from the
    Location (`[base]/Type/id/_history/vid`) and ETag. `updated`: the id an update was sent
    to, which is the id whatever the answer says (FHIR requires a Location only on create)."""
    version = _etag(response.get("etag"))
    if resource and resource.get("resourceType") == resource_type:
        ehr_id = resource.get("id")
        if isinstance(ehr_id, str) and FHIR_ID.fullmatch(ehr_id):
            stored = resource.get("meta", {}).get("versionId")
            return updated or ehr_id, str(stored) if stored else version
    ehr_id, located_version = location(resource_type, response.get("location"))
    return updated or ehr_id, located_version or version


def _etag(value: str | None) -> str | None:
    if not value:
        return None
    version = value.strip().removeprefix("W/").strip('"')
    return version if FHIR_ID.fullmatch(version) else None


def answer_of(response: EhrResponse) -> Json:
    """A single request's answer in the shape of a Bundle entry's `response`."""
    return {"location": response.headers.get("Location"), "etag": response.headers.get("ETag")}


def version_of(response: EhrResponse) -> str | None:
    version = _etag(response.headers.get("ETag"))
    if version:
        return version
    stored = (response.body or {}).get("meta", {}).get("versionId")
    return str(stored) if stored else None
