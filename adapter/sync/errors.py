"""How a request to the EHR can fail. Reasons name the interaction and status, never a patient."""

from typing import Any


class EhrError(Exception):
    """A request to the EHR did not deliver."""


class TemporaryEhrError(EhrError):
    """408, 429, 5xx, no answer, or an answer cut short or unreadable: worth trying again later.
    `sent` tells whether the EHR may have acted on the request (a 500, a reset after sending, a
    2xx that cannot be read) or surely did not (429, 503, 408, a connection that never
    opened): only the latter may be repeated blindly when the request creates something."""

    def __init__(
        self,
        status: int | None,
        reason: str,
        retry_after: float | None = None,
        sent: bool = True,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.retry_after = retry_after
        self.sent = sent


class PermanentEhrError(EhrError):
    """The EHR refused what was sent; sending it again unchanged will not help. `after_unheard`:
    an earlier attempt of the same request went unanswered and may have been applied (a 412
    can then answer the sync's own update)."""

    def __init__(self, status: int, reason: str, outcome: dict[str, Any] | None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.outcome = outcome
        self.after_unheard = False


class EhrAuthError(EhrError):
    """The EHR did not accept the adapter's credentials, or no token could be had."""


class EhrConfigurationError(EhrError):
    """The EHR, or the adapter's settings for it, need a person: the EHR redirects elsewhere,
    forbids the adapter what it must do, or speaks another FHIR version. The run stops."""


class EhrForbidden(EhrConfigurationError):
    """403: the EHR does not allow the adapter's client this interaction (its scopes or its
    permissions at the EHR); no resource is at fault, so none becomes a dead letter."""

    def __init__(self, reason: str, resource_type: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.resource_type = resource_type


class EhrUnavailable(EhrError):
    """The EHR failed too many requests in a row, failed every request of a run, or asked the
    sync to wait longer than a run waits (`retry_after`, in seconds): the sync backs off as a
    whole."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after
