"""Service settings, read from ADAPTER_* environment variables."""

from functools import lru_cache
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from apscheduler.triggers.cron import CronTrigger
from pydantic import Field, SecretStr, field_validator, model_validator
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
    header_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Time a connection has to send a request's headers before it is closed "
        "(`infusion-adapter serve`).",
    )
    body_timeout_seconds: float = Field(
        30.0, gt=0, description="Time a request has to send its whole body; slower gets 408."
    )
    public_url: str | None = Field(
        None,
        description="The adapter's base URL as its clients reach it (behind a proxy, the proxy's "
        "URL); links, the token URL and the `aud` of client assertions use it. Required in "
        "production; in development, unset, the URL each request arrived at.",
    )
    trusted_proxies: str = Field(
        "",
        description="Comma-separated addresses or networks (`10.0.0.5, 10.1.0.0/16`) of the "
        "reverse proxies whose `X-Forwarded-For` names the caller; from any other peer the "
        "header is ignored.",
    )
    access_token_seconds: int = Field(
        300, gt=0, le=300, description="Lifetime of an access token issued at /auth/token."
    )
    token_failures_per_minute: int = Field(
        10,
        gt=0,
        description="Refused client assertions per minute, per client and per address, before "
        "/auth/token answers 429.",
    )
    json_max_depth: int = Field(
        32, gt=0, le=512, description="Deepest nesting of JSON accepted in a request body."
    )
    exports_per_client: int = Field(
        2, gt=0, description="Bulk exports one client may have queued or running at once."
    )
    intake_max_records: int = Field(
        10_000,
        gt=0,
        le=100_000,
        description="Records one intake request may hold; more gets 413 (send several "
        "requests, or use `infusion-adapter import`).",
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
    mapping_claim_seconds: float = Field(
        30.0,
        ge=5,
        le=3600,
        description="How long a mapping batch holds its records: the records of a process "
        "stopped mid-batch are mapped by another pass once it has passed, so it is short, and "
        "far longer than a batch takes.",
    )
    export_dir: Path = Field(
        Path("var/exports"), description="Folder where Bulk Data $export files are written."
    )
    export_retention_minutes: int = Field(
        60, gt=0, description="How long $export files stay downloadable before they are removed."
    )
    log_level: str = Field("INFO", description="Python logging level of the service.")
    default_site: str | None = Field(
        None,
        pattern=r"^[a-z0-9-]{1,32}$",
        description="In a deployment of several sites (mappings/sites/), the site of a record "
        "that names none, sent with a credential bound to no site; unset: such records are "
        "refused, naming `clinic_site`.",
    )
    ehr_base_url: str | None = Field(
        None,
        description="FHIR R4 base URL of the clinic's EHR that the sync pushes to; "
        "no sync when unset.",
    )
    ehr_proxy_url: str | None = Field(
        None,
        description="Outbound HTTP proxy to reach the EHR through (`http://proxy:3128`); "
        "the environment's proxy variables are not used.",
    )
    sync_interval_seconds: float = Field(
        60.0,
        gt=0,
        description="How often the service runs the sync (unless `ADAPTER_SYNC_CRON` is set).",
    )
    sync_cron: str | None = Field(
        None,
        description="Crontab schedule of the sync in UTC (`*/5 * * * *`); replaces the interval.",
    )
    reconcile_cron: str = Field(
        "30 2 * * *",
        description="Crontab schedule (UTC) of the nightly reconciliation with the EHR.",
    )
    event_delivery: bool = Field(
        True,
        description="Records accepted wake the mapping and resources mapped wake the sync "
        "(across processes on PostgreSQL, by LISTEN/NOTIFY); the schedule remains as the safety "
        "net. `false`: mapping and the sync run on their intervals alone.",
    )
    event_gather_seconds: float = Field(
        0.05,
        ge=0,
        le=5,
        description="How long a wake waits for more of a burst before its pass starts: the wakes "
        "meanwhile make one pass.",
    )
    sync_batch_size: int = Field(
        50, gt=0, le=1000, description="Resources per Bundle (or per round of single requests)."
    )
    sync_lease_seconds: float = Field(
        120.0,
        gt=0,
        description="How long a sync run holds its lease without renewing it; a run whose "
        "process died is taken over after this.",
    )
    ehr_timeout_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest time one request to the EHR may take, from connecting to the last "
        "byte of its answer.",
    )
    ehr_max_response_bytes: int = Field(
        32 * 2**20,
        ge=65536,
        description="Largest answer read from the EHR; a larger one is cut off and counts as a "
        "failed request.",
    )
    ehr_settle_seconds: float = Field(
        300.0,
        ge=0,
        description="How long a create whose answer was lost (no answer, one cut short or "
        "unreadable, a 5xx) waits before the EHR is searched for it and it is sent again: an "
        "EHR can store a write after the adapter stopped waiting for its answer.",
    )
    ehr_item_retry_seconds: float = Field(
        30.0,
        gt=0,
        le=3600,
        description="First wait of a resource the EHR did not take for want of the EHR (no "
        "answer, 408, 429, 5xx) or forbade (403) before it is sent again; doubled at each "
        "attempt up to an hour, each wait drawn between half and all of it.",
    )
    ehr_retry_attempts: int = Field(
        4,
        ge=1,
        le=10,
        description="Attempts of one request within a run when the EHR answers 408, 429, 5xx "
        "or not at all; then the item waits for a later run.",
    )
    ehr_retry_max_wait_seconds: float = Field(
        30.0,
        gt=0,
        description="Longest wait between two attempts within a run (Retry-After included); "
        "when the EHR asks for a longer wait, the run sends nothing more and the items wait "
        "until then.",
    )
    ehr_breaker_failures: int = Field(
        5,
        ge=1,
        description="Requests in a row that fail for want of the EHR before the sync stops "
        "the run and backs off as a whole.",
    )
    ehr_breaker_seconds: float = Field(
        60.0,
        gt=0,
        description="First back-off of the whole sync when the EHR is down; it doubles on each "
        "failed run, up to an hour.",
    )
    ehr_probe_seconds: float = Field(
        10.0,
        gt=0,
        description="While the sync backs off from an EHR that was down, how often one request "
        "for its CapabilityStatement asks whether it is back (never sooner than its "
        "Retry-After); an answer ends the back-off.",
    )
    ehr_capabilities_refresh_minutes: float = Field(
        60.0, gt=0, description="How long the EHR's CapabilityStatement is cached."
    )
    ehr_patient_refresh_minutes: float = Field(
        60.0, gt=0, description="How long a patient found in the EHR by MRN is cached."
    )
    ehr_auth: Literal["none", "bearer", "smart"] = Field(
        "none",
        description="How the sync authenticates to the EHR: none, a static bearer token, or "
        "SMART Backend Services (client_credentials with a signed JWT assertion).",
    )
    ehr_bearer_token: SecretStr | None = Field(
        None, description="The static bearer token, when `ADAPTER_EHR_AUTH` is `bearer`."
    )
    ehr_client_id: str | None = Field(
        None, description="The adapter's client id at the EHR, when `ADAPTER_EHR_AUTH` is `smart`."
    )
    ehr_private_key_file: Path | None = Field(
        None,
        description="PEM file of the private key (RSA or P-384) that signs the SMART client "
        "assertion; its public key is registered with the EHR.",
    )
    ehr_key_id: str | None = Field(
        None, description="`kid` of that key in the JWKS registered with the EHR."
    )
    ehr_signing_algorithm: Literal["RS384", "ES384"] = Field(
        "RS384", description="Algorithm of the SMART client assertion."
    )
    ehr_token_url: str | None = Field(
        None,
        description="The EHR's token endpoint; when unset it is read from "
        "`{ADAPTER_EHR_BASE_URL}/.well-known/smart-configuration`.",
    )
    ehr_scopes: str = Field(
        "system/Patient.rs system/Procedure.cru system/Observation.cru "
        "system/AdverseEvent.cru system/MedicationAdministration.cru",
        description="Scopes the sync asks the EHR's token endpoint for.",
    )

    console_session_minutes: int = Field(
        480,
        gt=0,
        le=1440,
        description="How long a console sign-in lasts before the admin API key is asked again.",
    )
    alert_webhook_url: str | None = Field(
        None,
        description="URL that each alert is posted to as JSON when it fires and when it ends "
        "(retried when the receiver fails); alerts show in the console either way.",
    )
    alert_interval_seconds: float = Field(
        30.0, gt=0, description="How often the service checks the alert conditions."
    )
    alert_ehr_down_minutes: float = Field(
        15.0,
        gt=0,
        description="How long the EHR may stay unreachable (or the sync back off) before an "
        "alert fires.",
    )
    alert_safety_fact_minutes: float = Field(
        60.0,
        gt=0,
        description="How long a serious adverse event or a protocol breach may wait to reach "
        "the EHR before an alert fires.",
    )
    alert_code_pending_hours: float = Field(
        24.0,
        gt=0,
        description="How long a local code may wait for its mapping row (holding a record, or "
        "sent as text alone) before an alert fires.",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is not None:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError("must be an absolute http(s) URL, such as https://adapter.example")
            if parts.query or parts.fragment:
                raise ValueError("must have no query and no fragment")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: str) -> str:
        for item in value.split(","):
            if item.strip():
                try:
                    ip_network(item.strip(), strict=False)
                except ValueError:
                    raise ValueError(f"{item.strip()!r} is not an address or a network") from None
        return value

    def proxy_networks(self) -> list[IPv4Network | IPv6Network]:
        """The trusted proxies as networks (a single address is a network of one)."""
        return [
            ip_network(item.strip(), strict=False)
            for item in self.trusted_proxies.split(",")
            if item.strip()
        ]

    def production_gaps(self) -> list[str]:
        """What production needs that is not set (empty in development)."""
        if self.env != "production":
            return []
        gaps = []
        if self.public_url is None:
            gaps.append(
                "ADAPTER_PUBLIC_URL: required in production (the token URL, links and the "
                "`aud` of client assertions must not follow the Host header)"
            )
        return gaps

    @field_validator("sync_cron", "reconcile_cron")
    @classmethod
    def _crontab(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                CronTrigger.from_crontab(value)
            except ValueError as exc:
                raise ValueError(
                    f"not a crontab expression (minute hour day month weekday): {exc}"
                ) from None
        return value

    @model_validator(mode="after")
    def _refuse_development_secret(self) -> "Settings":
        if self.env != "development" and self.secret_key == DEVELOPMENT_SECRET:
            raise ValueError(
                "ADAPTER_SECRET_KEY: the development default is refused when "
                f"ADAPTER_ENV={self.env}; set a secret of your own"
            )
        if self.env != "development":
            _check_production_secret(self.secret_key)
        if self.ehr_auth == "bearer" and self.ehr_bearer_token is None:
            raise ValueError("ADAPTER_EHR_BEARER_TOKEN: required when ADAPTER_EHR_AUTH=bearer")
        if self.ehr_auth == "smart" and (
            self.ehr_client_id is None or self.ehr_private_key_file is None
        ):
            raise ValueError(
                "ADAPTER_EHR_CLIENT_ID and ADAPTER_EHR_PRIVATE_KEY_FILE: required when "
                "ADAPTER_EHR_AUTH=smart"
            )
        return self


SECRET_LENGTH = 32
SECRET_VARIETY = 8


def _check_production_secret(secret: str) -> None:
    """A production secret: at least SECRET_LENGTH characters, no surrounding whitespace, and
    at least SECRET_VARIETY different characters (32 spaces or one letter repeated is no
    secret)."""
    if len(secret) < SECRET_LENGTH:
        raise ValueError(
            f"ADAPTER_SECRET_KEY: must be at least {SECRET_LENGTH} characters in production"
        )
    if secret != secret.strip():
        raise ValueError("ADAPTER_SECRET_KEY: must not begin or end with whitespace")
    if len(set(secret)) < SECRET_VARIETY:
        raise ValueError(
            f"ADAPTER_SECRET_KEY: must hold at least {SECRET_VARIETY} different characters "
            "(make one with `python -c 'import secrets; print(secrets.token_urlsafe(48))'`)"
        )


@lru_cache
def get_settings() -> Settings:
    return Settings()
