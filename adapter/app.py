"""Builds the service: settings, mappings, store and routes, checked before the first request."""

from fastapi import FastAPI

from adapter import __version__
from adapter.api import health, outcome, records
from adapter.runtime import open_runtime
from adapter.settings import Settings, get_settings


def create_app(settings: Settings | None = None) -> FastAPI:
    """The ASGI app. A broken mapping file or an unreachable store stops it here, not later."""
    runtime = open_runtime(settings or get_settings())
    app = FastAPI(
        title="Infusion clinic EHR adapter",
        version=__version__,
        description="Takes an IV ketamine infusion clinic's charting records in and keeps them "
        "for mapping to FHIR R4.",
    )
    app.state.settings = runtime.settings
    app.state.mappings = runtime.mappings
    app.state.store = runtime.store
    app.state.intake = runtime.intake
    outcome.install(app)
    app.include_router(health.router)
    app.include_router(records.router)
    return app
