"""The nesting depth of a JSON (or NDJSON) body, found in time linear in its length, a slice
at a time: the regular expressions run in C holding the GIL, so a body is read in slices of
SLICE bytes, between which other threads (the event loop's among them) get their turn."""

import re
from dataclasses import dataclass

SLICE = 128 * 1024
_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)', re.DOTALL)
"""A string, or an unterminated one running to the end of the slice: from any quote the
pattern matches, so the scan never starts again inside text it has read (a pattern that can
fail at the end, as `"(?:[^"\\]|\\.)*"` does on `"\\"\\"\\"...`, rereads the rest from every
escaped quote: quadratic time)."""
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*', re.DOTALL)
"""The rest of a string begun in an earlier slice, up to its closing quote."""
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")
_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


@dataclass
class _Scan:
    depth: int = 0
    deepest: int = 0
    in_string: bool = False
    escaped: bool = False
    """The slice ended inside a string on a backslash: the next slice's first byte is escaped."""

    def brackets(self, text: bytes) -> None:
        for byte in text.translate(None, delete=_NOT_BRACKETS):
            self.depth += _STEP[byte]
            if self.depth > self.deepest:
                self.deepest = self.depth
            elif self.depth < 0:  # a closing bracket opened nowhere: no credit for what follows
                self.depth = 0

    def end_string(self, part: bytes, start: int) -> int:
        """Read on inside a string from `start`; where the text after it begins."""
        if self.escaped:
            self.escaped, start = False, start + 1
        end = _STRING_REST.match(part, start).end()  # type: ignore[union-attr]
        if end < len(part) and part[end : end + 1] == b'"':
            self.in_string = False
            return end + 1
        self.escaped = part.endswith(b"\\") and end == len(part) - 1
        return len(part)

    def slice(self, part: bytes) -> None:
        position = self.end_string(part, 0) if self.in_string else 0
        while position < len(part):
            found = _STRING.search(part, position)
            if found is None:
                self.brackets(part[position:])
                return
            self.brackets(part[position : found.start()])
            text = found.group()
            closed = len(text) > 1 and text.endswith(b'"') and not _odd_escape(text)
            if not closed:
                self.in_string = True
                self.escaped = _trailing_backslashes(text[1:]) % 2 == 1
                return
            position = found.end()


def _trailing_backslashes(text: bytes) -> int:
    return len(text) - len(text.rstrip(b"\\"))


def _odd_escape(text: bytes) -> bool:
    """Whether the quote ending `text` is escaped (an odd run of backslashes before it)."""
    return _trailing_backslashes(text[1:-1]) % 2 == 1


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects outside strings (0 for a bare value)."""
    scan = _Scan()
    for start in range(0, len(body), SLICE):
        scan.slice(body[start : start + SLICE])
    return scan.deepest
