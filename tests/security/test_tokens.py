"""SMART Backend Services at /auth/token: assertions signed RS384 and ES384 are traded for
short-lived tokens; every kind of bad assertion is refused; refusals are throttled."""

import base64
import hashlib
import hmac
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from joserfc import jws, jwt
from joserfc.jwk import ECKey, RSAKey

from adapter.runtime import Runtime
from adapter.security.clients import Client

TOKEN_URL = "http://testserver/auth/token"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

Key = RSAKey | ECKey


def _key(alg: str, kid: str = "k1") -> Key:
    if alg == "RS384":
        return RSAKey.generate_key(2048, parameters={"kid": kid})
    return ECKey.generate_key("P-384", parameters={"kid": kid})


def _register(runtime: Runtime, key: Key, scopes: str = "system/*.rs") -> Client:
    jwks = {"keys": [key.as_dict(private=False)]}
    return runtime.clients.add_smart_client("EHR", scopes, datetime.now(UTC), jwks=jwks)


def _assertion(client_id: str, key: Key, alg: str, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": TOKEN_URL,
        "exp": now + 240,
        "iat": now,
        "jti": str(uuid.uuid4()),
    }
    claims.update(changes)
    header = {"alg": alg, "typ": "JWT", "kid": key.kid}
    return jwt.encode(header, {k: v for k, v in claims.items() if v is not None}, key, [alg])


def _ask(client: TestClient, assertion: str, scope: str = "system/*.rs") -> Any:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
        "scope": scope,
    }
    return client.post("/auth/token", data=form)


@pytest.mark.parametrize("alg", ["RS384", "ES384"])
def test_a_signed_assertion_gets_a_token_that_opens_the_fhir_endpoint(
    bare: TestClient, service_runtime: Runtime, alg: str
) -> None:
    key = _key(alg)
    registered = _register(service_runtime, key)

    answer = _ask(bare, _assertion(registered.id, key, alg), "system/Observation.rs")
    body = answer.json()
    token = {"Authorization": f"Bearer {body['access_token']}"}

    assert answer.status_code == 200 and answer.headers["cache-control"] == "no-store"
    assert body["token_type"] == "bearer" and 0 < body["expires_in"] <= 300
    assert body["scope"] == "system/Observation.rs"
    assert bare.get("/fhir/Observation", headers=token).status_code == 200
    assert bare.get("/fhir/Procedure", headers=token).status_code == 403


def _b64(value: bytes) -> str:
    return base64.urlsafe_b64encode(value).rstrip(b"=").decode()


def _hs256_with_public_key(client_id: str, key: RSAKey) -> str:
    """The classic confusion: an HMAC keyed with the client's public key, which a verifier
    that trusted the header's alg would check with that same public key."""
    header = _b64(orjson.dumps({"alg": "HS256", "typ": "JWT", "kid": key.kid}))
    claims = _b64(_segment(_assertion(client_id, key, "RS384")))
    signed = f"{header}.{claims}".encode()
    mac = hmac.new(key.as_pem(private=False), signed, hashlib.sha256).digest()
    return f"{header}.{claims}.{_b64(mac)}"


def _segment(token: str) -> bytes:
    return jws.extract_compact(token.encode()).payload


def _unsigned(client_id: str, key: RSAKey) -> str:
    """The same claims under `alg: none`, with no signature."""
    header = _b64(b'{"alg":"none","typ":"JWT"}')
    return f"{header}.{_b64(_segment(_assertion(client_id, key, 'RS384')))}."


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("expired", "expired"),
        ("too far ahead", "five minutes"),
        ("issued in the future", "iat is in the future"),
        ("wrong audience", "aud"),
        ("wrong key", "signature"),
        ("alg none", "alg must be"),
        ("HS256 with the public key", "alg must be"),
        ("sub is not the client", "iss and sub"),
        ("no jti", "jti is required"),
        ("unknown client", "registered"),
    ],
)
def test_bad_assertions_are_refused(
    bare: TestClient, service_runtime: Runtime, case: str, reason: str
) -> None:
    key = _key("RS384")
    assert isinstance(key, RSAKey)
    client_id = _register(service_runtime, key).id
    now = int(time.time())
    assertion = {
        "expired": lambda: _assertion(client_id, key, "RS384", exp=now - 5),
        "too far ahead": lambda: _assertion(client_id, key, "RS384", exp=now + 3600),
        "issued in the future": lambda: _assertion(client_id, key, "RS384", iat=now + 600),
        "wrong audience": lambda: _assertion(client_id, key, "RS384", aud="https://elsewhere"),
        "wrong key": lambda: _assertion(client_id, _key("RS384"), "RS384"),
        "alg none": lambda: _unsigned(client_id, key),
        "HS256 with the public key": lambda: _hs256_with_public_key(client_id, key),
        "sub is not the client": lambda: _assertion(client_id, key, "RS384", sub="someone"),
        "no jti": lambda: _assertion(client_id, key, "RS384", jti=None),
        "unknown client": lambda: _assertion("not-registered", key, "RS384", sub="not-registered"),
    }[case]()

    answer = _ask(bare, assertion)

    assert answer.status_code == 401
    assert answer.json()["error"] == "invalid_client"
    assert reason in answer.json()["error_description"]


