"""Liveness and readiness of the service and its store."""

from fastapi import APIRouter, Depends
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from adapter.api.deps import StoreDep
from adapter.api.responses import JsonResponse
from adapter.security.access import open_access

router = APIRouter(tags=["health"], dependencies=[Depends(open_access)])


@router.get("/healthz", summary="Whether the service and its store answer")
def health(store: StoreDep) -> JsonResponse:
    try:
        with store.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    except SQLAlchemyError:
        return JsonResponse({"status": "unavailable", "store": "unreachable"}, status_code=503)
    return JsonResponse({"status": "ok", "store": "ok"})
