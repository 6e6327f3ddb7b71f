"""GET /metrics: the service's metrics in the Prometheus text format, for an admin key or a
scrape key (`infusion-adapter clients add-key prometheus --role metrics`)."""

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from adapter.security.access import api_caller

router = APIRouter(tags=["operations"], dependencies=[Depends(api_caller("metrics"))])


@router.get(
    "/metrics",
    summary="Metrics in the Prometheus text format (records, mapping, delivery, runs, the EHR)",
    response_class=Response,
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
async def metrics(request: Request) -> Response:
    body = await run_in_threadpool(request.app.state.metrics.render)
    return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})
