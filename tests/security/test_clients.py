"""`infusion-adapter clients`: keys shown once and stored hashed, listed, revoked; development
credentials for a laptop, refused in production."""

import re
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from fastapi.testclient import TestClient
from sqlalchemy import text

from adapter.app import create_app
from adapter.cli import main
from adapter.settings import Settings, get_settings
from tests.conftest import LiveServer

PRODUCTION_SECRET = "a-production-secret-of-at-least-32-characters"


def _run(*args: str) -> str:
    result = CliRunner().invoke(main, list(args))
    assert result.exit_code == 0, result.output
    return result.output


def test_a_key_is_shown_once_stored_hashed_and_revocable(
    cli_environment: Settings, settings: Settings
) -> None:
    output = _run("clients", "add-key", "clinic charting system", "--role", "intake")
    key = re.search(r"iak_\S+", output)
    client_id = re.search(r"client (\w+)", output)
    assert key and client_id

    with TestClient(create_app(settings, background=False)) as service:
        headers = {"Authorization": f"Bearer {key.group(0)}"}
        before = service.get("/api/v1/records/vitals/VIT-1", headers=headers).status_code
        engine = service.app.state.runtime.store.engine  # type: ignore[attr-defined]
        with engine.connect() as connection:
            stored = " ".join(
                str(value)
                for row in connection.execute(text("SELECT * FROM api_clients"))
                for value in row
            )
        listed = _run("clients", "list")
        _run("clients", "revoke", client_id.group(1))
        service.app.state.clients.keys.clear()  # type: ignore[attr-defined]
        after = service.get("/api/v1/records/vitals/VIT-1", headers=headers).status_code

    assert before == 404 and after == 401
    assert key.group(0) not in stored and key.group(0)[4:] not in stored
    assert "clinic charting system" in listed and "role intake" in listed
    assert "revoked" in _run("clients", "list")


def test_a_smart_client_needs_valid_scopes_and_keys(
    cli_environment: Settings, tmp_path: Path
) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')

    refused = CliRunner().invoke(
        main,
        ["clients", "add-smart", "EHR", "--scopes", "patient/*.read", "--jwks-file", str(jwks)],
    )
    no_keys = CliRunner().invoke(main, ["clients", "add-smart", "EHR", "--scopes", "system/*.rs"])
    made = _run("clients", "add-smart", "EHR", "--scopes", "system/*.rs", "--jwks-file", str(jwks))

    assert refused.exit_code == 2 and "system scope" in refused.output
    assert no_keys.exit_code == 2 and "JWKS" in no_keys.output
    assert "scopes system/*.rs" in made


def test_development_credentials_work_and_production_refuses_them(
    cli_environment: Settings, settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "dev-client"
    output = _run("clients", "dev", "--folder", str(folder))
    key = re.search(r"iak_\S+", output)
    assert key and (folder / "smart-key.pem").stat().st_mode & 0o077 == 0

    with TestClient(create_app(settings, background=False)) as service:
        headers = {"Authorization": f"Bearer {key.group(0)}"}
        assert service.get("/api/v1/sync/status", headers=headers).status_code == 200

    production = settings.model_copy(update={"env": "production", "secret_key": PRODUCTION_SECRET})
    with pytest.raises(RuntimeError, match="development clients"):
        create_app(production, background=False)
    monkeypatch.setenv("ADAPTER_ENV", "production")
    monkeypatch.setenv("ADAPTER_SECRET_KEY", PRODUCTION_SECRET)
    get_settings.cache_clear()
    refused = CliRunner().invoke(main, ["clients", "dev", "--folder", str(folder)])
    assert refused.exit_code == 2 and "production" in refused.output


def _token_of(folder: Path, url: str, client_id: str | None = None) -> Result:
    """`clients token` for the development SMART client made in `folder` (or another id)."""
    output = _run("clients", "dev", "--folder", str(folder))
    smart = re.search(r"development SMART client (\w+)", output)
    assert smart
    key_file = str(folder / "smart-key.pem")
    arguments = ["--client-id", client_id or smart.group(1), "--key-file", key_file]
    return CliRunner().invoke(main, ["clients", "token", *arguments, "--url", url])


def test_a_token_asked_of_an_adapter_that_does_not_answer_names_where_it_asked(
    cli_environment: Settings, tmp_path: Path
) -> None:
    result = _token_of(tmp_path / "dev-client", "http://127.0.0.1:9")

    assert result.exit_code == 1
    assert "no answer from the SMART configuration at http://127.0.0.1:9/fhir/" in result.output
    assert "EHR" not in result.output


def test_a_token_the_adapter_refuses_says_the_adapter_refused_it(
    cli_environment: Settings, live_server: LiveServer, tmp_path: Path
) -> None:
    result = _token_of(tmp_path / "dev-client", live_server.url, client_id="no-such-client")

    assert result.exit_code == 1
    assert "the adapter's token endpoint refused the client assertion of no-such-client" in (
        result.output
    )
    assert "EHR" not in result.output
