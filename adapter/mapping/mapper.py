"""Maps one stored record to its FHIR resources, each checked before it may be emitted."""

from dataclasses import dataclass
from datetime import datetime

from adapter.fhir import us_core
from adapter.fhir.validation import InvalidResource, ResourceValidator
from adapter.intake.records import (
    AdverseEvent,
    AnyRecord,
    FastingAttestation,
    InfusionSession,
    TransportAttestation,
    Vitals,
)
from adapter.mapping.adverse_event import adverse_event_to_resources
from adapter.mapping.common import Built, Vocabulary
from adapter.mapping.config import Mappings
from adapter.mapping.detected_issue import protocol_to_resources
from adapter.mapping.observations import (
    fasting_to_observation,
    transport_to_observation,
    vitals_to_observations,
)
from adapter.mapping.protocol import SessionFacts
from adapter.mapping.session import session_to_resources


@dataclass(frozen=True)
class SourceRecord:
    """A stored record as mapping needs it: the record, when it was first received, its session."""

    record: AnyRecord
    first_received_at: datetime
    session: InfusionSession | None = None


class Mapper:
    """The current mappings, ready to turn records into checked resources."""

    def __init__(
        self,
        mappings: Mappings,
        validator: ResourceValidator | None = None,
        site_id: str | None = None,
    ) -> None:
        self.mappings = mappings
        self.site_id = site_id
        self.vocabulary = Vocabulary(mappings, site_id)
        self.validator = validator or ResourceValidator()

    @property
    def version(self) -> str:
        return self.mappings.version

    def build(self, source: SourceRecord) -> Built:
        """The resources of one record, unchecked; or what it waits for."""
        record, vocabulary = source.record, self.vocabulary
        if isinstance(record, InfusionSession):
            return session_to_resources(vocabulary, record)
        if isinstance(record, Vitals):
            return vitals_to_observations(vocabulary, record)
        if isinstance(record, AdverseEvent):
            return adverse_event_to_resources(vocabulary, record, source.first_received_at)
        if isinstance(record, FastingAttestation):
            return fasting_to_observation(vocabulary, record, source.session)
        assert isinstance(record, TransportAttestation)
        return transport_to_observation(vocabulary, record)

    def map(self, source: SourceRecord) -> Built:
        """The resources of one record, every one checked; InvalidResource if any fails."""
        return self.checked(self.build(source))

    def protocol(self, facts: SessionFacts) -> Built:
        """The session's protocol breaches as checked DetectedIssues and their notes."""
        return self.checked(protocol_to_resources(self.vocabulary, facts))

    def checked(self, built: Built) -> Built:
        """`built`, every resource checked; InvalidResource if any fails."""
        for resource in built.resources:
            us_core.claim(resource)
            self.validator.check(resource)
        return built


__all__ = ["InvalidResource", "Mapper", "SourceRecord"]
