"""How the sync proves itself to the EHR: nothing, a static bearer token, or SMART Backend
Services (client_credentials with a private_key_jwt assertion, RS384 or ES384)."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import requests

from adapter.settings import Settings
from adapter.sync.errors import EhrAuthError, TemporaryEhrError

if TYPE_CHECKING:  # joserfc (and cryptography under it) is loaded where a key is used
    from joserfc.jwk import ECKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 300
"""SMART Backend Services: the assertion's exp is at most five minutes ahead."""
EARLY_REFRESH_SECONDS = 30


class EhrAuth(Protocol):
    def header(self, session: requests.Session, timeout: float) -> str | None:
        """The Authorization header value for the next request."""

    def refresh(self) -> None:
        """Forget the current token: the EHR refused it."""


class NoAuth:
    def header(self, session: requests.Session, timeout: float) -> str | None:
        return None

    def refresh(self) -> None:
        return None


@dataclass
class BearerAuth:
    token: str

    def header(self, session: requests.Session, timeout: float) -> str | None:
        return f"Bearer {self.token}"

    def refresh(self) -> None:
        return None


@dataclass
class SmartBackendAuth:
    """Backend Services client (hl7.org/fhir/smart-app-launch/backend-services.html): a token
    obtained with a signed assertion, cached until shortly before it expires."""

    base_url: str
    client_id: str
    key: RSAKey | ECKey
    algorithm: str
    scopes: str
    key_id: str | None = None
    token_url: str | None = None
    server: str = "the EHR"
    """Whom the tokens are asked of, as the errors name it (the adapter's own token command
    asks the adapter)."""
    token_url_setting: str | None = "ADAPTER_EHR_TOKEN_URL"
    """The setting that names the token endpoint where the server publishes none."""
    _token: str | None = field(default=None, repr=False)
    _expires_at: float = 0.0
    _fetching: threading.Lock = field(default_factory=threading.Lock, repr=False)
    """The sync's sender thread and its stager share the token: one fetches it."""

    def header(self, session: requests.Session, timeout: float) -> str | None:
        with self._fetching:
            if self._token is None or time.time() >= self._expires_at - EARLY_REFRESH_SECONDS:
                self._fetch(session, timeout)
            return f"Bearer {self._token}"

    def refresh(self) -> None:
        self._token = None

    def assertion(self, token_url: str) -> str:
        """A signed client assertion for the token endpoint at `token_url`."""
        now = int(time.time())
        header = {"alg": self.algorithm, "typ": "JWT"}
        if self.key_id:
            header["kid"] = self.key_id
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + ASSERTION_SECONDS,
            "iat": now,
            "jti": str(uuid.uuid4()),
        }
        from joserfc import jwt

        return jwt.encode(header, claims, self.key, algorithms=[self.algorithm])

    def _fetch(self, session: requests.Session, timeout: float) -> None:
        token_url = self.token_url or self._discover(session, timeout)
        assertion = self.assertion(token_url)
        form = {
            "grant_type": "client_credentials",
            "scope": self.scopes,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        try:
            answer = session.post(token_url, data=form, timeout=timeout)
        except (requests.ConnectionError, requests.Timeout):
            reason = f"no answer from {self.server}'s token endpoint at {token_url}"
            raise TemporaryEhrError(None, reason) from None
        if answer.status_code >= 500 or answer.status_code == 429:
            reason = f"{self.server}'s token endpoint is unavailable"
            raise TemporaryEhrError(answer.status_code, reason)
        if answer.status_code != 200:
            raise EhrAuthError(
                f"{self.server}'s token endpoint refused the client assertion of "
                f"{self.client_id} ({answer.status_code}): check the client id, key and "
                "registered JWKS"
            )
        body = answer.json()
        self._token = str(body["access_token"])
        self._expires_at = time.time() + float(body.get("expires_in", 300))
        self.token_url = token_url

    def _discover(self, session: requests.Session, timeout: float) -> str:
        url = f"{self.base_url.rstrip('/')}/.well-known/smart-configuration"
        try:
            answer = session.get(url, timeout=timeout, headers={"Accept": "application/json"})
        except (requests.ConnectionError, requests.Timeout):
            # Named by its address: the adapter's own token command asks it of the adapter.
            reason = f"no answer from the SMART configuration at {url}"
            raise TemporaryEhrError(None, reason) from None
        if answer.status_code != 200 or "token_endpoint" not in answer.text:
            setting = f": set {self.token_url_setting}" if self.token_url_setting else ""
            raise EhrAuthError(f"{self.server} publishes no token endpoint at {url}{setting}")
        return str(answer.json()["token_endpoint"])


def ehr_auth(settings: Settings) -> EhrAuth:
    if settings.ehr_auth == "bearer" and settings.ehr_bearer_token is not None:
        return BearerAuth(settings.ehr_bearer_token.get_secret_value())
    if settings.ehr_auth == "smart":
        assert settings.ehr_client_id and settings.ehr_private_key_file and settings.ehr_base_url
        return SmartBackendAuth(
            base_url=settings.ehr_base_url,
            client_id=settings.ehr_client_id,
            key=load_private_key(settings.ehr_private_key_file, settings.ehr_signing_algorithm),
            algorithm=settings.ehr_signing_algorithm,
            scopes=settings.ehr_scopes,
            key_id=settings.ehr_key_id,
            token_url=settings.ehr_token_url,
        )
    return NoAuth()


def load_private_key(path: Path, algorithm: str) -> RSAKey | ECKey:
    from joserfc.jwk import ECKey, RSAKey

    pem = path.read_bytes()
    try:
        return RSAKey.import_key(pem) if algorithm == "RS384" else ECKey.import_key(pem)
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"ADAPTER_EHR_PRIVATE_KEY_FILE: not a PEM private key for {algorithm} ({exc})"
        ) from None
