"""SMART system scopes: `system/Observation.rs` (v2), `system/Observation.read` (v1),
`system/*.rs`. See https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html.

v2 letters: c create, r read (read, vread, instance history), u update, d delete, s search
(type search and type history). v1 `read` is `rs`, `write` is `cud`, `*` is `cruds`."""

import re
from dataclasses import dataclass

V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"system/(?P<type>\*|[A-Z][A-Za-z]+)\.(?P<access>[a-z*]+)")


class ScopeError(ValueError):
    """A scope string the adapter does not understand (named in the message)."""


@dataclass(frozen=True)
class Scope:
    resource_type: str
    """A FHIR type, or * for every type."""
    letters: frozenset[str]

    def __str__(self) -> str:
        return f"system/{self.resource_type}.{''.join(c for c in 'cruds' if c in self.letters)}"


def parse_scope(text: str) -> Scope:
    match = _SCOPE.fullmatch(text)
    if match is None:
        raise ScopeError(f"{text!r} is not a system scope (system/<Type>.<cruds> or .read)")
    access = match["access"]
    if access in V1:
        letters = V1[access]
    elif re.fullmatch("c?r?u?d?s?", access):
        letters = access
    else:
        raise ScopeError(f"{text!r}: the access part must be read, write, * or cruds in order")
    return Scope(match["type"], frozenset(letters))


def parse_scopes(text: str) -> list[Scope]:
    """Every scope of a space-separated list; one that is not understood is an error."""
    return [parse_scope(part) for part in text.split()]


@dataclass(frozen=True)
class Grant:
    """The scopes a caller holds."""

    scopes: tuple[Scope, ...]

    @classmethod
    def of(cls, text: str) -> "Grant":
        return cls(tuple(parse_scopes(text)))

    def allows(self, resource_type: str, letter: str) -> bool:
        return any(
            letter in scope.letters and scope.resource_type in ("*", resource_type)
            for scope in self.scopes
        )

    def narrowed(self, asked: list[Scope]) -> "Grant":
        """What of the asked scopes this grant covers: each asked scope cut down to the types
        and letters held (`system/*.rs` asked of a client holding `system/Observation.read`
        is `system/Observation.rs`)."""
        granted: dict[str, Scope] = {}
        for wanted in asked:
            for held in self.scopes:
                if wanted.resource_type == "*":
                    resource_type = held.resource_type
                elif held.resource_type in ("*", wanted.resource_type):
                    resource_type = wanted.resource_type
                else:
                    continue
                letters = wanted.letters & held.letters
                if letters:
                    scope = Scope(resource_type, letters)
                    granted.setdefault(str(scope), scope)
        return Grant(tuple(granted.values()))

    def __str__(self) -> str:
        return " ".join(str(scope) for scope in self.scopes)
