"""Runs and audit: the sync runs with their counts and errors and what each outcome means, the
alerts, and the audit record searched by client, interaction, time and outcome."""

from datetime import datetime, time
from typing import Annotated, Any

from fastapi import Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from adapter.console.access import console_router
from adapter.console.today import zone_of
from adapter.console.web import ConsoleRefused, page
from adapter.operations.alerts import KINDS
from adapter.operations.outcomes import RUN_STATUSES, SYNC_OUTCOMES, legend
from adapter.runtime import Runtime
from adapter.store.alerts import AlertStore

router = console_router()

OUTCOME_CLASSES = {"2xx": (200, 299), "3xx": (300, 399), "4xx": (400, 499), "5xx": (500, 599)}
PAGE = 100


def _runs(runtime: Runtime, before: int | None) -> dict[str, Any]:
    runs = runtime.sync_runs.recent(PAGE, before)
    named = {name for run in runs for name in run.counts}
    return {
        "zone": zone_of(runtime),
        "runs": runs,
        "legend": legend(named | set(SYNC_OUTCOMES)),
        "statuses": RUN_STATUSES,
        "alerts": AlertStore(runtime.store.engine).recent(30),
        "kinds": KINDS,
        "older": runs[-1].id if len(runs) == PAGE else None,
    }


@router.get("/runs")
async def console_runs(
    request: Request,
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> HTMLResponse:
    context = await run_in_threadpool(_runs, request.app.state.runtime, before)
    return page(request, "runs.html", section="runs", **context)


def _moment(value: str, name: str, runtime: Runtime, end_of_day: bool = False) -> datetime:
    """A date or a local date and time from the form, in the clinic's time zone."""
    zone = zone_of(runtime)
    try:
        if len(value) == 10:
            day = datetime.fromisoformat(value).date()
            return datetime.combine(day, time.max if end_of_day else time.min, zone)
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ConsoleRefused(f"{name}: not a date (YYYY-MM-DD) or date and time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=zone)


@router.get("/audit")
async def console_audit(
    request: Request,
    client_id: Annotated[str, Query(max_length=64)] = "",
    interaction: Annotated[str, Query(max_length=32)] = "",
    since: Annotated[str, Query(max_length=32)] = "",
    until: Annotated[str, Query(max_length=32)] = "",
    outcome: Annotated[str, Query(max_length=3)] = "",
    before: Annotated[int | None, Query(ge=1, le=2**62)] = None,
) -> HTMLResponse:
    runtime: Runtime = request.app.state.runtime
    if outcome and outcome not in OUTCOME_CLASSES:
        raise ConsoleRefused(f"outcome: one of {', '.join(OUTCOME_CLASSES)}")
    start = _moment(since, "since", runtime) if since else None
    end = _moment(until, "until", runtime, end_of_day=True) if until else None
    request.app.state.audit_writer.flush()
    entries = await run_in_threadpool(
        runtime.audit.query,
        PAGE,
        before,
        start,
        client_id.strip() or None,
        interaction.strip() or None,
        end,
        OUTCOME_CLASSES.get(outcome),
    )
    clients = {c.id: c.name for c in await run_in_threadpool(runtime.clients.listed)}
    return page(
        request,
        "audit.html",
        section="audit",
        zone=zone_of(runtime),
        entries=entries,
        clients=clients,
        filters={
            "client_id": client_id,
            "interaction": interaction,
            "since": since,
            "until": until,
            "outcome": outcome,
        },
        outcome_classes=list(OUTCOME_CLASSES),
        older=entries[-1].id if len(entries) == PAGE else None,
    )
