"""Console sign-in: an admin API key for a session cookie (HttpOnly, SameSite=Strict, Secure
outside development); every form needs the sign-in's CSRF token; sign-out and revocation end
the sign-in; the console's own actions are in the audit with the admin who did them."""

import re
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from adapter.app import create_app
from adapter.runtime import Runtime
from adapter.settings import Settings
from tests.conftest import grant

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
def console(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings, background=False)
    with TestClient(app, follow_redirects=False) as test_client:
        yield test_client


def sign_in(console: TestClient, key: str) -> "tuple[int, str]":
    form = console.get("/console/sign-in")
    token = CSRF.search(form.text).group(1)  # type: ignore[union-attr]
    answer = console.post("/console/sign-in", data={"csrf": token, "api_key": key})
    return answer.status_code, answer.headers.get("set-cookie", "")


def page_csrf(console: TestClient, path: str = "/console/held") -> str:
    found = CSRF.search(console.get(path).text)
    assert found is not None
    return found.group(1)


def runtime_of(console: TestClient) -> Runtime:
    runtime: Runtime = console.app.state.runtime  # type: ignore[attr-defined]
    return runtime


def test_an_admin_key_signs_in_with_a_strict_http_only_cookie(console: TestClient) -> None:
    admin = grant(runtime_of(console))

    status, cookie = sign_in(console, admin.api_key)
    today = console.get("/console")

    assert status == 303
    assert cookie.startswith("adapter_console=cs_")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert "Secure" not in cookie  # development: served over plain HTTP on loopback
    assert admin.api_key not in cookie
    assert today.status_code == 200 and "Needs a person now" in today.text
    assert "default-src 'none'" in today.headers["content-security-policy"]
    assert today.headers["cache-control"] == "no-store"


def test_outside_development_the_cookie_is_secure(database_url: str, mappings_dir: str) -> None:
    settings = Settings(
        database_url=database_url,
        mappings_dir=mappings_dir,
        env="production",
        secret_key="a production secret of forty-odd characters 1234",
        public_url="https://adapter.example.org",
    )
    app = create_app(settings, background=False)
    with TestClient(app, base_url="https://testserver", follow_redirects=False) as client:
        admin = grant(runtime_of(client))
        _, cookie = sign_in(client, admin.api_key)

    assert "Secure" in cookie


def test_keys_that_are_not_admin_keys_do_not_sign_in(console: TestClient) -> None:
    intake = grant(runtime_of(console), role="intake")

    answers = [sign_in(console, key) for key in (intake.api_key, "iak_unknown", "")]

    assert [status for status, _ in answers] == [401, 401, 401]
    assert all("adapter_console=cs_" not in cookie for _, cookie in answers)
    assert console.get("/console").headers["location"] == "/console/sign-in"


def test_a_sign_in_form_without_its_token_is_refused(console: TestClient) -> None:
    admin = grant(runtime_of(console))

    answer = console.post("/console/sign-in", data={"csrf": "forged", "api_key": admin.api_key})

    assert answer.status_code == 403
    assert "adapter_console=" not in answer.headers.get("set-cookie", "")


def test_every_form_needs_the_sign_ins_csrf_token(console: TestClient) -> None:
    sign_in(console, grant(runtime_of(console)).api_key)
    token = page_csrf(console)
    row = {"table": "drugs", "local": "X", "text": "X"}

    refused = [
        console.post("/console/replay", data={"id": "x"}),
        console.post("/console/replay", data={"id": "x", "csrf": token + "x"}),
        console.post("/console/mappings/preview", data=row),
        console.post("/console/mappings/save", data={**row, "csrf": "other"}),
        console.post("/console/sign-out", data={"csrf": ""}),
        console.post("/console/patients/100234/confirm", data={"ehr_id": "x"}),
        console.post("/console/patients/100234/withdraw", data={"csrf": token[:-1]}),
    ]
    accepted = console.post("/console/replay", data={"id": "x", "csrf": token})

    assert [a.status_code for a in refused] == [403] * 7
    assert "security token does not match" in refused[0].text
    assert accepted.status_code == 409  # past the check: nothing of that id to replay
    assert console.get("/console").status_code == 200  # still signed in


def test_signing_out_and_revoking_the_key_end_the_sign_in(console: TestClient) -> None:
    runtime = runtime_of(console)
    first = grant(runtime)
    sign_in(console, first.api_key)
    cookie = console.cookies.get("adapter_console")

    signed_out = console.post("/console/sign-out", data={"csrf": page_csrf(console)})
    console.cookies.set("adapter_console", cookie or "", path="/console")
    after_sign_out = console.get("/console")
    second = grant(runtime)
    sign_in(console, second.api_key)
    runtime.clients.revoke(second.smart.id, datetime.now(UTC))
    key_client = runtime.clients.by_key(second.api_key)
    assert key_client is not None
    runtime.clients.revoke(key_client.id, datetime.now(UTC))
    after_revoke = console.get("/console")

    assert signed_out.status_code == 303
    assert after_sign_out.headers["location"] == "/console/sign-in"
    assert after_revoke.headers["location"] == "/console/sign-in"


def test_the_consoles_own_actions_are_audited_with_the_admin(console: TestClient) -> None:
    runtime = runtime_of(console)
    admin = grant(runtime)
    sign_in(console, admin.api_key)
    client = runtime.clients.by_key(admin.api_key)
    assert client is not None
    console.post("/console/replay", data={"id": "Observation-x", "csrf": page_csrf(console)})
    console.app.state.audit_writer.flush()  # type: ignore[attr-defined]

    entries = runtime.audit.query(50, client_id=client.id)
    interactions = {e.interaction: e for e in entries}

    assert {"admin:console_sign_in", "admin:console_held", "admin:console_replay"} <= set(
        interactions
    )
    assert interactions["admin:console_replay"].outcome == 409
    searched = console.get(
        "/console/audit", params={"client_id": client.id, "interaction": "admin:console_replay"}
    )
    assert searched.text.count("POST /console/replay") == 1
