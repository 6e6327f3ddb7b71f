"""Mapping API for clinic IT: what waits for a mapping and why, the version in use, reload."""

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.concurrency import run_in_threadpool

from adapter.api.deps import RuntimeDep
from adapter.api.responses import JsonResponse
from adapter.errors import BadRequest, MappingFileError
from adapter.security.access import api_caller

router = APIRouter(prefix="/api/v1/mapping", tags=["mapping"], dependencies=[Depends(api_caller())])


@router.get(
    "/pending",
    summary="Records held: waiting for a mapping row (with the missing code and its table), "
    "waiting for their session, or failed to map; and records delivered with a code as text "
    "alone (`uncoded`) until its row is added",
)
def pending(
    runtime: RuntimeDep, limit: Annotated[int, Query(ge=1, le=10_000)] = 1000
) -> JsonResponse:
    held = runtime.mapping.queue.held(limit)
    items: list[dict[str, Any]] = [
        {
            "record_type": item.record_type,
            "id": item.source_id,
            "revision": item.revision,
            "state": item.state,
            **item.detail,
            "updated_at": item.updated_at.isoformat(),
        }
        for item in held
    ]
    return JsonResponse({"count": len(items), "records": items})


@router.get("/status", summary="The mapping version in use and how many records are in each state")
def status(runtime: RuntimeDep) -> JsonResponse:
    return JsonResponse(
        {"version": runtime.mapping.version, "records": runtime.mapping.queue.counts()}
    )


@router.post(
    "/reload",
    summary="Load the mapping files again; held records are mapped once their rows exist",
)
async def reload(runtime: RuntimeDep) -> JsonResponse:
    try:
        changed = await run_in_threadpool(runtime.reload_mappings)
    except MappingFileError as exc:
        raise BadRequest(
            f"the mapping files are broken; the mapping in use is kept:\n{exc}"
        ) from None
    report = await run_in_threadpool(runtime.mapping.run)
    return JsonResponse(
        {
            "changed": changed,
            "version": runtime.mapping.version,
            "mapped": report.mapped,
            "waiting": report.waiting,
            "failed": report.failed,
        }
    )
