"""Splits a received body (one record, a JSON array, or NDJSON) into raw records."""

import json
import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson

from adapter.errors import BadRequest, MalformedJson, UnsupportedMediaType

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson")


def ndjson_lines(lines: Iterable[bytes], first_line: int = 1) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of every non-blank line."""
    for number, line in enumerate(lines, start=first_line):
        stripped = line.strip()
        if stripped:
            yield number, stripped


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def read_integer(text: str) -> int | float:
    """An integer as the standard library's parser reads it; one longer than the interpreter
    makes an int of (`sys.get_int_max_str_digits`, 4,300 digits) as an infinite float, which
    its record is refused for, naming the field, where the parse would fail as a whole."""
    try:
        return int(text)
    except ValueError:
        return float(text)


def read_json(text: bytes | str) -> Any:
    """JSON as orjson reads it; where orjson refuses a number beyond a float's reach (1e400)
    or beyond 64 bits, as the standard library reads it, a number beyond a float's reach an
    infinite float: the record that holds it is refused for it, field by field, not the body
    around it."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as refused:
        try:
            return json.loads(text, parse_constant=_refuse_constant, parse_int=read_integer)
        except (ValueError, RecursionError):
            raise refused from None


_DECODER = json.JSONDecoder(parse_int=read_integer)
_SPACE = re.compile(r"[ \t\n\r]*")


def _array_items(text: str) -> list[bytes]:
    """Each item of a JSON array as the bytes it was sent as (so that each record is checked
    as received: a parser's copy would have dropped a repeated key)."""
    items: list[bytes] = []
    position = _SPACE.match(text, text.index("[") + 1).end()  # type: ignore[union-attr]
    while text[position] != "]":
        _, end = _DECODER.raw_decode(text, position)
        items.append(text[position:end].encode())
        position = _SPACE.match(text, end).end()  # type: ignore[union-attr]
        if text[position] == ",":
            position = _SPACE.match(text, position + 1).end()  # type: ignore[union-attr]
    return items


def _json_records(body: bytes) -> list[tuple[int, bytes]]:
    try:
        data: Any = read_json(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedJson(
            f"body is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if isinstance(data, dict):
        return [(0, body.strip())]
    if isinstance(data, list):
        return list(enumerate(_array_items(body.decode("utf-8"))))
    raise BadRequest("body must be one record (a JSON object) or a JSON array of records")


def split_body(content_type: str, body: bytes) -> tuple[str, list[tuple[int, bytes]]]:
    """The key that positions are reported under ('index' or 'line') and the raw records."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    if media_type in JSON_TYPES:
        items, key = _json_records(body), "index"
    elif media_type in NDJSON_TYPES:
        items, key = list(ndjson_lines(body.split(b"\n"))), "line"
    else:
        raise UnsupportedMediaType(
            f"Content-Type {media_type or '(none)'} is not accepted: send application/json "
            "(one record or an array) or application/x-ndjson"
        )
    if not items:
        raise BadRequest("body holds no record")
    return key, items
