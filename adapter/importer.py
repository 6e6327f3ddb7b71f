"""Streams an NDJSON file of any size through the intake path, in batches, at flat memory."""

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import orjson

from adapter.intake.body import ndjson_lines
from adapter.intake.service import Intake, RecordOutcome


@dataclass
class ImportReport:
    """What an import did: counts per outcome and where the rejected lines went."""

    counts: Counter[str] = field(default_factory=Counter)
    bytes_read: int = 0
    seconds: float = 0.0
    rejected_file: Path | None = None

    @property
    def records(self) -> int:
        return sum(self.counts.values())

    @property
    def accepted(self) -> int:
        return self.records - self.counts["rejected"]

    @property
    def rate(self) -> float:
        return self.records / self.seconds if self.seconds else 0.0


def rejected_path(source: Path) -> Path:
    return source.with_name(source.name + ".rejected.ndjson")


def _batches(lines: Iterator[tuple[int, bytes]], size: int) -> Iterator[list[tuple[int, bytes]]]:
    while batch := list(islice(lines, size)):
        yield batch


class _CountingReader:
    """Yields a binary file's lines and counts the bytes read, for the progress estimate."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle = handle
        self.bytes_read = 0

    def __iter__(self) -> Iterator[bytes]:
        for line in self.handle:
            self.bytes_read += len(line)
            yield line


def import_file(
    intake: Intake,
    source: Path,
    batch_size: int,
    on_batch: Callable[[ImportReport], None] | None = None,
) -> ImportReport:
    """Import every line of `source`; rejected lines and their reasons go to a file beside it."""
    report = ImportReport()
    target = rejected_path(source)
    started = time.perf_counter()
    rejected_out: BinaryIO | None = None
    try:
        with source.open("rb") as handle:
            reader = _CountingReader(handle)
            for batch in _batches(ndjson_lines(reader), batch_size):
                raw_by_line = dict(batch)
                outcomes: list[RecordOutcome] = intake.submit(batch)
                for outcome in outcomes:
                    report.counts[outcome.outcome] += 1
                    if outcome.outcome != "rejected":
                        continue
                    if rejected_out is None:
                        rejected_out = target.open("wb")
                    line = {
                        "line": outcome.index,
                        "errors": [error.as_dict() for error in outcome.errors],
                        "record": raw_by_line[outcome.index].decode("utf-8", "replace"),
                    }
                    rejected_out.write(orjson.dumps(line) + b"\n")
                report.bytes_read = reader.bytes_read
                report.seconds = time.perf_counter() - started
                if on_batch:
                    on_batch(report)
    finally:
        if rejected_out is not None:
            rejected_out.close()
    report.seconds = time.perf_counter() - started
    if rejected_out is not None:
        report.rejected_file = target
    elif target.exists():
        target.unlink()  # left by an earlier import of this file; it no longer applies
    return report
