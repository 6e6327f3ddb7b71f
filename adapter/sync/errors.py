"""How a request to the EHR can fail. Reasons name the interaction and status, never a patient."""

from typing import Any


class EhrError(Exception):
    """A request to the EHR did not deliver."""


class TemporaryEhrError(EhrError):
    """408, 429, 5xx or no answer: worth trying again later. `sent` tells whether the EHR may
    have acted on the request (a 500, a reset after sending) or surely did not (429, 503, 408,
    a connection that never opened): only the latter may be repeated blindly when the request
    creates something."""

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
    """The EHR refused what was sent; sending it again unchanged will not help."""

    def __init__(self, status: int, reason: str, outcome: dict[str, Any] | None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.outcome = outcome


class EhrAuthError(EhrError):
    """The EHR did not accept the adapter's credentials, or no token could be had."""


class EhrUnavailable(EhrError):
    """The EHR failed too many requests in a row; the sync backs off as a whole."""
