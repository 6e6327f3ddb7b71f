"""Maps pending records to stored resources; reloads the mapping files when they change."""

import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from pydantic import TypeAdapter

from adapter.fhir.validation import InvalidResource
from adapter.intake.records import AnyRecord, ClinicRecord, InfusionSession
from adapter.mapping.config import Mappings
from adapter.mapping.derived import derived_resources
from adapter.mapping.detected_issue import SOURCE_TYPE as PROTOCOL
from adapter.mapping.mapper import Mapper, SourceRecord
from adapter.mapping.sites import SiteConfig, load_group, site_mappers
from adapter.store import notices
from adapter.store.mapping_queue import (
    FAILED,
    MAPPED,
    UNCODED,
    WAITING,
    MappingOutcome,
    MappingQueue,
    QueuedRecord,
)
from adapter.store.resources import MappedRecord, ResourceStore, ResourceWriter, SaveCounts

log = logging.getLogger(__name__)
_RECORD = TypeAdapter[AnyRecord](ClinicRecord)


@dataclass
class MappingReport:
    """What one mapping run did."""

    records: int = 0
    mapped: int = 0
    waiting: int = 0
    failed: int = 0
    sessions_checked: int = 0
    resources: SaveCounts = field(default_factory=SaveCounts)
    batch_queued_sites: set[str | None] = field(default_factory=set)
    """The clinic sites whose resources the latest batch queued for the EHR."""


def files_stamp(folder: Path) -> str:
    """A digest of every file under `folder`, by name and content: reading and hashing them
    costs a small part of parsing them."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        try:
            content = path.read_bytes() if path.is_file() else None
        except OSError:
            continue  # removed while listed: the next look sees the folder as it is
        if content is not None:
            digest.update(str(path.relative_to(folder)).encode() + b"\0" + content + b"\0")
    return digest.hexdigest()


def _by_site(
    batch: list[QueuedRecord], parsed: list[AnyRecord]
) -> list[tuple[str | None, list[QueuedRecord], list[AnyRecord]]]:
    """A batch's records grouped by their site, in the order the sites first appear."""
    groups: dict[str | None, tuple[list[QueuedRecord], list[AnyRecord]]] = {}
    for item, record in zip(batch, parsed, strict=True):
        items, records = groups.setdefault(record.clinic_site, ([], []))
        items.append(item)
        records.append(record)
    return [(site, items, records) for site, (items, records) in groups.items()]


class _ClaimLost(Exception):
    """A batch no longer holds every record it claimed: its transaction is rolled back."""


class _VersionChanged(Exception):
    """Another process adopted another mapping version while a batch was mapped: the batch is
    rolled back, and this process maps nothing until it loads the files of that version."""


