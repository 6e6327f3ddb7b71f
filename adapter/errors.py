"""The adapter's whole error vocabulary: every error a caller can see is one of these."""

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One reason a record was refused, naming the field by its path in the record."""

    field: str
    reason: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "reason": self.reason}


class AdapterError(Exception):
    """An error with an HTTP status and a FHIR issue type; its message never carries PHI."""

    status: int = 500
    issue_code: str = "exception"

    def __init__(self, message: str, *, expression: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression or []


class BadRequest(AdapterError):
    status = 400
    issue_code = "invalid"


class MalformedJson(BadRequest):
    issue_code = "structure"


class NotFound(AdapterError):
    status = 404
    issue_code = "not-found"


class MethodNotAllowed(AdapterError):
    status = 405
    issue_code = "not-supported"


class NotAcceptable(AdapterError):
    status = 406
    issue_code = "not-supported"


class PayloadTooLarge(AdapterError):
    status = 413
    issue_code = "too-long"


class UnsupportedMediaType(AdapterError):
    status = 415
    issue_code = "not-supported"


class StoreUnavailable(AdapterError):
    status = 503
    issue_code = "transient"


class MappingFileError(Exception):
    """A mapping file that cannot be loaded; the message names the file and the key path."""