def test_a_replayed_assertion_is_refused(bare: TestClient, service_runtime: Runtime) -> None:
    key = _key("ES384")
    assertion = _assertion(_register(service_runtime, key).id, key, "ES384")

    first, second = _ask(bare, assertion), _ask(bare, assertion)

    assert first.status_code == 200
    assert second.status_code == 401 and "jti" in second.json()["error_description"]


def test_scopes_are_cut_to_what_the_client_may_have(
    bare: TestClient, service_runtime: Runtime
) -> None:
    key = _key("ES384")
    client_id = _register(service_runtime, key, "system/Observation.read").id

    wide = _ask(bare, _assertion(client_id, key, "ES384"), "system/*.rs system/*.cruds").json()
    none = _ask(bare, _assertion(client_id, key, "ES384"), "system/Procedure.rs")
    garbled = _ask(bare, _assertion(client_id, key, "ES384"), "patient/*.read launch")

    assert wide["scope"] == "system/Observation.rs"
    assert none.status_code == 400 and none.json()["error"] == "invalid_scope"
    assert garbled.status_code == 400 and garbled.json()["error"] == "invalid_scope"


def test_a_request_without_scope_is_granted_the_clients_registered_scopes(
    bare: TestClient, service_runtime: Runtime
) -> None:
    key = _key("ES384")
    client_id = _register(service_runtime, key, "system/Observation.rs system/Procedure.rs").id
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": _assertion(client_id, key, "ES384"),
    }

    granted = bare.post("/auth/token", data=form)
    beyond = _ask(bare, _assertion(client_id, key, "ES384"), "system/AdverseEvent.rs")

    assert granted.status_code == 200, granted.text
    assert granted.json()["scope"] == "system/Observation.rs system/Procedure.rs"
    assert beyond.status_code == 400 and beyond.json()["error"] == "invalid_scope"


@pytest.mark.parametrize(
    ("form", "error"),
    [
        ({"grant_type": "authorization_code"}, "unsupported_grant_type"),
        ({"grant_type": "client_credentials"}, "invalid_request"),
        (
            {"grant_type": "client_credentials", "client_assertion_type": JWT_BEARER},
            "invalid_request",
        ),
    ],
)
def test_incomplete_requests_are_refused(
    bare: TestClient, form: dict[str, str], error: str
) -> None:
    answer = bare.post("/auth/token", data=form)

    assert answer.status_code == 400 and answer.json()["error"] == error


def test_a_revoked_client_loses_its_tokens(bare: TestClient, service_runtime: Runtime) -> None:
    key = _key("ES384")
    registered = _register(service_runtime, key)
    token = _ask(bare, _assertion(registered.id, key, "ES384")).json()["access_token"]
    headers = {"Authorization": f"Bearer {token}"}
    assert bare.get("/fhir/Observation", headers=headers).status_code == 200

    service_runtime.clients.revoke(registered.id, datetime.now(UTC))

    assert bare.get("/fhir/Observation", headers=headers).status_code == 401
    assert _ask(bare, _assertion(registered.id, key, "ES384")).status_code == 401


def test_repeated_bad_assertions_are_throttled(bare: TestClient, service_runtime: Runtime) -> None:
    key = _key("ES384")
    client_id = _register(service_runtime, key).id
    limit = service_runtime.settings.token_failures_per_minute

    answers = [_ask(bare, _assertion(client_id, _key("ES384"), "ES384")) for _ in range(limit)]
    throttled = _ask(bare, _assertion(client_id, key, "ES384"))

    assert {a.status_code for a in answers} == {401}
    assert throttled.status_code == 429
    assert 1 <= int(throttled.headers["retry-after"]) <= 60


class _Keys(BaseHTTPRequestHandler):
    jwks: bytes = b"{}"

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(self.jwks)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def jwks_server() -> Iterator[tuple[str, type[_Keys]]]:
    handler = type("Keys", (_Keys,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/jwks.json", handler
    server.shutdown()


def test_a_client_registered_by_jwks_url_signs_with_its_published_keys(
    bare: TestClient, service_runtime: Runtime, jwks_server: tuple[str, type[_Keys]]
) -> None:
    url, handler = jwks_server
    key = _key("ES384", kid="published-1")
    handler.jwks = orjson.dumps({"keys": [key.as_dict(private=False)]})
    registered = service_runtime.clients.add_smart_client(
        "EHR by URL", "system/*.rs", datetime.now(UTC), jwks_url=url
    )
    rotated = _key("ES384", kid="published-2")

    first = _ask(bare, _assertion(registered.id, key, "ES384"))
    handler.jwks = orjson.dumps({"keys": [rotated.as_dict(private=False)]})
    after_rotation = _ask(bare, _assertion(registered.id, rotated, "ES384"))

    assert first.status_code == 200
    assert after_rotation.status_code == 200


def test_discovery_advertises_the_endpoint_algorithms_and_scopes(bare: TestClient) -> None:
    for path in ("/.well-known/smart-configuration", "/fhir/.well-known/smart-configuration"):
        body = bare.get(path).json()

        assert body["token_endpoint"] == TOKEN_URL
        assert body["token_endpoint_auth_signing_alg_values_supported"] == ["RS384", "ES384"]
        assert "client_credentials" in body["grant_types_supported"]
        assert "system/Observation.rs" in body["scopes_supported"]
