"""FHIR search: parameters parsed and checked, then one SQL query with keyset paging."""

import base64
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, false, literal, not_, or_, select, true

from adapter.errors import BadRequest
from adapter.fhir.indexing import EXACT_SYSTEM, REFERENCE_SYSTEM, STRING_SYSTEM, normalized
from adapter.fhir.search_params import INCLUDES, REVINCLUDES, SEARCH_PARAMS, SearchParam
from adapter.store.tables import fhir_resources as resources
from adapter.store.tables import fhir_search_tokens as tokens

DEFAULT_COUNT = 50
MAX_COUNT = 1000
SUMMARIES = ("true", "text", "data", "count", "false")
"""The values of `_summary` (R4 search.html): only `count` changes what is answered here."""
CONTROL = {"_count", "_sort", "_summary", "_total", "_include", "_revinclude", "_format", "_cursor"}
SORTS = {
    "_lastUpdated": resources.c.last_updated,
    "date": resources.c.date_start,
    "_id": resources.c.id,
}
PREFIXES = ("eq", "ne", "lt", "le", "gt", "ge", "sa", "eb")
_FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
_FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)
_LATEST = datetime.max.replace(tzinfo=UTC)
LONGEST_COUNT = 9
"""Digits of a `_count` read as a number (any larger asks for no more than MAX_COUNT)."""


@dataclass
class SearchRequest:
    resource_type: str
    where: list[ColumnElement[bool]] = field(default_factory=list)
    count: int = DEFAULT_COUNT
    sort: str = "_lastUpdated"
    descending: bool = False
    summary_count: bool = False
    total: bool = False
    includes: list[str] = field(default_factory=list)
    revincludes: list[str] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)
    cursor: dict[str, Any] | None = None
    query: list[tuple[str, str]] = field(default_factory=list)
    """The search's own parameters, to repeat in paging links."""


def _after(start: datetime, step: timedelta) -> datetime:
    """The end of a range that starts at `start`; the last instant there is at the far end."""
    try:
        return start + step
    except OverflowError:
        return _LATEST


def _next_year_or_month(start: datetime, month_step: bool) -> datetime:
    try:
        if not month_step or start.month == 12:
            return start.replace(year=start.year + 1, month=1)
        return start.replace(month=start.month + 1)
    except ValueError:  # past the year 9999
        return _LATEST


def _in_utc(moment: datetime) -> datetime:
    """The moment in UTC; one before the first instant Python holds (0001-01-01T00:00 at a
    positive offset) or after the last stands at that end (nothing is stored beyond them)."""
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        return _FAR_PAST if moment.year == 1 else _LATEST


