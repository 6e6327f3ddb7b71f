"""The FHIR R4 REST endpoint at /fhir: read-only, JSON."""

from fastapi import APIRouter

from adapter.api.fhir import capability, export, read, search

router = APIRouter(prefix="/fhir", tags=["fhir"])
router.include_router(capability.router)
router.include_router(export.router)
router.include_router(search.router)
router.include_router(read.router)
