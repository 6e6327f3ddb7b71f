"""The EHR's FHIR API as the sync sees it: every answer sorted once into delivered, temporary
(retried with backoff) or permanent (a person must act)."""

import email.utils
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import requests
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter
from urllib3.exceptions import NewConnectionError

from adapter.sync.auth import EhrAuth
from adapter.sync.errors import EhrAuthError, EhrUnavailable, PermanentEhrError, TemporaryEhrError

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers worth asking again: the EHR is busy or down, not refusing what was sent. Other 5xx
(501, 505) say the request can never work and are permanent."""
NOT_ACTED_ON = frozenset({408, 429, 503})
"""Answers that say the server did not act on the request (RFC 9110, 15.5.9, 15.6.4; RFC 6585)."""


@dataclass(frozen=True)
class EhrResponse:
    status: int
    body: dict[str, Any] | None
    headers: dict[str, str]


@dataclass
class Breaker:
    """Opens after `threshold` requests in a row failed for want of the EHR: the rest of the
    run is not sent, so an EHR that is down is not hammered."""

    threshold: int
    failures: int = 0
    _counting: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """The sync's sender thread and its stager both make requests."""

    @property
    def open(self) -> bool:
        return self.failures >= self.threshold

    def failed(self) -> None:
        with self._counting:
            self.failures += 1

    def succeeded(self) -> None:
        with self._counting:
            self.failures = 0


@dataclass
class EhrClient:
    base_url: str
    auth: EhrAuth
    timeout: float
    attempts: int
    max_wait: float
    breaker: Breaker
    proxy: str | None = None
    session: requests.Session = field(default_factory=requests.Session)
    sleep: Callable[[float], None] = time.sleep

    def __post_init__(self) -> None:
        # The environment's proxy variables and ~/.netrc are not consulted on every request:
        # the one outbound proxy, if any, is a setting.
        self.session.trust_env = False
        if self.proxy:
            self.session.proxies = {"http": self.proxy, "https": self.proxy}

    def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | str | None = None,
        headers: dict[str, str] | None = None,
        idempotent: bool = True,
        form: dict[str, str] | None = None,
    ) -> EhrResponse:
        """One FHIR interaction, retried while the EHR's answers are temporary; raises
        TemporaryEhrError when the attempts are spent, PermanentEhrError on a refusal. A
        request that is not idempotent (a plain create) is repeated only when the EHR surely
        did not act on it; otherwise the caller decides (it searches before sending again)."""
        if self.breaker.open:
            raise EhrUnavailable("the EHR failed too many requests in a row")

        def worth_repeating(error: BaseException) -> bool:
            return isinstance(error, TemporaryEhrError) and (idempotent or not error.sent)

        retrying = Retrying(
            retry=retry_if_exception(worth_repeating),
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            response = retrying(self._send_authorised, method, path, body, form, headers or {})
        except TemporaryEhrError:
            self.breaker.failed()
            raise
        self.breaker.succeeded()
        return response

    def _wait(self, state: RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, TemporaryEhrError) and error.retry_after is not None:
            return min(error.retry_after, self.max_wait)
        backoff = wait_exponential_jitter(multiplier=0.5, max=self.max_wait)
        return float(backoff(state))

    def _send_authorised(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | str | None,
        form: dict[str, str] | None,
        headers: dict[str, str],
    ) -> EhrResponse:
        try:
            return self._send(method, path, body, form, headers)
        except EhrAuthError:
            # A token the EHR no longer honours: fetch a new one, once.
            self.auth.refresh()
            return self._send(method, path, body, form, headers)

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | str | None,
        form: dict[str, str] | None,
        headers: dict[str, str],
    ) -> EhrResponse:
        url = f"{self.base_url.rstrip('/')}/{path.lstrip('/')}" if path else self.base_url
        sent = {"Accept": FHIR_JSON, **headers}
        if body is not None:
            sent["Content-Type"] = FHIR_JSON
        authorization = self.auth.header(self.session, self.timeout)
        if authorization:
            sent["Authorization"] = authorization
        try:
            answer = self.session.request(
                method,
                url,
                data=_encoded(body) if body is not None else form,
                headers=sent,
                timeout=self.timeout,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            reason = f"no answer from the EHR ({type(exc).__name__})"
            raise TemporaryEhrError(None, reason, sent=_maybe_sent(exc)) from None
        parsed = _json(answer)
        status = answer.status_code
        if status < 400:
            return EhrResponse(status, parsed, dict(answer.headers))
        reason = f"{method} {_path_only(path)} answered {status}"
        if status == 401:
            raise EhrAuthError(reason)
        if status in TEMPORARY_STATUSES:
            retry_after = _retry_after(answer.headers.get("Retry-After"))
            raise TemporaryEhrError(status, reason, retry_after, sent=status not in NOT_ACTED_ON)
        outcome = parsed if parsed and parsed.get("resourceType") == "OperationOutcome" else None
        raise PermanentEhrError(status, reason, outcome)


def _maybe_sent(error: Exception) -> bool:
    """False when the connection never opened (refused, or timed out connecting)."""
    if isinstance(error, requests.ConnectTimeout):
        return False
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return not isinstance(reason, NewConnectionError)


def _encoded(body: dict[str, Any] | str) -> bytes:
    """A body as sent: JSON text as its caller wrote it, else serialised here."""
    return body.encode() if isinstance(body, str) else orjson.dumps(body)


def _json(answer: requests.Response) -> dict[str, Any] | None:
    if not answer.content:
        return None
    try:
        parsed = orjson.loads(answer.content)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _path_only(path: str) -> str:
    """The request path without its query, which can hold an MRN."""
    return path.split("?", 1)[0] or "/"


def _retry_after(value: str | None) -> float | None:
    """Retry-After as seconds: a number of seconds or an HTTP date (RFC 9110, 10.2.3)."""
    if not value:
        return None
    seconds = value.strip()
    if seconds.isascii() and seconds.isdigit():
        return float(seconds)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())