class MappingService:
    """The current mapping and the loop that applies it to every pending record."""

    def __init__(
        self,
        queue: MappingQueue,
        mappings: Mappings,
        mappings_dir: Path,
        resources: ResourceStore | None = None,
        sites: dict[str, SiteConfig] | None = None,
    ) -> None:
        self.queue = queue
        self.resources = resources or ResourceStore(queue.engine)
        self.mappings_dir = mappings_dir
        self.mapper = Mapper(mappings)
        self.sites: dict[str, SiteConfig] = {}
        self.site_mappers: dict[str, Mapper] = {}
        self._adopt_sites(sites or {})
        self.previous_version: str | None = None
        self._lock = threading.Lock()
        self._stamp: str | None = None
        self._stale_version: str | None = None
        """The version last found not to be the store's (said once in the log)."""

    @property
    def version(self) -> str:
        return self.mapper.version

    def _adopt_sites(self, sites: dict[str, SiteConfig]) -> None:
        self.sites = sites
        self.site_mappers = site_mappers(sites, self.mapper.validator)

    def mapper_for(self, site_id: str | None) -> Mapper:
        """The mapper of a site of the group (the shared one for records without a site)."""
        return self.site_mappers[site_id] if site_id is not None else self.mapper

    def adopt_version(self) -> int:
        """Re-queue every record if the stored resources were made with another mapping version."""
        stored = self.queue.stored_version()
        if stored == self.version:
            return 0
        self.previous_version = stored
        with self.queue.engine.begin() as connection:
            # The version first: its row lock waits for the batches storing under the old
            # version (`_map_batch`), so that the requeue below sees what they stored.
            self.queue.set_version(connection, self.version)
            count = self.queue.requeue(connection, [MAPPED, UNCODED, WAITING, FAILED])
            notices.announce(connection, notices.MAPPINGS)
        if count:
            log.info(
                "mapping version %s: %d records queued to be mapped again", self.version, count
            )
        return count

    def reload(self) -> bool:
        """Load the mapping files again; True when they changed. A broken file raises, and the
        mapping in use stays in use. Files just as at the last load are not parsed again (the
        service asks every few seconds)."""
        stamp = files_stamp(self.mappings_dir)
        if stamp == self._stamp:
            return False
        mappings, sites = load_group(self.mappings_dir)
        self._stamp = stamp
        if mappings.version == self.version:
            self.sites = sites  # an EHR connection may have changed
            return False
        with self._lock:
            self.mapper = Mapper(mappings, self.mapper.validator)
            self._adopt_sites(sites)
        self.adopt_version()
        return True

    def run(
        self, batch_size: int = 500, on_batch: Callable[[MappingReport], None] | None = None
    ) -> MappingReport:
        """Map every pending record once, in key order. Records received while the run works
        are mapped before its next batch (side effects first), so that a backlog (a new mapping
        version re-maps everything) does not hold them; other records queued meanwhile wait
        for the next run, and records another mapping process holds are its to map."""
        report = MappingReport()
        after: tuple[str, str] | None = None
        started = datetime.now(UTC)
        seen: set[tuple[str, str, int]] = set()
        with self._lock:
            mapper, site_mappers = self.mapper, dict(self.site_mappers)
            while True:
                now = datetime.now(UTC)
                batch = [
                    item
                    for item in self.queue.claim_arrivals(started, batch_size, now)
                    if (item.record_type, item.source_id, item.mapping_seq) not in seen
                ]
                if batch:
                    seen.update((i.record_type, i.source_id, i.mapping_seq) for i in batch)
                else:
                    batch = self.queue.claim_batch(batch_size, now, after)
                    if not batch:
                        break
                    after = (batch[-1].record_type, batch[-1].source_id)
                if not self._map_batch(mapper, batch, report, site_mappers):
                    break
                if on_batch:
                    on_batch(report)
        return report

    def _let_go(
        self, batch: list[QueuedRecord], report: MappingReport, counted: tuple[int, int, int]
    ) -> None:
        """A batch stopped before it stored anything: what it holds goes back to the queue, and
        the report counts none of it."""
        with self.queue.engine.begin() as connection:
            self.queue.release(connection, batch)
        report.mapped, report.waiting, report.failed = counted
        report.batch_queued_sites = set()

    def _map_batch(
        self,
        shared: Mapper,
        batch: list[QueuedRecord],
        report: MappingReport,
        site_mappers: dict[str, Mapper] | None = None,
    ) -> bool:
        """Map and store one claimed batch, each record with its site's mapper; False when the
        store's mapping version is no longer this process's (the run stops: what it mapped is
        not stored)."""
        site_mappers = site_mappers or {}
        parsed = [_RECORD.validate_json(item.parsed) for item in batch]
        wanted = {
            item.session_id
            for item, record in zip(batch, parsed, strict=True)
            if record.record_type == "attestation" and item.session_id
        }
        sessions = {
            key: value
            for key, raw in self.queue.sessions(wanted).items()
            if isinstance(value := _RECORD.validate_json(raw), InfusionSession)
        }
        outcomes: list[MappingOutcome] = []
        mapped: list[MappedRecord] = []
        counted = (report.mapped, report.waiting, report.failed)
        for item, record in zip(batch, parsed, strict=True):
            if record.clinic_site is not None and record.clinic_site not in site_mappers:
                # Its site's folder was removed: it waits for the site to come back.
                outcomes.append(
                    MappingOutcome(
                        item,
                        WAITING,
                        {"waiting_for": f"site {record.clinic_site} (mappings/sites/)"},
                        shared.version,
                    )
                )
                report.waiting += 1
                continue
            mapper = site_mappers[record.clinic_site] if record.clinic_site else shared
            source = SourceRecord(
                record, item.first_received_at, sessions.get(item.session_id or "")
            )
            try:
                built = mapper.map(source)
            except InvalidResource as exc:
                log.error("mapping %s produced an invalid %s", item.record_type, exc.resource_type)
                outcomes.append(
                    MappingOutcome(
                        item,
                        FAILED,
                        {"problems": exc.problems, "resource_type": exc.resource_type},
                        mapper.version,
                    )
                )
                report.failed += 1
                continue
            if built.missing or built.waiting_for:
                detail = (
                    {"missing": [m.as_dict() for m in built.missing]}
                    if built.missing
                    else {"waiting_for": built.waiting_for}
                )
                outcomes.append(MappingOutcome(item, WAITING, detail, mapper.version))
                report.waiting += 1
                continue
            mapped.append(
                MappedRecord(
                    item.record_type,
                    item.source_id,
                    built.resources,
                    item.received_at,
                    record.clinic_site,
                )
            )
            if built.uncoded:
                detail = {"uncoded": [m.as_dict() for m in built.uncoded]}
                outcomes.append(MappingOutcome(item, UNCODED, detail, mapper.version))
            else:
                outcomes.append(MappingOutcome(item, MAPPED, None, mapper.version))
            report.mapped += 1
        # A protocol check's findings start their journey with the newest record of the batch.
        newest = max(item.received_at for item in batch)
        try:
            with self.queue.engine.begin() as connection:
                writer = ResourceWriter(connection)
                now = writer.turn(datetime.now(UTC))
                stored = self.queue.locked_version(connection)
                if stored is not None and stored != shared.version:
                    raise _VersionChanged
                # Read after the turn, what a session's or a patient's records say includes
                # every batch stored before this one: none stores their resources from older
                # facts than a batch stored before it.
                for site_id, site_batch, site_parsed in _by_site(batch, parsed):
                    if site_id is not None and site_id not in site_mappers:
                        continue
                    mapper = site_mappers[site_id] if site_id else shared
                    mapped += [
                        replace(derived, received_at=newest)
                        for derived in derived_resources(
                            mapper, self.queue, self.resources, site_batch, site_parsed
                        )
                    ]
                counts = writer.save(mapped, now)
                if not self.queue.hold(connection, batch):
                    raise _ClaimLost
                self.queue.finish(connection, outcomes)
        except _ClaimLost:
            # Mapped for longer than a claim lasts, and another batch took some of its records.
            log.warning("a mapping batch outlasted its claim; its records wait for the next run")
            self._let_go(batch, report, counted)
            return True
        except _VersionChanged:
            if self._stale_version != shared.version:
                log.warning(
                    "the store's mapping version is not this process's (%s): mapping waits "
                    "until this process loads the same mapping files",
                    shared.version,
                )
            self._stale_version = shared.version
            self._let_go(batch, report, counted)
            return False
        report.records += len(batch)
        report.batch_queued_sites = counts.queued_sites
        report.sessions_checked += sum(1 for m in mapped if m.source_type == PROTOCOL)
        for name in ("created", "updated", "unchanged", "withdrawn"):
            setattr(report.resources, name, getattr(report.resources, name) + getattr(counts, name))
        return True
