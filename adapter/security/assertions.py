"""Checking a SMART Backend Services client assertion (a private_key_jwt, RFC 7523), as
https://hl7.org/fhir/smart-app-launch/backend-services.html asks of an authorization server:
signed RS384 or ES384 by a key of the client's JWKS, `iss` = `sub` = the client id, `aud` = the
token URL, `exp` in the future and at most five minutes ahead, a `jti` never seen before."""

import base64
import binascii
import re
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import requests
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from adapter.security.clients import Client, Clients

ALGORITHMS = ("RS384", "ES384")
"""The allow-list: never `none`, never an HMAC algorithm that would take a public key as secret."""
KEY_TYPES = {"RS384": "RSA", "ES384": "EC"}
LONGEST_LIFETIME = timedelta(minutes=5)
CLOCK_SKEW = timedelta(seconds=30)
JWKS_CACHE_SECONDS = 300.0


LATEST_TIME = 2**35
"""The largest claim time taken as a time (seconds since the epoch: the year 3058)."""
CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
"""The shape of a client id; an `iss` of any other shape names no client."""
PRINTABLE = re.compile(r"[\x21-\x7e]{1,255}")


class AssertionRefused(Exception):
    """Why an assertion is refused, in words safe to give back to the caller. `client_id` is
    set when the assertion's signature verified: the client itself (or whoever holds its key)
    sent it, and the refusal counts against that client."""

    def __init__(self, reason: str, client_id: str | None = None) -> None:
        super().__init__(reason)
        self.client_id = client_id


@dataclass(frozen=True)
class Verified:
    client: Client
    jti: str
    expires_at: datetime


def _segment(part: str) -> dict[str, Any]:
    try:
        value = orjson.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise AssertionRefused("client_assertion is not a JWT") from None
    if not isinstance(value, dict):
        raise AssertionRefused("client_assertion is not a JWT")
    return value


def unverified_issuer(assertion: str) -> str | None:
    """The `iss` an assertion claims, before anything is checked (for the audit record; a
    claim of any other shape than a client id's comes back cut to 64 characters)."""
    parts = assertion.split(".")
    if len(parts) != 3:
        return None
    try:
        issuer = _segment(parts[1]).get("iss")
    except AssertionRefused:
        return None
    return issuer[:64] if isinstance(issuer, str) and issuer else None


class KeyFetcher:
    """JWKS of clients registered by URL, fetched and kept for a while; fetched again when an
    assertion names a key id the kept copy lacks (the client rotated its keys)."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = timeout
        self.kept: dict[str, tuple[float, dict[str, Any]]] = {}
        self.lock = threading.Lock()

    def jwks(self, url: str, kid: str | None) -> dict[str, Any]:
        with self.lock:
            kept = self.kept.get(url)
        fresh = kept is not None and kept[0] > time.monotonic()
        if kept and fresh and (kid is None or any(k.get("kid") == kid for k in kept[1]["keys"])):
            return kept[1]
        try:
            answer = requests.get(url, timeout=self.timeout)
            answer.raise_for_status()
            keys = answer.json()
        except (requests.RequestException, ValueError):
            raise AssertionRefused("the client's JWKS URL could not be read") from None
        if not isinstance(keys, dict) or not isinstance(keys.get("keys"), list):
            raise AssertionRefused("the client's JWKS URL did not answer a JWKS")
        with self.lock:
            self.kept[url] = (time.monotonic() + JWKS_CACHE_SECONDS, keys)
        return keys


def _candidate_keys(jwks: dict[str, Any], alg: str, kid: str | None) -> list[RSAKey | ECKey]:
    wanted = KEY_TYPES[alg]
    keys: list[RSAKey | ECKey] = []
    for item in jwks.get("keys", []):
        if not isinstance(item, dict) or item.get("kty") != wanted:
            continue
        if kid is not None and item.get("kid") != kid:
            continue
        if item.get("alg") not in (None, alg):
            continue
        try:
            imported = KeySet.import_key_set({"keys": [item]}).keys[0]
        except (JoseError, ValueError, TypeError):
            continue
        if isinstance(imported, RSAKey | ECKey):
            keys.append(imported)
    return keys


def verify_assertion(
    assertion: str,
    token_urls: set[str],
    clients: Clients,
    fetcher: KeyFetcher,
    now: datetime,
) -> Verified:
    """The client an assertion authenticates, or AssertionRefused saying why not."""
    parts = assertion.split(".")
    if len(parts) != 3:
        raise AssertionRefused("client_assertion is not a signed JWT (three segments)")
    header = _segment(parts[0])
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise AssertionRefused(f"alg must be one of {', '.join(ALGORITHMS)}")
    kid = header.get("kid") if isinstance(header.get("kid"), str) else None
    claimed = _segment(parts[1])
    issuer = claimed.get("iss")
    client = (
        clients.get(issuer) if isinstance(issuer, str) and CLIENT_ID.fullmatch(issuer) else None
    )
    if client is None or client.kind != "smart" or client.revoked_at is not None:
        raise AssertionRefused("iss is not a registered, active SMART client")
    jwks = client.jwks if client.jwks is not None else fetcher.jwks(client.jwks_url or "", kid)
    claims = None
    for key in _candidate_keys(jwks, alg, kid):
        try:
            claims = jwt.decode(assertion, key, algorithms=[alg]).claims
            break
        except (JoseError, ValueError):
            continue
    if claims is None:
        raise AssertionRefused("the signature does not verify with any key of the client")
    try:
        expires_at = _check_claims(claims, client.id, token_urls, now)
    except AssertionRefused as refused:
        raise AssertionRefused(str(refused), client.id) from None
    jti = claims["jti"]
    if not clients.spend_assertion(client.id, jti, expires_at, now):
        raise AssertionRefused("jti was used before: an assertion is accepted once", client.id)
    return Verified(client, jti, expires_at)


def _moment(value: Any, name: str) -> datetime | None:
    """A claim's time; None when absent, refused when not a plausible time."""
    if value is None:
        return None
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise AssertionRefused(f"{name} must be a number (seconds since the epoch)")
    if not 0 <= value <= LATEST_TIME:
        raise AssertionRefused(f"{name} is not a time this server accepts")
    return datetime.fromtimestamp(value, UTC)


def _check_claims(
    claims: dict[str, Any], client_id: str, token_urls: set[str], now: datetime
) -> datetime:
    """When the assertion expires, once its claims hold."""
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        raise AssertionRefused("iss and sub must both be the client id")
    audience = claims.get("aud")
    audiences = audience if isinstance(audience, list) else [audience]
    if not any(a in token_urls for a in audiences if isinstance(a, str)):
        raise AssertionRefused("aud must be this server's token URL")
    expires = _moment(claims.get("exp"), "exp")
    if expires is None:
        raise AssertionRefused("exp is required (seconds since the epoch)")
    if expires <= now:
        raise AssertionRefused("the assertion has expired")
    if expires > now + LONGEST_LIFETIME + CLOCK_SKEW:
        raise AssertionRefused("exp must be at most five minutes ahead")
    for name in ("iat", "nbf"):
        moment = _moment(claims.get(name), name)
        if moment is not None and moment > now + CLOCK_SKEW:
            raise AssertionRefused(f"{name} is in the future")
    jti = claims.get("jti")
    if not isinstance(jti, str) or not PRINTABLE.fullmatch(jti):
        raise AssertionRefused(
            "jti is required (a unique id of 1 to 255 printable ASCII characters)"
        )
    return expires
