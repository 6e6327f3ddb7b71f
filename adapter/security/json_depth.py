"""The nesting depth of a JSON (or NDJSON) body, found in time linear in its length."""

import re
from itertools import accumulate

_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
"""A string, or an unterminated one running to the end: from any quote the pattern matches,
so the scan never starts again inside text it has read (a pattern that can fail at the end,
as `"(?:[^"\\]|\\.)*"` does on `"\\"\\"\\"...`, rereads the rest from every escaped quote:
quadratic time)."""
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects outside strings (0 for a bare value)."""
    brackets = _STRING.sub(b"", body).translate(None, delete=_NOT_BRACKETS)
    if not brackets:
        return 0
    return max(0, max(accumulate(_STEP[byte] for byte in brackets)))
