"""Today at a glance: the day's sessions and what became of their records, the EHR's state, and
what needs a person now; and one session in full."""

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from adapter.console.access import console_router
from adapter.console.web import ConsoleRefused, page
from adapter.console.words import (
    DELIVERY_STATES,
    MAPPING_STATES,
    delivery_reason,
    mapping_reason,
)
from adapter.intake.records import SOURCE_ID_PATTERN
from adapter.runtime import Runtime
from adapter.store.alerts import AlertStore
from adapter.store.day import ClinicDay, SessionDay
from adapter.store.operations import OperationsReadings

router = console_router()

HELD_MAPPING = ("waiting", "failed", "pending")


@dataclass
class SessionLine:
    """One row of the day's table."""

    day: SessionDay
    received: int
    mapped: int
    held: int
    delivered: int
    queued: int
    waiting: int
    refused: int
    breaches: list[str] = field(default_factory=list)
    side_effects: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def in_ehr(self) -> bool:
        return not (self.held or self.queued or self.waiting or self.refused)


def zone_of(runtime: Runtime) -> ZoneInfo:
    return runtime.mapping.mapper.mappings.site.zone() or ZoneInfo("UTC")


def line(found: SessionDay) -> SessionLine:
    records = found.records
    summary = SessionLine(
        found,
        received=len(records),
        mapped=sum(1 for r in records if r.mapping_state in ("mapped", "uncoded")),
        held=sum(1 for r in records if r.mapping_state in HELD_MAPPING),
        delivered=found.count("delivered"),
        queued=found.count("pending"),
        waiting=found.count("waiting"),
        refused=found.count("dead"),
    )
    delivery: list[str] = []
    for resource in found.resources:
        if resource.resource_type == "DetectedIssue" and resource.content.get("status") != (
            "entered-in-error"
        ):
            summary.breaches.append(str(resource.content.get("code", {}).get("text", "breach")))
        if resource.state in ("waiting", "dead"):
            delivery.append(
                f"{resource.resource_type}: {delivery_reason(resource.state, resource.detail)}"
            )
    for record in records:
        if record.record_type == "adverse_event":
            parsed = record.parsed
            words = f"{parsed.get('event', '')} ({parsed.get('severity', '')}"
            words += ", serious)" if parsed.get("serious") else ")"
            summary.side_effects.append(words + (" withdrawn" if record.withdrawn else ""))
        if record.mapping_state in ("waiting", "failed"):
            summary.problems.append(
                f"{record.record_type} {record.source_id}: "
                f"{mapping_reason(record.mapping_state, record.detail)}"
            )
    # A record held for a mapping comes first: what its resources wait for follows from it.
    summary.problems = list(dict.fromkeys([*summary.problems, *delivery]))
    return summary


def ehr_state(runtime: Runtime, readings: OperationsReadings) -> dict[str, Any]:
    if not runtime.syncs():
        return {"configured": False}
    backoff = runtime.longest_backoff()
    since, reason = readings.run_streak()
    last = runtime.sync_runs.recent(1)
    now = datetime.now(UTC)
    backing_off = backoff.until is not None and backoff.until > now
    return {
        "configured": True,
        "url": runtime.settings.ehr_base_url,
        "backing_off_until": backoff.until if backing_off else None,
        "next_probe_at": backoff.probe_at if backing_off else None,
        "unreached_since": since,
        "reason": reason,
        "last_run": last[0] if last else None,
        "last_success": readings.last_success(),
    }


def _today(runtime: Runtime, day: date) -> dict[str, Any]:
    zone = zone_of(runtime)
    engine = runtime.store.engine
    readings = OperationsReadings(engine)
    sessions = [line(found) for found in ClinicDay(engine).sessions(day, zone)]
    mapping = runtime.mapping.queue.counts()
    return {
        "zone": zone,
        "day": day,
        "previous": day - timedelta(days=1),
        "next": day + timedelta(days=1),
        "is_today": day == datetime.now(zone).date(),
        "sessions": sessions,
        "ehr": ehr_state(runtime, readings),
        "alerts": AlertStore(engine).firing(),
        "outbox": runtime.outbox.counts(),
        "mapping": mapping,
        "codes": readings.held_codes(),
    }


@router.get("")
async def console_today(
    request: Request,
    day: Annotated[str | None, Query(max_length=10, pattern=r"^\d{4}-\d{2}-\d{2}$")] = None,
) -> HTMLResponse:
    runtime: Runtime = request.app.state.runtime
    try:
        chosen = date.fromisoformat(day) if day else datetime.now(zone_of(runtime)).date()
    except ValueError:
        raise ConsoleRefused("day: not a calendar date (YYYY-MM-DD)") from None
    context = await run_in_threadpool(_today, runtime, chosen)
    return page(request, "today.html", section="today", **context)


@router.get("/sessions/{session_id}")
async def console_session(
    request: Request, session_id: Annotated[str, Path(pattern=SOURCE_ID_PATTERN)]
) -> HTMLResponse:
    runtime: Runtime = request.app.state.runtime
    found = await run_in_threadpool(ClinicDay(runtime.store.engine).session, session_id)
    if found is None:
        raise ConsoleRefused("no session with that id has been received", status=404)
    request.state.audited_ids = [f"infusion_session/{session_id}"]
    return page(
        request,
        "session.html",
        section="today",
        zone=zone_of(runtime),
        line=line(found),
        found=found,
        delivery_states=DELIVERY_STATES,
        mapping_states=MAPPING_STATES,
        delivery_reason=delivery_reason,
        mapping_reason=mapping_reason,
    )
