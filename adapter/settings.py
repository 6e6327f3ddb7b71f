"""Service settings, read from ADAPTER_* environment variables."""

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEVELOPMENT_SECRET = "development-only-secret-change-me"


class Settings(BaseSettings):
    """Every setting of the adapter; each has a default that runs on a laptop."""

    model_config = SettingsConfigDict(env_prefix="ADAPTER_", extra="ignore")

    env: Literal["development", "production"] = Field(
        "development", description="`production` refuses development defaults such as the secret."
    )
    database_url: str = Field(
        "sqlite:///var/adapter.db",
        description="SQLAlchemy URL of the store: a SQLite file (default) or PostgreSQL "
        "(`postgresql://user@host/db`).",
    )
    auto_migrate: bool = Field(
        True, description="Upgrade the store's schema with its migrations when the service starts."
    )
    secret_key: str = Field(
        DEVELOPMENT_SECRET,
        description="Secret that signs and hashes what the adapter hands out; must be set in "
        "production.",
    )
    mappings_dir: Path = Field(
        Path("mappings"), description="Folder of the mapping files that clinic IT edits."
    )
    host: str = Field("127.0.0.1", description="Address `infusion-adapter serve` listens on.")
    port: int = Field(8080, description="Port `infusion-adapter serve` listens on.")
    max_body_bytes: int = Field(
        10 * 1024 * 1024, gt=0, description="Largest request body accepted; larger gets 413."
    )
    intake_batch_size: int = Field(
        1000, gt=0, le=50_000, description="Records stored per database transaction on import."
    )
    mapping_interval_seconds: float = Field(
        2.0,
        gt=0,
        description="How often the service maps pending records and checks the "
        "mapping files for changes.",
    )
    export_dir: Path = Field(
        Path("var/exports"), description="Folder where Bulk Data $export files are written."
    )
    export_retention_minutes: int = Field(
        60, gt=0, description="How long $export files stay downloadable before they are removed."
    )
    log_level: str = Field("INFO", description="Python logging level of the service.")

    @model_validator(mode="after")
    def _refuse_development_secret(self) -> "Settings":
        if self.env != "development" and self.secret_key == DEVELOPMENT_SECRET:
            raise ValueError(
                "ADAPTER_SECRET_KEY: the development default is refused when "
                f"ADAPTER_ENV={self.env}; set a secret of your own"
            )
        if self.env != "development" and len(self.secret_key) < 32:
            raise ValueError("ADAPTER_SECRET_KEY: must be at least 32 characters in production")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()
