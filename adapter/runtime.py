"""Opens what every entry point needs, the service and the CLI alike: mappings, store, intake."""

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import Engine

from adapter.errors import MappingFileError
from adapter.export.service import ExportService
from adapter.intake.service import Intake
from adapter.intake.validation import IntakeContext
from adapter.mapping.config import EhrRules, Mappings, Site, load_ehr_rules
from adapter.mapping.service import MappingService
from adapter.mapping.sites import SITES_DIR, SiteConfig, load_group, load_site_ehr, site_settings
from adapter.security.audit import AuditLog
from adapter.security.clients import Clients
from adapter.settings import Settings
from adapter.store import migrate
from adapter.store.engine import make_engine
from adapter.store.fhir_reads import FhirReader
from adapter.store.mapping_queue import MappingQueue
from adapter.store.outbox import Outbox
from adapter.store.records import RecordStore
from adapter.store.resources import ResourceStore
from adapter.store.sync_state import SyncRuns
from adapter.sync.engine import BackOff, Sync


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    store: RecordStore
    intake: Intake
    mapping: MappingService
    resources: ResourceStore
    exports: ExportService
    outbox: Outbox
    sync_runs: SyncRuns
    sync: Sync | None
    """The sync to the EHR; None when no EHR is configured (the outbox fills all the same), and
    in a group of sites, whose EHRs are in `site_syncs`."""
    clients: Clients
    audit: AuditLog
    fhir_reads: FhirReader
    site_syncs: dict[str, Sync] = field(default_factory=dict)
    """The sync of each site of a group whose ehr.yaml names its EHR's connection."""

    def syncs(self) -> list[Sync]:
        """Every sync of the deployment: its one EHR's, or each site's."""
        return [self.sync] if self.sync is not None else list(self.site_syncs.values())

    def longest_backoff(self) -> BackOff:
        """The sync's back-off from its EHR: in a group, that of the site that backs off
        longest (a site whose EHR is down is an EHR down); none: an empty one."""
        states = [sync.backoff_state() for sync in self.syncs()]
        waiting = [(state.until, state) for state in states if state.until is not None]
        return max(waiting, key=lambda entry: entry[0])[1] if waiting else BackOff()

    def sync_of(self, site: str | None) -> Sync | None:
        """The sync of a site (None: the deployment's one EHR)."""
        return self.sync if site is None else self.site_syncs.get(site)

    def close(self) -> None:
        """Close the store's connections (the engine of single reads too)."""
        self.store.engine.dispose()
        self.fhir_reads.close()

    def reload_mappings(self) -> bool:
        """Apply changed mapping files to intake and mapping; a broken file raises and changes
        nothing. True when the files changed."""
        changed = self.mapping.reload()
        if changed:
            self.intake.context = intake_context(
                self.mapping.mapper.mappings, self.mapping.sites, self.settings.default_site
            )
        return changed


def intake_context(
    mappings: Mappings,
    sites: dict[str, SiteConfig] | None = None,
    default_site: str | None = None,
) -> IntakeContext:
    """What intake needs to know of the mappings: the limits and time zone, each site's."""
    return IntakeContext(
        limits=mappings.limits,
        time_zone=mappings.site.zone(),
        sites={
            site_id: IntakeContext(
                limits=config.mappings.limits, time_zone=config.mappings.site.zone()
            )
            for site_id, config in (sites or {}).items()
        },
        default_site=default_site,
    )


def open_runtime(settings: Settings) -> Runtime:
    """Load the mappings and open the store; a broken mapping file (mappings/ehr.yaml
    included) or a stale schema stops here."""
    mappings, sites = load_group(settings.mappings_dir)
    if settings.default_site is not None and settings.default_site not in sites:
        raise MappingFileError(
            f"ADAPTER_DEFAULT_SITE: {settings.default_site!r} is not a site under "
            f"{settings.mappings_dir / SITES_DIR}"
        )
    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        migrate.upgrade(engine)
    elif migrate.pending(engine):
        raise RuntimeError(
            "the store's schema is behind its migrations: run `infusion-adapter db upgrade`"
        )
    store = RecordStore(engine)
    mapping = MappingService(
        MappingQueue(engine, timedelta(seconds=settings.mapping_claim_seconds)),
        mappings,
        settings.mappings_dir,
        sites=sites,
    )
    mapping.adopt_version()
    load_ehr_rules(settings.mappings_dir)
    sync = (
        Sync(settings, engine, store, lambda: mapping.mapper.mappings.site)
        if settings.ehr_base_url and not sites
        else None
    )
    return Runtime(
        settings=settings,
        store=store,
        intake=Intake(store, intake_context(mappings, sites, settings.default_site)),
        mapping=mapping,
        resources=ResourceStore(engine),
        exports=ExportService(
            engine, settings.export_dir, timedelta(minutes=settings.export_retention_minutes)
        ),
        outbox=Outbox(engine),
        sync_runs=SyncRuns(engine),
        sync=sync,
        clients=Clients(engine),
        audit=AuditLog(engine, settings.secret_key),
        fhir_reads=FhirReader(make_engine(settings.database_url, single_reads=True)),
        site_syncs=site_syncs(settings, engine, store, mapping),
    )


def site_syncs(
    settings: Settings, engine: Engine, store: RecordStore, mapping: MappingService
) -> dict[str, Sync]:
    """A sync per site of a group whose ehr.yaml names its EHR, each on its own: its lease,
    back-off, runs and patient matches, its EHR's client and breaker, its outbox items."""
    syncs: dict[str, Sync] = {}
    for site_id, config in mapping.sites.items():
        if config.ehr.connection is None:
            continue
        syncs[site_id] = Sync(
            site_settings(settings, site_id, config.ehr.connection),
            engine,
            store,
            _site_of(mapping, site_id),
            site_id=site_id,
            rules=_rules_of(settings.mappings_dir, site_id),
        )
    return syncs


def _site_of(mapping: MappingService, site_id: str) -> Callable[[], Site]:
    return lambda: mapping.sites[site_id].mappings.site


def _rules_of(folder: Path, site_id: str) -> Callable[[], EhrRules]:
    return lambda: load_site_ehr(folder, site_id)
