"""The EHR's FHIR API as the sync sees it: every answer sorted once into delivered, temporary
(retried with backoff) or permanent (a person must act), within a deadline and a size cap."""

import email.utils
import http.client
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urljoin, urlsplit

import orjson
import requests
import urllib3.exceptions
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt
from tenacity.wait import wait_exponential_jitter
from urllib3.exceptions import NewConnectionError

from adapter.sync.auth import EhrAuth
from adapter.sync.errors import (
    EhrAuthError,
    EhrConfigurationError,
    EhrForbidden,
    EhrUnavailable,
    PermanentEhrError,
    TemporaryEhrError,
)

log = logging.getLogger(__name__)
FHIR_JSON = "application/fhir+json"
TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""Answers worth asking again: the EHR is busy or down, not refusing what was sent. Other 5xx
(501, 505) say the request can never work and are permanent."""
NOT_ACTED_ON = frozenset({408, 429, 503})
"""Answers that say the server did not act on the request (RFC 9110, 15.5.9, 15.6.4; RFC 6585)."""
READ_SIZE = 65536


@dataclass(frozen=True)
class EhrResponse:
    status: int
    body: dict[str, Any] | None
    """The FHIR resource answered (a JSON object with a resourceType), or None for no body."""
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
    """The longest one request may take, from connecting to the last byte of its answer."""
    attempts: int
    max_wait: float
    breaker: Breaker
    proxy: str | None = None
    max_response_bytes: int = 32 * 2**20
    """The largest answer read; a larger one is cut off and counts as a failed request."""
    session: requests.Session = field(default_factory=requests.Session)
    sleep: Callable[[float], None] = time.sleep
    asked_to_wait: float | None = None
    """Seconds the EHR asked the sync to wait (Retry-After) beyond what a run waits: nothing
    more is sent in this run."""

    def __post_init__(self) -> None:
        # The environment's proxy variables and ~/.netrc are not consulted on every request:
        # the one outbound proxy, if any, is a setting.
        self.session.trust_env = False
        if self.proxy:
            self.session.proxies = {"http": self.proxy, "https": self.proxy}

    def start_run(self) -> None:
        """A new run tries the EHR afresh: what the last run learnt of its failures is over
        (the sync as a whole backed off meanwhile)."""
        self.breaker.succeeded()
        self.asked_to_wait = None

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
        request that is not idempotent (a create) is repeated only when the EHR surely did not
        act on it; otherwise the caller decides (it waits for the EHR to settle, then searches
        before sending again). A Retry-After longer than `max_wait` is not slept: the request
        fails at once, and nothing more is sent in this run."""
        if self.breaker.open:
            raise EhrUnavailable("the EHR failed too many requests in a row")
        if self.asked_to_wait is not None:
            reason = f"not sent: the EHR asked the sync to wait {self.asked_to_wait:.0f} s"
            raise TemporaryEhrError(None, reason, self.asked_to_wait, sent=False)

        def worth_repeating(error: BaseException) -> bool:
            if not isinstance(error, TemporaryEhrError):
                return False
            if error.retry_after is not None and error.retry_after > self.max_wait:
                return False
            return idempotent or not error.sent

        unheard = False

        def attempt() -> EhrResponse:
            nonlocal unheard
            try:
                return self._send_authorised(method, path, body, form, headers or {})
            except TemporaryEhrError as error:
                unheard = unheard or error.sent
                raise
            except PermanentEhrError as error:
                error.after_unheard = unheard
                raise

        retrying = Retrying(
            retry=retry_if_exception(worth_repeating),
            stop=stop_after_attempt(self.attempts),
            wait=self._wait,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            response = retrying(attempt)
        except TemporaryEhrError as error:
            if error.retry_after is not None and error.retry_after > self.max_wait:
                self.asked_to_wait = max(self.asked_to_wait or 0.0, error.retry_after)
            self.breaker.failed()
            raise
        self.breaker.succeeded()
        return response

    def probe(self) -> None:
        """Ask whether the EHR is back: one request for its CapabilityStatement, neither retried
        nor counted by the breaker. Returns if it answered, whatever it answered (a refusal
        raises its EhrError); raises TemporaryEhrError, with any Retry-After, if it did not."""
        self._send_authorised("GET", "metadata", None, None, {})

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

    def url(self, path: str) -> str:
        """The URL of `path`, relative to the base URL, or absolute on its origin (a paging
        link): a URL on another origin is refused, since following it would carry the
        request, and any patient data in it, elsewhere."""
        if not path.startswith(("http://", "https://")):
            return f"{self.base_url.rstrip('/')}/{path.lstrip('/')}" if path else self.base_url
        if origin(path) != origin(self.base_url):
            raise EhrConfigurationError(
                f"the EHR links to another origin ({origin(path)}); the sync does not follow it: "
                "set ADAPTER_EHR_BASE_URL to the address the EHR answers at"
            )
        return path

    def _send(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | str | None,
        form: dict[str, str] | None,
        headers: dict[str, str],
    ) -> EhrResponse:
        url = self.url(path)
        where = f"{method} {_path_only(path)}"
        deadline = time.monotonic() + self.timeout
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
                allow_redirects=False,
                stream=True,
            )
        except (requests.ConnectionError, requests.Timeout) as exc:
            reason = f"no answer from the EHR ({type(exc).__name__})"
            raise TemporaryEhrError(None, reason, sent=_maybe_sent(exc)) from None
        except requests.RequestException as exc:
            reason = f"no answer from the EHR ({type(exc).__name__})"
            raise TemporaryEhrError(None, reason) from None
        try:
            content = self._content(answer, deadline, where)
        except BaseException:
            answer.close()  # the connection, part read, is not used again
            raise
        answer.raw.release_conn()  # read to its end: kept alive for the next request
        status = answer.status_code
        if 300 <= status < 400:
            raise EhrConfigurationError(_redirected(where, status, url, answer, self.base_url))
        if status < 300:
            return EhrResponse(status, _fhir(content, answer, where), dict(answer.headers))
        reason = f"{where} answered {status}"
        if status == 401:
            raise EhrAuthError(reason)
        if status == 403:
            raise EhrForbidden(
                f"{reason} (Forbidden): the EHR does not allow the adapter's client this; "
                "check its scopes and permissions at the EHR"
            )
        if status in TEMPORARY_STATUSES:
            retry_after = _retry_after(answer.headers.get("Retry-After"))
            raise TemporaryEhrError(status, reason, retry_after, sent=status not in NOT_ACTED_ON)
        parsed = _json(content)
        outcome = parsed if parsed and parsed.get("resourceType") == "OperationOutcome" else None
        raise PermanentEhrError(status, reason, outcome)

    def _content(self, answer: requests.Response, deadline: float, where: str) -> bytes:
        """The answer's body, read until the request's deadline and up to the size cap; an
        answer cut short, too slow or too large fails as temporary (the EHR may have acted)."""
        declared = answer.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > self.max_response_bytes:
            raise TemporaryEhrError(answer.status_code, self._too_large(where))
        raw = answer.raw
        connection = getattr(raw, "connection", None)
        sock = getattr(connection, "sock", None)
        chunks: list[bytes] = []
        size = 0
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    reason = f"{where}: the EHR's answer took longer than {self.timeout:g} s"
                    raise TemporaryEhrError(answer.status_code, reason)
                if sock is not None:
                    sock.settimeout(left)
                chunk = raw.read1(READ_SIZE, decode_content=True)
                if not chunk:
                    return b"".join(chunks)
                size += len(chunk)
                if size > self.max_response_bytes:
                    raise TemporaryEhrError(answer.status_code, self._too_large(where))
                chunks.append(chunk)
        except (urllib3.exceptions.HTTPError, OSError, http.client.HTTPException) as exc:
            reason = f"{where}: the EHR's answer was cut short ({type(exc).__name__})"
            raise TemporaryEhrError(answer.status_code, reason) from None

    def _too_large(self, where: str) -> str:
        return f"{where}: the EHR's answer is larger than {self.max_response_bytes} bytes"


