"""Builds the service: settings, mappings, store and routes, checked before the first request."""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from adapter import __version__
from adapter.api import fhir, health, mapping, outcome, records, sync
from adapter.runtime import open_runtime
from adapter.settings import Settings, get_settings
from adapter.worker import Worker


def create_app(settings: Settings | None = None, background: bool = True) -> FastAPI:
    """The ASGI app. A broken mapping file or an unreachable store stops it here, not later.
    `background=False` leaves mapping to explicit calls (tests, tools)."""
    runtime = open_runtime(settings or get_settings())
    worker = Worker(runtime) if background else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if worker:
            worker.start()
        try:
            yield
        finally:
            if worker:
                worker.stop()
            runtime.store.engine.dispose()

    app = FastAPI(
        title="Infusion clinic EHR adapter",
        version=__version__,
        description="Takes an IV ketamine infusion clinic's charting records in and maps them "
        "to FHIR R4 resources with the mapping files in mappings/.",
        lifespan=lifespan,
    )
    app.state.settings = runtime.settings
    app.state.runtime = runtime
    app.state.store = runtime.store
    app.state.intake = runtime.intake
    app.state.worker = worker
    outcome.install(app)
    app.include_router(health.router)
    app.include_router(records.router)
    app.include_router(mapping.router)
    app.include_router(sync.router)
    app.include_router(fhir.router)
    return app
