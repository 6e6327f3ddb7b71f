"""Learning the EHR's id and version of the adapter's resources: from the EHR's answers, and by
searching it for the adapter's identifiers."""

from collections.abc import Sequence
from typing import Any

from adapter.sync.client import EhrClient, EhrResponse
from adapter.sync.outgoing import identifiers

Json = dict[str, Any]
EhrId = tuple[str, str | None]
"""The EHR's id of a resource, and its version when known."""
SEARCH_CHUNK = 50


def duplicates(count: int) -> str:
    return (
        f"the EHR holds {count} resources with this resource's identifier; "
        "remove the duplicates there, then replay"
    )


def copies_by_identifier(
    client: EhrClient, resource_type: str, wanted: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], list[Json]]:
    """The EHR's resources carrying each identifier (system, value), 50 identifiers a search
    (token search with OR values; a comma inside a value is escaped). The search is POSTed
    to `_search` as a form: fifty identifiers make a URL longer than some servers take."""
    copies: dict[tuple[str, str], list[Json]] = {}
    for start in range(0, len(wanted), SEARCH_CHUNK):
        chunk = wanted[start : start + SEARCH_CHUNK]
        values = ",".join(f"{s}|{v}".replace(",", r"\,") for s, v in chunk)
        form = {"identifier": values, "_count": str(4 * len(chunk))}
        answer = client.request("POST", f"{resource_type}/_search", form=form)
        for entry in (answer.body or {}).get("entry", []):
            resource = entry.get("resource", {})
            if resource.get("resourceType") != resource_type:
                continue
            for identifier in identifiers(resource):
                copies.setdefault(identifier, []).append(resource)
    return copies


def identity(
    resource_type: str, resource: Json | None, response: Json
) -> tuple[str | None, str | None]:
    """The EHR's id and version of what it stored: from the returned resource, else from the
    Location (`[base]/Type/id/_history/vid`) and ETag."""
    if resource and resource.get("resourceType") == resource_type and resource.get("id"):
        return str(resource["id"]), resource.get("meta", {}).get("versionId")
    location = (response.get("location") or "").split("/")
    if resource_type not in location:
        return None, None
    at = location.index(resource_type)
    ehr_id = location[at + 1] if len(location) > at + 1 else None
    version = location[at + 3] if len(location) > at + 3 else None
    etag = response.get("etag")
    if version is None and etag:
        version = etag.removeprefix("W/").strip('"')
    return ehr_id, version


def answer_of(response: EhrResponse) -> Json:
    """A single request's answer in the shape of a Bundle entry's `response`."""
    return {"location": response.headers.get("Location"), "etag": response.headers.get("ETag")}


def version_of(response: EhrResponse) -> str | None:
    etag = response.headers.get("ETag") or ""
    if etag:
        return etag.removeprefix("W/").strip('"')
    version = (response.body or {}).get("meta", {}).get("versionId")
    return str(version) if version else None