def _range(value: str, name: str) -> tuple[datetime, datetime]:
    """A FHIR date/dateTime search value as [start, end): its implicit range by precision."""
    try:
        if len(value) == 4:
            start = datetime(int(value), 1, 1, tzinfo=UTC)
            return start, _next_year_or_month(start, month_step=False)
        if len(value) == 7:
            start = datetime(int(value[:4]), int(value[5:7]), 1, tzinfo=UTC)
            return start, _next_year_or_month(start, month_step=True)
        if len(value) == 10:
            start = datetime.fromisoformat(value).replace(tzinfo=UTC)
            return start, _after(start, timedelta(days=1))
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(
            f"{name}: {value!r} is not a FHIR date or dateTime", expression=[name]
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    precision = timedelta(seconds=1) if moment.microsecond == 0 else timedelta(microseconds=1)
    start = _in_utc(moment)
    return start, _after(start, precision)


def parse_instant(value: str, name: str) -> datetime:
    """An instant parameter (`_since`): a dateTime with a time zone."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequest(f"{name}: {value!r} is not an instant", expression=[name]) from None
    if moment.tzinfo is None:
        raise BadRequest(f"{name}: an instant needs a time zone", expression=[name])
    return _in_utc(moment)


def date_condition(start_column: Any, end_column: Any, raw: str, name: str) -> ColumnElement[bool]:
    """FHIR date prefix semantics, comparing the search range [ps, pe) with the resource's
    [start, end] (an open end runs to the far future, an open start from the far past)."""
    if raw[:2] == "ap":
        supported = ", ".join(PREFIXES)
        raise BadRequest(
            f"{name}: the ap (approximately) prefix is not supported; {supported} are",
            expression=[name],
        )
    prefix = raw[:2] if raw[:2] in PREFIXES else "eq"
    ps, pe = _range(raw[2:] if raw[:2] in PREFIXES else raw, name)
    start = start_column if start_column is end_column else _coalesce(start_column, _FAR_PAST)
    end = _coalesce(end_column, _FAR_FUTURE)
    present = (
        start_column.is_not(None)
        if start_column is end_column
        else or_(start_column.is_not(None), end_column.is_not(None))
    )
    conditions = {
        "eq": and_(start >= ps, end < pe),
        "ne": not_(and_(start >= ps, end < pe)),
        "gt": end >= pe,
        "lt": start < ps,
        "ge": end >= ps,
        "le": start < pe,
        "sa": start >= pe,
        "eb": end < ps,
    }
    return and_(present, conditions[prefix])


def _coalesce(column: Any, value: datetime) -> Any:
    from sqlalchemy import func

    return func.coalesce(column, literal(value, type_=resources.c.last_updated.type))


ESCAPED = re.compile(r"\\([\\,$|])")
r"""A character a search value escapes with a backslash (R4 search.html, escaping): `\,` is a
comma in the value, not a second value; `\|` a bar, not the end of a token's system; `\$`,
`\\`."""
_UNESCAPED_COMMA = re.compile(r"(?<!\\)((?:\\\\)*),")
_UNESCAPED_BAR = re.compile(r"(?<!\\)((?:\\\\)*)\|")


def _split(value: str, at: re.Pattern[str], most: int = 0) -> list[str]:
    """The parts of a value between the unescaped separators `at` finds, each still escaped
    (the even runs of backslashes before a separator end the part before it)."""
    found = at.split(value, maxsplit=most)
    parts = [found[0]]
    for backslashes, following in zip(found[1::2], found[2::2], strict=True):
        parts[-1] += backslashes
        parts.append(following)
    return parts


def unescaped(value: str) -> str:
    return ESCAPED.sub(r"\1", value)


def _token_match(param: str, raw: str) -> ColumnElement[bool]:
    """Resources with a token: the token index drives the query, not a scan of resources."""
    condition = tokens.c.param == param
    parts = _split(raw, _UNESCAPED_BAR, 1)
    if len(parts) == 2:
        system, code = unescaped(parts[0]), unescaped(parts[1])
        condition = and_(
            condition, tokens.c.system == system if system else tokens.c.system.is_(None)
        )
        if code:
            condition = and_(condition, tokens.c.code == code)
    else:
        condition = and_(condition, tokens.c.code == unescaped(raw))
    return resources.c.id.in_(select(tokens.c.resource_id).where(condition))


def _string_match(param: str, raw: str, modifier: str) -> ColumnElement[bool]:
    """FHIR string search: by default a part that starts with the value, ignoring case and
    accents; `:contains` anywhere in a part; `:exact` the whole part as written."""
    condition = tokens.c.param == param
    if modifier == "exact":
        condition = and_(condition, tokens.c.system == EXACT_SYSTEM, tokens.c.code == raw)
    else:
        value = normalized(raw)
        match = (
            tokens.c.code.contains(value, autoescape=True)
            if modifier == "contains"
            else tokens.c.code.startswith(value, autoescape=True)
        )
        condition = and_(condition, tokens.c.system == STRING_SYSTEM, match)
    return resources.c.id.in_(select(tokens.c.resource_id).where(condition))


def _reference_match(param: SearchParam, raw: str, server: str | None) -> ColumnElement[bool]:
    """`Type/id`, `id` (of the parameter's type), or this server's own absolute URL of the
    resource (R4 search.html, reference: `[url]`); another server's URL matches nothing here."""
    own = f"{server.rstrip('/')}/" if server else None
    if own is not None and raw.startswith(own):
        raw = raw.removeprefix(own)
    value = raw if "/" in raw or param.target is None else f"{param.target}/{raw}"
    condition = and_(tokens.c.param == param.name, tokens.c.system == REFERENCE_SYSTEM)
    if "/" in value:
        condition = and_(condition, tokens.c.code == value)
    else:
        condition = and_(condition, tokens.c.code.like(f"%/{value}"))
    return resources.c.id.in_(select(tokens.c.resource_id).where(condition))


def _any(conditions: Sequence[ColumnElement[bool]]) -> ColumnElement[bool]:
    return or_(*conditions) if conditions else false()


def _condition(
    resource_type: str, name: str, value: str, server: str | None = None
) -> ColumnElement[bool] | None:
    """The SQL condition of one search parameter, or None when the type has no such parameter;
    `server`: this server's FHIR base URL, which a reference may be given in."""
    # Each value as given, escaped: a token's are unescaped part by part, the rest whole.
    given = [v for v in _split(value, _UNESCAPED_COMMA) if v != ""]
    values = [unescaped(v) for v in given]
    if not values:
        raise BadRequest(f"{name}: empty value", expression=[name])
    if name == "_id":
        return resources.c.id.in_(values)
    if name == "_lastUpdated":
        column = resources.c.last_updated
        return _any([date_condition(column, column, v, name) for v in values])
    base, _, modifier = name.partition(":")
    chained = None
    if "." in base:
        base, chained = base.split(".", 1)
    param = SEARCH_PARAMS[resource_type].get(base)
    if param is None:
        return None
    if param.type == "date":
        if modifier:
            raise BadRequest(f"{name}: date parameters take no modifier", expression=[name])
        return _any(
            [date_condition(resources.c.date_start, resources.c.date_end, v, name) for v in values]
        )
    if param.type == "string":
        if modifier not in ("", "exact", "contains"):
            raise BadRequest(
                f"{name}: the :{modifier} modifier is not supported (:exact and :contains are)",
                expression=[name],
            )
        return _any([_string_match(param.name, v, modifier) for v in values])
    if param.type == "token":
        if modifier:
            raise BadRequest(
                f"{name}: the :{modifier} modifier is not supported", expression=[name]
            )
        return _any([_token_match(param.name, v) for v in given])
    if modifier == "identifier" or chained == "identifier":
        return _any([_token_match(f"{param.name}:identifier", v) for v in given])
    if modifier or chained:
        raise BadRequest(
            f"{name}: only :identifier (or .identifier) is supported on references",
            expression=[name],
        )
    return _any([_reference_match(param, v, server) for v in values])


def parse(
    resource_type: str,
    params: Sequence[tuple[str, str]],
    strict: bool,
    secret: str,
    server: str | None = None,
) -> SearchRequest:
    """Check every parameter; unknown ones fail under strict handling, else are reported.
    `server`: this server's FHIR base URL, which a reference may be given in."""
    request = SearchRequest(resource_type)
    request.where.append(resources.c.resource_type == resource_type)
    for name, value in params:
        if "\x00" in name or "\x00" in value:
            raise BadRequest(f"{name[:64]!r}: a search value may not hold a NUL character")
        if name in CONTROL:
            _control(request, name, value, secret, strict)
            continue
        known = _known(resource_type, name)
        condition = _condition(resource_type, name, value, server) if known else None
        if condition is None:
            if strict:
                raise BadRequest(
                    f"{name}: unknown or unsupported search parameter for {resource_type}",
                    expression=[name],
                )
            request.ignored.append(name)
            continue
        request.where.append(condition)
        request.query.append((name, value))
    if request.cursor is not None and request.cursor.get("s") != search_digest(request):
        raise BadRequest(
            "_cursor: the cursor belongs to another search (other parameters or another "
            "_sort); follow the links of this search's own pages",
            expression=["_cursor"],
        )
    return request


def search_digest(request: SearchRequest) -> str:
    """What a cursor is bound to: the search's parameters and order, so that a cursor taken
    to another search is refused rather than read against a column it was not made for."""
    body = orjson.dumps([request.resource_type, sorted(request.query)])
    return hashlib.sha256(body).hexdigest()[:16]


def _known(resource_type: str, name: str) -> bool:
    base = name.partition(":")[0].split(".")[0]
    return base in ("_id", "_lastUpdated") or base in SEARCH_PARAMS[resource_type]


def _control(request: SearchRequest, name: str, value: str, secret: str, strict: bool) -> None:
    if name == "_count":
        if not (value.isascii() and value.isdigit()):
            raise BadRequest(f"_count: {value!r} is not a whole number", expression=["_count"])
        digits = value.lstrip("0") or "0"
        count = int(digits) if len(digits) <= LONGEST_COUNT else MAX_COUNT
        request.count = min(count, MAX_COUNT)
        request.summary_count = request.summary_count or count == 0
    elif name == "_sort":
        key = value.lstrip("-")
        if key not in SORTS or "," in value:
            raise BadRequest(
                f"_sort: {value!r}; supported: {', '.join(SORTS)} (with - for descending)",
                expression=["_sort"],
            )
        request.sort, request.descending = key, value.startswith("-")
    elif name == "_summary":
        if value not in SUMMARIES:
            raise BadRequest(
                f"_summary: {value!r}; one of {', '.join(SUMMARIES)}", expression=["_summary"]
            )
        if value == "false":
            return  # whole resources: as without it
        if value != "count":
            # A summary this server does not make: the resources come whole (R4 search.html,
            # _summary), said in the Bundle as an ignored parameter is, refused under strict.
            if strict:
                raise BadRequest(
                    f"_summary={value}: not supported (count and false are)",
                    expression=["_summary"],
                )
            request.ignored.append(f"_summary={value}")
            return
        request.summary_count = True
    elif name == "_total":
        if value not in ("none", "estimate", "accurate"):
            raise BadRequest("_total: none, estimate or accurate", expression=["_total"])
        request.total = value == "accurate"
    elif name in ("_include", "_revinclude"):
        supported = (INCLUDES if name == "_include" else REVINCLUDES).get(request.resource_type, [])
        spec = _include_spec(value)
        source, param, target = include_parts(spec) if spec else ("", "", None)
        if (
            spec is None
            or f"{source}:{param}" not in supported
            or (name == "_revinclude" and target is not None)
        ):
            raise BadRequest(
                f"{name}: {value!r} is not supported here; supported: "
                f"{', '.join(supported) or 'none'}",
                expression=[name],
            )
        (request.includes if name == "_include" else request.revincludes).append(spec)
    elif name == "_cursor":
        request.cursor = decode_cursor(value, secret)
        return
    if name != "_format":
        request.query.append((name, value))


def _include_spec(value: str) -> str | None:
    """`Type:param` of an `_include` or `_revinclude` value; a third part, the target type,
    may name the one type the parameter points at (`Observation:patient:Patient`), or one of
    the types it may point at (`DetectedIssue:implicated:Encounter`, kept: only those are
    included)."""
    parts = value.split(":")
    if len(parts) == 3:
        params = SEARCH_PARAMS.get(parts[0], {})
        param = params.get(parts[1])
        if param is not None and param.targets == (parts[2],):
            return f"{parts[0]}:{parts[1]}"
        if param is not None and parts[2] in param.targets:
            return value
        return None
    return value


def include_parts(spec: str) -> tuple[str, str, str | None]:
    """Source type, parameter and target type (None: every type it points at) of an
    `_include` as `_include_spec` gives it."""
    source, name, *target = spec.split(":")
    return source, name, target[0] if target else None


def encode_cursor(payload: dict[str, Any], secret: str) -> str:
    body = orjson.dumps(payload)
    mac = hmac.new(secret.encode(), body, hashlib.sha256).digest()[:16]
    return base64.urlsafe_b64encode(mac + body).decode().rstrip("=")


def decode_cursor(token: str, secret: str) -> dict[str, Any]:
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        mac, body = raw[:16], raw[16:]
        if not hmac.compare_digest(
            mac, hmac.new(secret.encode(), body, hashlib.sha256).digest()[:16]
        ):
            raise ValueError
        payload: dict[str, Any] = orjson.loads(body)
    except (ValueError, orjson.JSONDecodeError):
        raise BadRequest(
            "_cursor: not a cursor this server issued", expression=["_cursor"]
        ) from None
    return payload


def sort_column(request: SearchRequest) -> Any:
    column = SORTS[request.sort]
    if request.sort == "date":
        return _coalesce(column, _FAR_FUTURE)
    return column


def keyset(request: SearchRequest, backwards: bool) -> ColumnElement[bool]:
    """Rows after (or before) the cursor's last (sort value, id), in the search's order."""
    if request.cursor is None:
        return true()
    column = sort_column(request)
    value: Any = request.cursor["v"]
    if request.sort in ("_lastUpdated", "date"):
        value = datetime.fromisoformat(value)
        value = literal(value, type_=resources.c.last_updated.type)
    last_id = request.cursor["id"]
    forward = request.descending == backwards
    if forward:
        return or_(column > value, and_(column == value, resources.c.id > last_id))
    return or_(column < value, and_(column == value, resources.c.id < last_id))


def included_types(request: SearchRequest) -> set[str]:
    """The resource types `_include` and `_revinclude` add to the results."""
    types = {spec.split(":")[0] for spec in request.revincludes}
    for spec in request.includes:
        source, name, target = include_parts(spec)
        types.update([target] if target else SEARCH_PARAMS[source][name].targets)
    return types
