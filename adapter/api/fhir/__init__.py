"""The FHIR R4 REST endpoint at /fhir: read-only, JSON."""

from fastapi import APIRouter

from adapter.api.fhir import capability, export, read, search

router = APIRouter(prefix="/fhir", tags=["fhir"])
# Reads first: the most frequent request is matched by the first route it meets. Their type and
# id segments are FHIR-shaped, so they never take a path of the routes after them.
router.include_router(read.router)
router.include_router(capability.router)
router.include_router(export.router)
router.include_router(search.router)
