"""The EHR's own Encounter for a visit, where a site's EHR keeps its visits itself
(mappings/ehr.yaml `encounters: {use: ehr}`): found by the identifier under which the EHR holds
the clinic's session id, referenced in place of the adapter's Encounter, and never written."""

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from adapter.store.outbox import Outbox
from adapter.sync.client import EhrClient
from adapter.sync.ehr_ids import copies_by_identifier

_ENCOUNTER = re.compile(r'"reference":"Encounter/(?P<id>[^"/:\\]*)"')


def encounter_ids(contents: Iterable[str]) -> set[str]:
    """The adapter Encounters these stored resources reference."""
    return {found for content in contents for found in _ENCOUNTER.findall(content)}


@dataclass
class EhrEncounters:
    """One run's look-ups: each adapter Encounter's session, and the EHR's Encounter with that
    session's identifier (None when the EHR has none, or several: nothing is guessed)."""

    client: EhrClient
    outbox: Outbox
    identifier_system: str
    found: dict[str, str | None] = field(default_factory=dict)
    """Adapter Encounter id -> the EHR's Encounter id, as far as this run has asked."""

    def look_up(self, contents: Iterable[str]) -> None:
        """Ask the EHR, in one search, for the Encounters these resources' visits are."""
        wanted = encounter_ids(contents) - set(self.found)
        if not wanted:
            return
        sessions = self.outbox.sources(wanted)
        identifiers = [
            (self.identifier_system, session) for session in sorted(set(sessions.values()))
        ]
        copies = copies_by_identifier(self.client, "Encounter", identifiers)
        for encounter_id in wanted:
            session = sessions.get(encounter_id)
            held = copies.get((self.identifier_system, session), []) if session else []
            self.found[encounter_id] = str(held[0]["id"]) if len(held) == 1 else None

    def reference(self, encounter_id: str) -> str | None:
        """The EHR's Encounter for the adapter's, as a reference, when the EHR has exactly one."""
        ehr_id = self.found.get(encounter_id)
        return f"Encounter/{ehr_id}" if ehr_id else None
