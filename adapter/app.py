"""Builds the service: settings, mappings, store and routes, checked before the first request."""

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from starlette.routing import BaseRoute

from adapter import __version__
from adapter.api import audit, auth, fhir, health, mapping, metrics, outcome, records, sync
from adapter.api.fhir.wire import document_format
from adapter.api.openapi import document_statuses
from adapter.api.responses import JsonResponse
from adapter.console import access as console_access
from adapter.console import held, history, mappings, patients, today
from adapter.console import web as console_web
from adapter.logs import quiet_url_loggers
from adapter.operations.alerts import AlertWatch
from adapter.operations.metrics import Metrics
from adapter.replicas import CacheNotices
from adapter.runtime import Runtime, open_runtime
from adapter.security.access import api_caller, check_routes
from adapter.security.assertions import KeyFetcher
from adapter.security.audit import AuditWriter
from adapter.security.middleware import BodyLimits, Guard, HeadAsGet
from adapter.security.throttle import FailureThrottle
from adapter.settings import Settings, get_settings
from adapter.store.alerts import AlertStore
from adapter.store.operations import OperationsReadings
from adapter.worker import Worker

log = logging.getLogger(__name__)


def refuse_unsafe_production(runtime: Runtime) -> None:
    """In production, what docs/security.md asks an operator to set must be set, and
    development clients (made by `clients dev`) must be revoked first."""
    settings = runtime.settings
    if settings.env != "production":
        return
    gaps = settings.production_gaps()
    found = runtime.clients.development_clients()
    if found:
        names = ", ".join(client.id for client in found)
        gaps.append(
            f"ADAPTER_ENV=production refuses development clients ({names}): revoke them with "
            "`infusion-adapter clients revoke <client id>`"
        )
    if gaps:
        raise RuntimeError("; ".join(gaps))


def say_assumed_url(settings: Settings) -> None:
    """In development without ADAPTER_PUBLIC_URL, say which URL links and `aud` follow."""
    if settings.public_url is None:
        log.warning(
            "ADAPTER_PUBLIC_URL is unset: the token URL, links and the `aud` of client "
            "assertions follow each request's own URL (Host header), http://%s:%d when called "
            "directly; production refuses to start without it",
            settings.host,
            settings.port,
        )


@functools.cache
def included_routes() -> tuple[BaseRoute, ...]:
    """Every router of the service, included as FastAPI includes them, once per process.
    FastAPI works out an included route's parameters and dependencies when the first request
    comes (a type adapter for each parameter of each route, 15 ms), and keeps them with the
    inclusion: the apps a process makes (a test's, a tool's) share these and work them out
    once. They name no app, and depend on none: each endpoint reads its app from the request.
    What an inclusion into an app would take from it does not reach them: the app's
    `dependency_overrides` (create_app makes them read-only), and a router's own lifespan
    (none has one)."""
    routers = APIRouter()
    routers.include_router(fhir.router)  # first: the EHR's reads are the busiest requests
    for router in (health, auth, records, mapping, sync, audit, metrics):
        routers.include_router(router.router)
    for console in (console_access, today, held, patients, mappings, history):
        routers.include_router(console.router)
    routers.include_router(console_access.signed_in)
    return tuple(routers.routes)


def alert_watch(runtime: Runtime) -> AlertWatch:
    engine = runtime.store.engine
    return AlertWatch(
        runtime.settings,
        OperationsReadings(engine),
        runtime.outbox,
        AlertStore(engine),
        runtime.longest_backoff if runtime.syncs() else None,
    )


def create_app(settings: Settings | None = None, background: bool = True) -> FastAPI:
    """The ASGI app. A broken mapping file, an unreachable store or development credentials in
    production stop it here, not later. `background=False` leaves mapping to explicit calls
    (tests, tools)."""
    quiet_url_loggers()
    runtime = open_runtime(settings or get_settings())
    try:
        refuse_unsafe_production(runtime)
    except RuntimeError:
        runtime.close()
        raise
    say_assumed_url(runtime.settings)
    writer = AuditWriter(runtime.audit)
    measured = Metrics(runtime, writer)
    worker = Worker(runtime, measured, alert_watch(runtime)) if background else None
    heard = CacheNotices(runtime)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        heard.start()
        if worker:
            worker.start()
        try:
            yield
        finally:
            if worker:
                worker.stop()
            heard.stop()
            writer.close()
            runtime.close()

    app = FastAPI(
        title="Infusion clinic EHR adapter",
        version=__version__,
        description="Takes an IV ketamine infusion clinic's charting records in, maps them to "
        "FHIR R4 resources with the mapping files in mappings/, serves them at /fhir and "
        "delivers them to the EHR. /fhir takes SMART Backend Services access tokens from "
        "/auth/token; /api takes API keys (`infusion-adapter clients`).",
        lifespan=lifespan,
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = runtime.settings
    app.state.runtime = runtime
    app.state.store = runtime.store
    app.state.intake = runtime.intake
    app.state.worker = worker
    app.state.cache_notices = heard
    app.state.clients = runtime.clients
    app.state.audit_writer = writer
    app.state.metrics = measured
    app.state.throttle = FailureThrottle(runtime.settings.token_failures_per_minute)
    app.state.key_fetcher = KeyFetcher()
    outcome.install(app)
    console_web.install(app)
    app.router.routes.extend(included_routes())
    # The shared routes would not see an override: one set fails rather than being ignored.
    app.dependency_overrides = MappingProxyType({})  # type: ignore[assignment]

    @app.get(
        "/openapi.json",
        include_in_schema=False,
        dependencies=[Depends(api_caller("intake", site_bound=True))],
    )
    def openapi(request: Request) -> JsonResponse:
        # The app from the request, not from this closure: FastAPI keeps its endpoints in
        # process-wide caches, which would keep every app made in this process alive.
        served: FastAPI = request.app
        schema: dict[str, Any] = served.openapi()
        negotiating = document_format(served.routes, schema)
        document_statuses(served.routes, schema, negotiating)
        return JsonResponse(schema)

    check_routes(app)
    app.add_middleware(HeadAsGet)  # inside the Guard: the audit says HEAD
    app.add_middleware(
        Guard,
        writer=writer,
        clients=runtime.clients,
        limits=BodyLimits(
            max_bytes=runtime.settings.max_body_bytes,
            max_depth=runtime.settings.json_max_depth,
            timeout_seconds=runtime.settings.body_timeout_seconds,
        ),
        proxies=runtime.settings.proxy_networks(),
        routes=app.router.routes,
    )
    return app
