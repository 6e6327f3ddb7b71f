"""Sync API for clinic IT: runs, dead letters and waiting items, replay, a run now."""

import time
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, ConfigDict, Field, model_validator

from adapter.api.deps import RuntimeDep
from adapter.api.responses import JsonResponse
from adapter.errors import Conflict
from adapter.operations.metrics import Metrics
from adapter.runtime import Runtime
from adapter.security.access import api_caller
from adapter.sync.commands import item_json
from adapter.sync.engine import Sync, sync_once
from adapter.worker import SYNC_JOB

router = APIRouter(prefix="/api/v1/sync", tags=["sync"], dependencies=[Depends(api_caller())])
Limit = Annotated[int, Query(ge=1, le=1000)]
After = Annotated[str | None, Query(max_length=64, description="Resource id to list after.")]


def _items(runtime: Runtime, state: str, limit: int, after: str | None) -> JsonResponse:
    items = runtime.outbox.listed((state,), limit, after)
    body: dict[str, Any] = {"count": len(items), "items": [item_json(i) for i in items]}
    if len(items) == limit:
        body["next_after"] = items[-1].resource_id
    return JsonResponse(body)


@router.get(
    "/dead-letters",
    summary="Resources the EHR refused, with its status and OperationOutcome; replay after a fix",
)
def dead_letters(runtime: RuntimeDep, limit: Limit = 100, after: After = None) -> JsonResponse:
    return _items(runtime, "dead", limit, after)


@router.get(
    "/waiting",
    summary="Resources held back: patient not settled in the EHR, or a reference not delivered",
)
def waiting(runtime: RuntimeDep, limit: Limit = 100, after: After = None) -> JsonResponse:
    return _items(runtime, "waiting", limit, after)


@router.get(
    "/runs",
    summary="The latest sync and reconciliation runs, newest first: `error` says why a run "
    "stopped, `last_error` the last reason an item of the run was not delivered",
)
def runs(
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    before: Annotated[
        int | None, Query(ge=1, le=2**31 - 1, description="Run id to list before.")
    ] = None,
) -> JsonResponse:
    found = runtime.sync_runs.recent(limit, before)
    return JsonResponse(
        {
            "count": len(found),
            "runs": [
                {
                    "id": run.id,
                    "trigger": run.trigger,
                    "status": run.status,
                    "started_at": run.started_at.isoformat(),
                    "ended_at": run.ended_at.isoformat() if run.ended_at else None,
                    "counts": run.counts,
                    "error": run.error,
                    "last_error": run.last_error,
                }
                for run in found
            ],
        }
    )


@router.get("/status", summary="Where delivery stands: items per state, back-off, the last run")
def status(runtime: RuntimeDep) -> JsonResponse:
    body: dict[str, Any] = {
        "ehr_configured": bool(runtime.syncs()),
        "outbox": runtime.outbox.counts(),
        "due_now": runtime.outbox.count_due(datetime.now(UTC), waiting=True),
    }
    if runtime.sync is not None:
        body |= _backing_off(runtime.sync)
    if runtime.site_syncs:
        body["sites"] = {
            site: {"outbox": sync.outbox.counts(), **_backing_off(sync)}
            for site, sync in sorted(runtime.site_syncs.items())
        }
    last = runtime.sync_runs.recent(1)
    body["last_run"] = (
        {"id": last[0].id, "status": last[0].status, "started_at": last[0].started_at.isoformat()}
        if last
        else None
    )
    return JsonResponse(body)


def _backing_off(sync: Sync) -> dict[str, str | None]:
    """Until when the sync backs off from its EHR, and when it next asks the EHR whether it is
    back (None: it does not back off, or does not ask)."""
    state = sync.backoff_state()
    return {
        "backing_off_until": state.until.isoformat() if state.until else None,
        "next_probe_at": state.probe_at.isoformat() if state.until and state.probe_at else None,
    }


ReplayState = Literal["dead", "waiting"]


def _dead_only() -> list[ReplayState]:
    return ["dead"]


class ReplayRequest(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={
            "anyOf": [
                {"required": ["ids"], "properties": {"ids": {"minItems": 1}}},
                {"required": ["all"], "properties": {"all": {"const": True}}},
            ]
        },
    )

    ids: list[Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9.\-]+$")]] = (
        Field(default_factory=list, max_length=10_000, description="Resource ids to replay.")
    )
    all: bool = Field(False, description="Replay every item in the states named.")
    states: list[ReplayState] = Field(default_factory=_dead_only, min_length=1)

    @model_validator(mode="after")
    def _something(self) -> "ReplayRequest":
        if not self.ids and not self.all:
            raise ValueError("name resource ids, or set all")
        return self


@router.post("/replay", summary="Queue dead letters (or waiting items) again for the next run")
def replay(runtime: RuntimeDep, body: ReplayRequest, request: Request) -> JsonResponse:
    now = datetime.now(UTC)
    count = runtime.outbox.requeue(now, body.states, None if body.all else body.ids)
    _wake(request)
    return JsonResponse({"queued": count})


@router.post("/run", status_code=202, summary="Run the sync now (the service's worker runs it)")
async def run_now(runtime: RuntimeDep, request: Request) -> JsonResponse:
    if not runtime.syncs():
        raise Conflict("ADAPTER_EHR_BASE_URL is not set: there is no EHR to sync to")
    if request.app.state.worker is None:
        report = await run_in_threadpool(_run, runtime, request.app.state.metrics)
        return JsonResponse(report, status_code=200)
    _wake(request)
    return JsonResponse({"scheduled": True}, status_code=202)


def _run(runtime: Runtime, metrics: Metrics) -> dict[str, Any]:
    answers = []
    for sync in runtime.syncs():
        started = time.monotonic()
        report = sync_once(sync, trigger="api")
        metrics.run("api", report, started)
        answer = {"run_id": report.run_id, "status": report.status, "counts": dict(report.counts)}
        answers.append({**answer, "site": sync.site_id} if sync.site_id else answer)
    return answers[0] if runtime.sync is not None else {"runs": answers}


def _wake(request: Request) -> None:
    worker = request.app.state.worker
    if worker is not None:
        worker.wake(SYNC_JOB)
