"""Mapping records in tests without the store: the example day, single records, one resource."""

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from adapter.intake.records import AnyRecord, ClinicRecord, InfusionSession
from adapter.mapping.common import Built
from adapter.mapping.config import load_mappings
from adapter.mapping.derived import derived_from
from adapter.mapping.mapper import Mapper, SourceRecord
from tests.conftest import EXAMPLE_DAY

RECEIVED = datetime(2026, 11, 20, 21, 0, tzinfo=UTC)
_RECORD = TypeAdapter[AnyRecord](ClinicRecord)


def record(body: dict[str, Any]) -> AnyRecord:
    return _RECORD.validate_json(orjson.dumps(body))


def mapper(folder: Path) -> Mapper:
    return Mapper(load_mappings(folder))


def map_record(
    mapper: Mapper, body: dict[str, Any], session: dict[str, Any] | None = None
) -> Built:
    parsed_session = record(session) if session else None
    assert parsed_session is None or isinstance(parsed_session, InfusionSession)
    return mapper.map(SourceRecord(record(body), RECEIVED, parsed_session))


def example_day(day: Path = EXAMPLE_DAY) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in day.read_bytes().splitlines() if line.strip()]


def map_example_day(mapper: Mapper, day: Path = EXAMPLE_DAY) -> dict[str, list[dict[str, Any]]]:
    """Every record's resources, by record id, then each session's protocol breaches
    (`protocol:{session id}`)."""
    bodies = example_day(day)
    sessions = {b["id"]: b for b in bodies if b["record_type"] == "infusion_session"}
    mapped = {
        body["id"]: map_record(mapper, body, sessions.get(body.get("session_id", ""))).resources
        for body in bodies
    }
    for source_type, source_id, built in derived_from(mapper, [record(b) for b in bodies]):
        mapped[f"{source_type}:{source_id}"] = built.resources
    return mapped


def only(resources: list[dict[str, Any]], resource_type: str, suffix: str = "") -> dict[str, Any]:
    """The one resource of a type whose identifier value ends with `suffix`."""
    found = [
        r
        for r in resources
        if r["resourceType"] == resource_type and _identifier(r)["value"].endswith(suffix)
    ]
    assert len(found) == 1, [(r["resourceType"], _identifier(r)["value"]) for r in resources]
    return found[0]


def _identifier(resource: dict[str, Any]) -> dict[str, Any]:
    identifier = resource["identifier"]
    return identifier[0] if isinstance(identifier, list) else identifier
