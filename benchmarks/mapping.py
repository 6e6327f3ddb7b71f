"""Mapping benchmark: resources mapped and fully checked per second, on one core.

N synthetic records (the intake benchmark's mix) are mapped to FHIR R4 resources, each checked
(fhir.resources structure and values, then the adapter's own checks) and serialised. Beside
that rate it prints, measured in the same run on a sample of the same resources, the anchor:
plain fhir.resources `model_validate` + `model_dump_json`. It also corrupts a sample of the
resources after the checks have seen their shapes and asserts every one is still refused.

    .venv/bin/python -m benchmarks.mapping --records 100000
"""

import argparse
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from pydantic import TypeAdapter

from adapter.fhir.models import parse
from adapter.fhir.validation import InvalidResource
from adapter.intake.records import AnyRecord, ClinicRecord, InfusionSession
from adapter.mapping.config import load_mappings
from adapter.mapping.mapper import Mapper, SourceRecord
from benchmarks.synthetic import records

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_EVERY = 10
_RECORD = TypeAdapter[AnyRecord](ClinicRecord)

CORRUPTIONS = [
    ("status", "bogus"),
    ("id", "not an id"),
    ("effectiveDateTime", "2026-02-30T25:00:00"),
    ("subject", {"reference": "Organization/1"}),
    ("meta", {"source": ""}),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()

    mapper = Mapper(load_mappings(ROOT / "mappings"))
    received = datetime(2026, 11, 20, 21, tzinfo=UTC)
    parsed = [_RECORD.validate_json(line) for line in records(args.records)]
    sessions = {r.id: r for r in parsed if isinstance(r, InfusionSession)}
    sources = [
        SourceRecord(r, received, sessions.get(getattr(r, "session_id", "") or "")) for r in parsed
    ]

    sample: list[dict[str, Any]] = []
    produced = 0
    started = time.perf_counter()
    for source in sources:
        for resource in mapper.map(source).resources:
            orjson.dumps(resource)
            if produced % SAMPLE_EVERY == 0:
                sample.append(resource)
            produced += 1
    seconds = time.perf_counter() - started
    rate = produced / seconds

    started = time.perf_counter()
    for resource in sample:
        parse(resource).model_dump_json()
    anchor = len(sample) / (time.perf_counter() - started)

    refused = checked = 0
    for index, resource in enumerate(sample[:2000]):
        element, bad = CORRUPTIONS[index % len(CORRUPTIONS)]
        if element == "effectiveDateTime" and element not in resource:
            continue
        checked += 1
        try:
            mapper.validator.check({**resource, element: bad})
        except InvalidResource:
            refused += 1
    assert refused == checked, f"{checked - refused} corrupted resources were not refused"

    print(f"{args.records:,} records -> {produced:,} resources in {seconds:.1f} s")
    print(f"mapped and fully checked: {rate:>8,.0f} resources/s")
    print(
        f"anchor, fhir.resources model_validate + model_dump_json on {len(sample):,} of them: "
        f"{anchor:>8,.0f} resources/s"
    )
    print(f"ratio {rate / anchor:.1f}x; corrupted resources refused: {refused} of {checked}")


if __name__ == "__main__":
    main()