def origin(url: str) -> str:
    """scheme://host:port of a URL, the port written out."""
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme, 0)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _redirected(where: str, status: int, url: str, answer: requests.Response, base_url: str) -> str:
    target = urljoin(url, answer.headers.get("Location") or "")
    elsewhere = "another origin, " if origin(target) != origin(base_url) else ""
    return (
        f"{where} answered {status}: the EHR redirects to {elsewhere}{origin(target)}; the sync "
        "never follows a redirect (it would carry patient data where it was not configured "
        "to): set ADAPTER_EHR_BASE_URL to the address the EHR answers at"
    )


def _maybe_sent(error: Exception) -> bool:
    """False when the connection never opened (refused, or timed out connecting)."""
    if isinstance(error, requests.ConnectTimeout):
        return False
    reason = getattr(error.args[0], "reason", None) if error.args else None
    return not isinstance(reason, NewConnectionError)


def _encoded(body: dict[str, Any] | str) -> bytes:
    """A body as sent: JSON text as its caller wrote it, else serialised here."""
    return body.encode() if isinstance(body, str) else orjson.dumps(body)


def _json(content: bytes) -> dict[str, Any] | None:
    if not content:
        return None
    try:
        parsed = orjson.loads(content)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _fhir(content: bytes, answer: requests.Response, where: str) -> dict[str, Any] | None:
    """A success's body as FHIR: none, or a JSON object naming its resourceType. Anything else
    (an HTML page from a proxy, invalid JSON) means the answer cannot be read: whether the EHR
    acted is unknown, as if no answer had come."""
    if not content.strip():
        return None
    parsed = _json(content)
    if parsed is None or not isinstance(parsed.get("resourceType"), str):
        kind = answer.headers.get("Content-Type", "no content type").split(";")[0]
        reason = f"{where} answered {answer.status_code} with a body that is not FHIR ({kind})"
        raise TemporaryEhrError(answer.status_code, reason)
    return parsed


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
