"""Waiting and refused: what the sync holds back and what the EHR refused, by reason, with
one-click replay (one item, or every item of a reason) and the outcome of the run it starts."""

import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from adapter.console.access import checked_form, console_router
from adapter.console.today import zone_of
from adapter.console.web import ConsoleRefused, one, page
from adapter.console.words import DELIVERY_STATES, delivery_reason, mapping_reason, what_to_do
from adapter.operations.metrics import Metrics
from adapter.runtime import Runtime
from adapter.store.operations import HeldItem, OperationsReadings
from adapter.store.sync_state import PatientMatches
from adapter.sync.engine import sync_once

router = console_router()

STATES = ("dead", "waiting")
MOST_LISTED = 2000
MOST_REPLAYED = 10_000


def _groups(items: list[HeldItem]) -> list[dict[str, Any]]:
    """Items by state and reason, the largest group first."""
    grouped: dict[tuple[str, str], list[HeldItem]] = defaultdict(list)
    for item in items:
        grouped[(item.state, item.reason)].append(item)
    return [
        {
            "state": state,
            "reason": reason,
            "words": delivery_reason(
                state, {k: v for k, v in found[0].detail.items() if k != "patient_mrn"}
            ),
            "items": found,
            "to_do": what_to_do(state, reason),
        }
        for (state, reason), found in sorted(
            grouped.items(), key=lambda g: (g[0][0] != "dead", -len(g[1]))
        )
    ]


def _held(runtime: Runtime) -> dict[str, Any]:
    readings = OperationsReadings(runtime.store.engine)
    return {
        "zone": zone_of(runtime),
        "groups": _groups(readings.held_items(STATES, MOST_LISTED)),
        "records": runtime.mapping.queue.held(MOST_LISTED),
        "mapping_reason": mapping_reason,
        "delivery_reason": delivery_reason,
    }


@router.get("/held")
async def console_held(request: Request) -> HTMLResponse:
    context = await run_in_threadpool(_held, request.app.state.runtime)
    return page(request, "held.html", section="held", **context)


def replay(runtime: Runtime, metrics: Metrics | None, ids: set[str], reason: str) -> dict[str, Any]:
    """Queue the items named (or all of a reason) again, forget the EHR patients they waited
    for, and run the sync now; what became of each item."""
    readings = OperationsReadings(runtime.store.engine)
    chosen = [
        item
        for item in readings.held_items(STATES, MOST_REPLAYED)
        if item.resource_id in ids or (reason and item.reason == reason)
    ]
    if not chosen:
        raise ConsoleRefused(
            "nothing to replay: those items were delivered or replayed already", status=409
        )
    mrns: dict[str | None, set[str]] = {}
    for item in chosen:
        if item.detail.get("patient_mrn"):
            mrns.setdefault(item.site, set()).add(str(item.detail["patient_mrn"]))
    # In a group each site's sync keeps its own matches: each forgets its items' MRNs.
    for site, site_mrns in mrns.items():
        PatientMatches(runtime.store.engine, site).forget(site_mrns)
    named = [item.resource_id for item in chosen]
    queued = runtime.outbox.requeue(datetime.now(UTC), STATES, named)
    report = None
    for sync in runtime.syncs():
        started = time.monotonic()
        report = sync_once(sync, trigger="console")
        if metrics is not None:
            metrics.run("console", report, started)
    now = runtime.outbox.items(named)
    return {
        "zone": zone_of(runtime),
        "queued": queued,
        "report": report,
        "after": [(item, now.get(item.resource_id)) for item in chosen],
        "delivery_reason": delivery_reason,
        "delivery_states": DELIVERY_STATES,
    }


@router.post("/replay")
async def console_replay(request: Request) -> HTMLResponse:
    fields = await checked_form(request)
    ids = {value for value in fields.get("id", [])[:MOST_REPLAYED] if 0 < len(value) <= 64}
    reason = one(fields, "reason", 2000)
    if not ids and not reason:
        raise ConsoleRefused("name the items to replay, or a reason")
    result = await run_in_threadpool(
        replay, request.app.state.runtime, request.app.state.metrics, ids, reason
    )
    request.state.audited_ids = [
        f"{item.resource_type}/{item.resource_id}" for item, _ in result["after"]
    ][:100]
    request.state.audited_query = f"replayed={len(result['after'])}" + (
        f"&reason={reason[:200]}" if reason else ""
    )
    return page(request, "replayed.html", section="held", **result)
