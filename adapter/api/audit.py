"""The record of access for admins: GET /api/v1/audit, as JSON or as a FHIR Bundle of
AuditEvents in the BALP shapes."""

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request

from adapter.api.deps import RuntimeDep, public_base
from adapter.api.responses import JsonResponse
from adapter.fhir.search import parse_instant
from adapter.security.access import api_caller
from adapter.security.balp import audit_event

router = APIRouter(prefix="/api/v1/audit", tags=["audit"], dependencies=[Depends(api_caller())])


@router.get("", summary="Who accessed what, when, and the outcome; newest first")
def audit(
    request: Request,
    runtime: RuntimeDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before: Annotated[int | None, Query(ge=1, le=2**63 - 1, description="Entry id")] = None,
    since: Annotated[
        str | None,
        Query(description="Instant, with its offset", json_schema_extra={"format": "date-time"}),
    ] = None,
    client_id: Annotated[str | None, Query(max_length=64)] = None,
    interaction: Annotated[str | None, Query(max_length=32)] = None,
    format: Annotated[Literal["json", "fhir"], Query(alias="format")] = "json",
) -> JsonResponse:
    moment = parse_instant(since, "since") if since is not None else None
    request.app.state.audit_writer.flush()
    entries = runtime.audit.query(limit, before, moment, client_id, interaction)
    next_before = entries[-1].id if len(entries) == limit else None
    if format == "fhir":
        base = public_base(request)
        bundle = {
            "resourceType": "Bundle",
            "type": "collection",
            "entry": [{"resource": audit_event(e, f"{base}/fhir")} for e in entries],
        }
        return JsonResponse(bundle, media_type="application/fhir+json")
    body: dict[str, object] = {"count": len(entries), "entries": [e.as_dict() for e in entries]}
    if next_before is not None:
        body["next_before"] = next_before
    return JsonResponse(body)
