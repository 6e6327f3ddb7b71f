"""Attacks on the token endpoint and the caller's address, on SQLite and PostgreSQL: unsigned
assertions naming a client locked it out (finding 3); `aud` followed the Host header (6); the
caller's address came from X-Forwarded-For (10); 429 was no OAuth error, and failed requests
did not record the `iss` they claimed (11)."""

import base64
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import httpx2 as httpx
import orjson
import pytest
from click.testing import CliRunner
from joserfc import jwt
from joserfc.jwk import ECKey

from adapter.app import create_app
from adapter.cli import main
from adapter.security.clients import Client
from adapter.settings import Settings
from tests.security.conftest import RunningService

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _smart_client(service: RunningService) -> tuple[Client, ECKey]:
    key = ECKey.generate_key("P-384", parameters={"kid": "k1"})
    jwks = {"keys": [key.as_dict(private=False)]}
    client = service.runtime.clients.add_smart_client(
        "EHR", "system/*.rs", datetime.now(UTC), jwks=jwks
    )
    return client, key


def _assertion(client_id: str, key: ECKey, aud: str, **changes: Any) -> str:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": client_id,
        "sub": client_id,
        "aud": aud,
        "exp": now + 240,
        "iat": now,
        "jti": str(uuid.uuid4()),
        **changes,
    }
    return jwt.encode({"alg": "ES384", "kid": key.kid}, claims, key, ["ES384"])


def _unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).decode().rstrip("=")

    return f"{part({'alg': 'ES384', 'kid': 'k1'})}.{part(claims)}.c2lnbmF0dXJl"


def _ask(client: httpx.Client, assertion: str) -> httpx.Response:
    form = {
        "grant_type": "client_credentials",
        "client_assertion_type": JWT_BEARER,
        "client_assertion": assertion,
        "scope": "system/*.rs",
    }
    return client.post("/auth/token", data=form)


def test_unsigned_assertions_naming_a_client_do_not_lock_it_out(running: RunningService) -> None:
    victim, key = _smart_client(running)
    aud = f"{running.url}/auth/token"
    limit = running.runtime.settings.token_failures_per_minute
    forged = {"iss": victim.id, "sub": victim.id, "aud": aud, "exp": int(time.time()) + 200}

    with running.client(forwarded_for="198.51.100.1") as attacker:
        refused = [_ask(attacker, _unsigned({**forged, "jti": str(n)})) for n in range(limit)]
        throttled = _ask(attacker, _unsigned({**forged, "jti": "last"}))
    with running.client(forwarded_for="198.51.100.2") as ehr:
        answer = _ask(ehr, _assertion(victim.id, key, aud))

    assert {r.status_code for r in refused} == {401}
    assert throttled.status_code == 429 and throttled.json()["error"] == "temporarily_unavailable"
    assert 1 <= int(throttled.headers["retry-after"]) <= 60
    assert answer.status_code == 200, answer.json()


def test_verified_failures_count_against_the_client(running: RunningService) -> None:
    client, key = _smart_client(running)
    aud = f"{running.url}/auth/token"
    limit = running.runtime.settings.token_failures_per_minute

    with running.client(forwarded_for="198.51.100.3") as first:
        wrong = [
            _ask(first, _assertion(client.id, key, "http://elsewhere/auth/token"))
            for _ in range(limit)
        ]
    with running.client(forwarded_for="198.51.100.4") as second:
        held = _ask(second, _assertion(client.id, key, aud))

    assert {r.status_code for r in wrong} == {401}
    assert held.status_code == 429 and "error" in held.json()


def test_aud_does_not_follow_the_host_header(running: RunningService) -> None:
    client, key = _smart_client(running)
    forged_aud = "http://ehr-a.example.org/auth/token"

    with running.client(forwarded_for="198.51.100.5") as caller:
        answer = caller.post(
            "/auth/token",
            headers={"Host": "ehr-a.example.org"},
            data={
                "grant_type": "client_credentials",
                "client_assertion_type": JWT_BEARER,
                "client_assertion": _assertion(client.id, key, forged_aud),
                "scope": "system/*.rs",
            },
        )
        discovery = caller.get(
            "/.well-known/smart-configuration", headers={"Host": "ehr-a.example.org"}
        ).json()

    assert answer.status_code == 401 and answer.json()["error"] == "invalid_client"
    assert discovery["token_endpoint"] == f"{running.url}/auth/token"


def test_production_will_not_start_without_its_public_url(
    settings: Settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    production = settings.model_copy(update={"env": "production", "secret_key": "kX9-q2Lr_Tz7" * 4})
    with pytest.raises(RuntimeError, match="ADAPTER_PUBLIC_URL: required in production"):
        create_app(production, background=False)

    for name, value in {
        "ADAPTER_ENV": "production",
        "ADAPTER_SECRET_KEY": "kX9-q2Lr_Tz7" * 4,
        "ADAPTER_DATABASE_URL": settings.database_url,
        "ADAPTER_MAPPINGS_DIR": str(settings.mappings_dir),
    }.items():
        monkeypatch.setenv(name, value)
    from adapter.settings import get_settings

    get_settings.cache_clear()
    served = CliRunner().invoke(main, ["serve", "--port", "1"])
    get_settings.cache_clear()

    with caplog.at_level("WARNING"):
        create_app(settings, background=False).state.runtime.close()

    assert served.exit_code == 2 and "ADAPTER_PUBLIC_URL" in served.output
    assert "ADAPTER_PUBLIC_URL is unset" in caplog.text and "127.0.0.1:8080" in caplog.text


def test_the_callers_address_is_forwarded_only_by_a_trusted_proxy(
    running: RunningService,
) -> None:
    with running.client() as spoofer:
        spoofer.get(
            "/fhir/Observation",
            params={"spoofed": "yes"},
            headers={"X-Forwarded-For": "203.0.113.9"},
        )
    with running.client(forwarded_for="203.0.113.7, 203.0.113.8") as proxied:
        proxied.get("/fhir/Observation", params={"proxied": "yes"})

    entries = {entry.query: entry.address for entry in running.audit()}
    assert entries["spoofed=yes"] == "127.0.0.1"
    assert entries["proxied=yes"] == "203.0.113.8"  # the hop the proxy itself saw


def test_a_failed_token_request_records_the_iss_it_claimed(running: RunningService) -> None:
    claimed = {"iss": "someone-else", "sub": "someone-else", "aud": "x", "exp": 1, "jti": "j"}
    with running.client(forwarded_for="198.51.100.6") as caller:
        answer = _ask(caller, _unsigned(claimed))
        nul = _ask(caller, _unsigned({**claimed, "iss": "x\u0000y"}))

    tokens = [e for e in running.audit() if e.interaction == "token"]
    assert answer.status_code == 401 and nul.status_code == 401
    assert any(e.query and "iss=someone-else" in e.query and e.outcome == 401 for e in tokens)
    assert any(e.query and "iss=x%00y" in e.query for e in tokens)
