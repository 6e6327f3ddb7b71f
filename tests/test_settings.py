"""Settings come from ADAPTER_* variables; production refuses development defaults."""

import pytest
from pydantic import ValidationError

from adapter.settings import DEVELOPMENT_SECRET, Settings
from tests.conftest import ROOT


def test_defaults_run_on_the_embedded_store(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ADAPTER_DATABASE_URL", "ADAPTER_ENV", "ADAPTER_SECRET_KEY"):
        monkeypatch.delenv(name, raising=False)

    settings = Settings()

    assert settings.database_url.startswith("sqlite:///")
    assert settings.env == "development"


def test_environment_variables_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_DATABASE_URL", "postgresql://adapter@db/adapter")
    monkeypatch.setenv("ADAPTER_MAX_BODY_BYTES", "1024")

    settings = Settings()

    assert settings.database_url == "postgresql://adapter@db/adapter"
    assert settings.max_body_bytes == 1024


def test_production_refuses_the_development_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADAPTER_ENV", "production")
    monkeypatch.delenv("ADAPTER_SECRET_KEY", raising=False)

    with pytest.raises(
        ValidationError, match="ADAPTER_SECRET_KEY: the development default is refused"
    ):
        Settings()


def test_production_refuses_a_short_secret() -> None:
    with pytest.raises(ValidationError, match="at least 32 characters"):
        Settings(env="production", secret_key="short")


def test_production_accepts_a_real_secret() -> None:
    settings = Settings(env="production", secret_key="kX9-q2Lr_Tz7" * 4)

    assert settings.secret_key != DEVELOPMENT_SECRET


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        (" " * 32, "whitespace"),
        ("\t" * 40, "whitespace"),
        (" padded-secret-of-enough-characters-x ", "whitespace"),
        ("s" * 40, "different characters"),
        ("abababababababababababababababab", "different characters"),
    ],
)
def test_production_refuses_a_blank_or_uniform_secret(secret: str, reason: str) -> None:
    with pytest.raises(ValidationError, match=reason):
        Settings(env="production", secret_key=secret)


def test_every_setting_is_in_the_configuration_table() -> None:
    table = (ROOT / "docs" / "configuration.md").read_text()

    missing = [
        name for name in Settings.model_fields if f"| `ADAPTER_{name.upper()}` |" not in table
    ]

    assert missing == []
