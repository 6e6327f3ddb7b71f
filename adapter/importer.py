"""Streams an NDJSON file of any size through the intake path, in batches, at flat memory."""

import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import orjson

from adapter.errors import FieldError
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


CHUNK = 1024 * 1024


class _CountingReader:
    """Yields a binary file's lines, each read up to `longest` bytes (a longer one is read past
    in chunks, its size kept in `sizes`), and counts the bytes read, for
    the progress estimate."""

    def __init__(self, handle: BinaryIO, longest: int) -> None:
        self.handle = handle
        self.longest = longest
        self.bytes_read = 0
        self.sizes: dict[int, int] = {}
        """Line number of each line over the limit, and its size."""

    def __iter__(self) -> Iterator[bytes]:
        number = 0
        while line := self.handle.readline(self.longest + 2):
            number += 1
            self.bytes_read += len(line)
            if len(line.rstrip(b"\r\n")) <= self.longest:
                yield line
                continue
            size = len(line)
            while not line.endswith(b"\n") and (line := self.handle.readline(CHUNK)):
                size += len(line)
                self.bytes_read += len(line)
            self.sizes[number] = size
            yield b"(too long)"


def _too_long(number: int, size: int, longest: int) -> RecordOutcome:
    reason = f"the line is {size} bytes; a record may be at most {longest} bytes"
    return RecordOutcome(
        number, "rejected", None, None, None, errors=[FieldError("(record)", reason)]
    )


def import_file(
    intake: Intake,
    source: Path,
    batch_size: int,
    on_batch: Callable[[ImportReport], None] | None = None,
    longest_line: int = 10 * 1024 * 1024,
    site: str | None = None,
) -> ImportReport:
    """Import every line of `source`; rejected lines and their reasons go to a file beside it.
    A line over `longest_line` bytes is rejected without being read whole. `site`: the clinic
    site of a group the file comes from: records that name none are its, others are refused."""
    report = ImportReport()
    target = rejected_path(source)
    started = time.perf_counter()
    rejected_out: BinaryIO | None = None
    try:
        with source.open("rb") as handle:
            reader = _CountingReader(handle, longest_line)
            for batch in _batches(ndjson_lines(reader), batch_size):
                raw_by_line = dict(batch)
                too_long = {n: reader.sizes.pop(n) for n, _ in batch if n in reader.sizes}
                outcomes: list[RecordOutcome] = intake.submit(
                    [item for item in batch if item[0] not in too_long],
                    frozenset({site}) if site else None,
                )
                outcomes += [_too_long(n, size, longest_line) for n, size in too_long.items()]
                for outcome in outcomes:
                    report.counts[outcome.outcome] += 1
                    if outcome.outcome != "rejected":
                        continue
                    if rejected_out is None:
                        rejected_out = target.open("wb")
                    line = {
                        "line": outcome.index,
                        "errors": [error.as_dict() for error in outcome.errors],
                        "record": None
                        if outcome.index in too_long
                        else raw_by_line[outcome.index].decode("utf-8", "replace"),
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
