"""JSON responses serialised with orjson."""

from typing import Any

import orjson
from fastapi.responses import Response


class JsonResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class OutcomeResponse(JsonResponse):
    """An OperationOutcome: FHIR's media type, on the FHIR endpoint and the admin API alike."""

    media_type = "application/fhir+json"
