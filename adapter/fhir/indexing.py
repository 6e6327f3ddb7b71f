"""What a stored resource is searched by: its tokens, references, strings and date range."""

import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from adapter.fhir.search_params import SEARCH_PARAMS, SearchParam

REFERENCE_SYSTEM = "reference"
"""The system under which a literal reference (`Procedure/123`) is indexed."""
STRING_SYSTEM = "string"
"""The system under which a string is indexed as searched by default (`normalized`)."""
EXACT_SYSTEM = "exact"
"""The system under which a string is indexed as it is written, for `:exact`."""
LONGEST_VALUE = 255
"""Characters of a value the index keeps (its column's size)."""


def normalized(value: str) -> str:
    """A string as FHIR string search compares it: without case or accents."""
    decomposed = unicodedata.normalize("NFKD", value)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


@dataclass(frozen=True)
class SearchIndex:
    tokens: list[tuple[str, str | None, str]]
    date_start: datetime | None
    date_end: datetime | None


def _instant(value: str, end: bool = False) -> datetime:
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        # At the very edge of the calendar (year 1 or 9999 with an offset): the edge itself.
        return (datetime.min if moment.year == 1 else datetime.max).replace(tzinfo=UTC)


def _items(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _token_values(value: Any) -> list[tuple[str | None, str]]:
    found: list[tuple[str | None, str]] = []
    for item in _items(value):
        if isinstance(item, str):
            found.append((None, item))
        elif isinstance(item, dict) and "coding" in item:
            found += [(c.get("system"), c["code"]) for c in item["coding"] if "code" in c]
        elif isinstance(item, dict) and "value" in item:
            found.append((item.get("system"), str(item["value"])))
    return found


def _references(param: SearchParam, value: Any) -> list[tuple[str, str | None, str]]:
    found: list[tuple[str, str | None, str]] = []
    for item in _items(value):
        if not isinstance(item, dict):
            continue
        if "reference" in item:
            found.append((param.name, REFERENCE_SYSTEM, item["reference"]))
        identifier = item.get("identifier")
        if isinstance(identifier, dict) and "value" in identifier:
            found.append(
                (f"{param.name}:identifier", identifier.get("system"), identifier["value"])
            )
    return found


def _strings(param: SearchParam, value: Any) -> list[tuple[str, str | None, str]]:
    """The parts of each HumanName the parameter reads, normalized and as written."""
    found: list[tuple[str, str | None, str]] = []
    for name in _items(value):
        if not isinstance(name, dict):
            continue
        for part in param.parts:
            for text in _items(name.get(part)):
                if isinstance(text, str) and text.strip():
                    found.append((param.name, STRING_SYSTEM, normalized(text)[:LONGEST_VALUE]))
                    found.append((param.name, EXACT_SYSTEM, text[:LONGEST_VALUE]))
    return found


def _element(resource: dict[str, Any], path: str) -> Any:
    """The value at an element path: top level (`subject`) or dotted (`context.encounter`,
    through lists, as a list of what is found)."""
    if "." not in path:
        return resource.get(path)
    values: list[Any] = [resource]
    for step in path.split("."):
        inner: list[Any] = []
        for value in values:
            if isinstance(value, dict) and value.get(step) is not None:
                inner += _items(value[step])
        values = inner
    return values or None


def _date_range(resource: dict[str, Any], stem: str) -> tuple[datetime | None, datetime | None]:
    for key in (stem, f"{stem}DateTime", f"{stem}Instant"):
        if isinstance(resource.get(key), str):
            moment = _instant(resource[key])
            return moment, moment
    period = resource.get(f"{stem}Period", resource.get(stem))
    if isinstance(period, dict) and ("start" in period or "end" in period):
        start = _instant(period["start"]) if "start" in period else None
        end = _instant(period["end"]) if "end" in period else None
        return start, end
    return None, None


def index(resource: dict[str, Any]) -> SearchIndex:
    """The search index rows of a resource of a searchable type."""
    params = SEARCH_PARAMS.get(resource["resourceType"], {})
    tokens: list[tuple[str, str | None, str]] = []
    start = end = None
    for param in params.values():
        value = _element(resource, param.element)
        if param.type == "date":
            start, end = _date_range(resource, param.element)
        elif value is None:
            continue
        elif param.type == "token":
            tokens += [(param.name, system, code) for system, code in _token_values(value)]
        elif param.type == "string":
            tokens += _strings(param, value)
        else:
            tokens += _references(param, value)
    tokens += _series(resource)
    return SearchIndex(tokens=sorted(set(tokens), key=str), date_start=start, date_end=end)


SERIES_PARAM = "_series"
"""Internal (not a search parameter): the infusion series of a Procedure, for Group export."""


def _series(resource: dict[str, Any]) -> list[tuple[str, str | None, str]]:
    """The series a Procedure is `basedOn` (its CarePlan, by identifier), or names in the
    `infusion-series` extension (as stored before series had CarePlans)."""
    found: list[tuple[str, str | None, str]] = []
    for based_on in resource.get("basedOn", []):
        identifier = based_on.get("identifier") if isinstance(based_on, dict) else None
        if (
            str(based_on.get("reference", "")).startswith("CarePlan/")
            and isinstance(identifier, dict)
            and "value" in identifier
        ):
            found.append((SERIES_PARAM, identifier.get("system"), identifier["value"]))
    for extension in resource.get("extension", []):
        for part in extension.get("extension", []):
            identifier = part.get("valueIdentifier")
            if (
                part.get("url") == "series"
                and isinstance(identifier, dict)
                and "value" in identifier
            ):
                found.append((SERIES_PARAM, identifier.get("system"), identifier["value"]))
    return found
