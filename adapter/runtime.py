"""Opens what every entry point needs, the service and the CLI alike: mappings, store, intake."""

from dataclasses import dataclass

from adapter.intake.service import Intake
from adapter.intake.validation import IntakeContext
from adapter.mapping.config import Mappings, load_mappings
from adapter.settings import Settings
from adapter.store import migrate
from adapter.store.engine import make_engine
from adapter.store.records import RecordStore


@dataclass(frozen=True)
class Runtime:
    settings: Settings
    mappings: Mappings
    store: RecordStore
    intake: Intake


def open_runtime(settings: Settings) -> Runtime:
    """Load the mappings and open the store; a broken mapping or a stale schema stops here."""
    mappings = load_mappings(settings.mappings_dir)
    engine = make_engine(settings.database_url)
    if settings.auto_migrate:
        migrate.upgrade(engine)
    elif migrate.pending(engine):
        raise RuntimeError(
            "the store's schema is behind its migrations: run `infusion-adapter db upgrade`"
        )
    store = RecordStore(engine)
    context = IntakeContext(limits=mappings.limits, time_zone=mappings.site.zone())
    return Runtime(settings=settings, mappings=mappings, store=store, intake=Intake(store, context))
