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

    def __init__(
        self,
        message: str,
        *,
        expression: list[str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.expression = expression or []
        self.headers = headers or {}


class BadRequest(AdapterError):
    status = 400
    issue_code = "invalid"


class MalformedJson(BadRequest):
    issue_code = "structure"


class Unauthorized(AdapterError):
    """No credentials, or credentials the adapter does not accept (RFC 6750, 3)."""

    status = 401
    issue_code = "login"

    def __init__(self, message: str, *, error: str | None = None) -> None:
        challenge = 'Bearer realm="infusion-adapter"'
        if error:
            challenge += f', error="{error}", error_description="{message}"'
        super().__init__(message, headers={"WWW-Authenticate": challenge})


class Forbidden(AdapterError):
    """Known credentials without the scope or role the request needs."""

    status = 403
    issue_code = "forbidden"


class TooManyRequests(AdapterError):
    status = 429
    issue_code = "throttled"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class RequestTimeout(AdapterError):
    """A request whose body did not arrive in time."""

    status = 408
    issue_code = "timeout"


class NotFound(AdapterError):
    status = 404
    issue_code = "not-found"


class MethodNotAllowed(AdapterError):
    status = 405
    issue_code = "not-supported"


class NotAcceptable(AdapterError):
    status = 406
    issue_code = "not-supported"


class Conflict(AdapterError):
    """Asked of a service that is not in the state to do it (no EHR configured, say)."""

    status = 409
    issue_code = "conflict"


class PayloadTooLarge(AdapterError):
    status = 413
    issue_code = "too-long"


class UnsupportedMediaType(AdapterError):
    status = 415
    issue_code = "not-supported"


class StoreUnavailable(AdapterError):
    status = 503
    issue_code = "transient"


class OAuthError(Exception):
    """An error of the token endpoint, answered as OAuth 2.0 says (RFC 6749, 5.2)."""

    def __init__(
        self,
        error: str,
        description: str,
        status: int = 400,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.headers = headers or {}


class MappingFileError(Exception):
    """A mapping file that cannot be loaded; the message names the file and the key path."""
