"""The sites of a clinic group: each folder under mappings/sites/ overlays the shared files."""

import hashlib
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, model_validator

from adapter.errors import MappingFileError
from adapter.fhir.validation import ResourceValidator
from adapter.intake.records import SITE_ID_PATTERN
from adapter.mapping.config import (
    EHR_FILE,
    FILES,
    CodeTable,
    EhrRules,
    Limits,
    M,
    MappingModel,
    Mappings,
    Site,
    _key_path,
    load_mappings,
    read_yaml,
)
from adapter.mapping.mapper import Mapper
from adapter.settings import Settings

SITES_DIR = "sites"
SITE_ID_RULE = "1 to 32 lowercase letters, digits or '-'"
_SITE_ID = re.compile(SITE_ID_PATTERN)
SITE_FILES = ("site.yaml", "limits.yaml", EHR_FILE)
"""The files a site may overlay besides its code tables (`codes/*.yaml`)."""


def is_site_id(value: str) -> bool:
    return bool(_SITE_ID.fullmatch(value))


class EhrConnection(MappingModel):
    """How the sync reaches a site's EHR. Secrets are named by environment variable, never
    written here."""

    base_url: str = Field(description="FHIR R4 base URL of the site's EHR.")
    auth: Literal["none", "bearer", "smart"] = Field(
        "none",
        description="none, a static bearer token, or SMART Backend Services (client_credentials "
        "with a signed JWT assertion).",
    )
    bearer_token_env: str | None = Field(
        None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of the environment variable holding the bearer token (auth: bearer).",
    )
    client_id: str | None = Field(None, description="The adapter's client id at the EHR (smart).")
    private_key_file: Path | None = Field(
        None, description="PEM file of the key that signs the SMART client assertion (smart)."
    )
    key_id: str | None = Field(None, description="`kid` of that key in the EHR's JWKS.")
    signing_algorithm: Literal["RS384", "ES384"] = "RS384"
    token_url: str | None = Field(
        None, description="The EHR's token endpoint; unset: read from its smart-configuration."
    )
    scopes: str | None = Field(None, description="Scopes asked for; unset: the shared setting.")
    proxy_url: str | None = Field(None, description="Outbound HTTP proxy to reach the EHR.")

    @model_validator(mode="after")
    def _credentials_named(self) -> "EhrConnection":
        if self.auth == "bearer" and not self.bearer_token_env:
            raise ValueError("bearer_token_env: required with auth: bearer")
        if self.auth == "smart" and not (self.client_id and self.private_key_file):
            raise ValueError("client_id and private_key_file: required with auth: smart")
        return self


class SiteEhr(EhrRules):
    """mappings/sites/<site>/ehr.yaml, merged over mappings/ehr.yaml: the delivery rules of the
    site's EHR (its profile) and how to reach it."""

    connection: EhrConnection | None = Field(
        None, description="The site's EHR; without it the site's resources are not synced."
    )


@dataclass(frozen=True)
class SiteConfig:
    """One site of the group: its mappings (shared files with its overlays) and its EHR."""

    id: str
    mappings: Mappings
    ehr: SiteEhr


def merged(base: Any, overlay: Any) -> Any:
    """`overlay` deep-merged over `base`: mappings merge key by key, anything else replaces."""
    if isinstance(base, dict) and isinstance(overlay, dict):
        result = dict(base)
        for key, value in overlay.items():
            result[key] = merged(base[key], value) if key in base else value
        return result
    return overlay


def _read(path: Path) -> Any:
    data = read_yaml(path)
    if data is not None and not isinstance(data, dict):
        raise MappingFileError(f"{path}: (top level): Input should be a mapping")
    return data or {}


def _validated(path: Path, data: Any, model: type[M]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        lines = [f"{path}: {_key_path(err['loc'])}: {err['msg']}" for err in exc.errors()]
        raise MappingFileError("\n".join(lines)) from None


def _overlaid_table(base: CodeTable, path: Path) -> CodeTable:
    """The shared table with the site's rows: a row of the same local code replaces the
    shared one, the others are added."""
    data = _read(path)
    if set(data) - {"rows"}:
        raise MappingFileError(
            f"{path}: {sorted(set(data) - {'rows'})[0]}: Extra inputs are not permitted"
        )
    own = _validated(path, {"rows": data.get("rows") or []}, CodeTable)
    replaced = {row.local.upper() for row in own.rows}
    rows = [row for row in base.rows if row.local.upper() not in replaced] + list(own.rows)
    return CodeTable(rows=rows)


def site_ids(folder: Path) -> list[str]:
    """The sites configured under `folder`/sites, by folder name; none: a single-site
    deployment."""
    root = folder / SITES_DIR
    if not root.is_dir():
        return []
    found = []
    for entry in sorted(root.iterdir()):
        if not entry.is_dir():
            continue
        if not is_site_id(entry.name):
            raise MappingFileError(f"{entry}: a site id is {SITE_ID_RULE}")
        found.append(entry.name)
    return found


def _site_digest(folder: Path) -> bytes:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.yaml")):
        if path.name == EHR_FILE and path.parent == folder:
            continue  # delivery rules: outside the mapping version, as the shared ehr.yaml
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.digest()


def _overlaid_file(
    folder: Path, site_id: str, name: str, model: type[M], shared: M, problems: list[str]
) -> M:
    """A shared file with the site's own merged over it, key by key (the shared one as it is
    when the site has none); a problem is added to `problems`, and the shared one kept."""
    own = folder / SITES_DIR / site_id / name
    if not own.is_file():
        return shared
    try:
        return _validated(own, merged(_read(folder / name), _read(own)), model)
    except MappingFileError as exc:
        problems.append(str(exc))
        return shared


def load_site(folder: Path, site_id: str, shared: Mappings, version: str) -> SiteConfig:
    """One site: its site.yaml, limits.yaml, code tables and ehr.yaml over the shared ones."""
    site_dir = folder / SITES_DIR / site_id
    problems: list[str] = [
        f"{entry}: not a file a site overlays (site.yaml, limits.yaml, ehr.yaml, "
        "codes/<table>.yaml)"
        for entry in sorted(site_dir.iterdir())
        if entry.name not in (*SITE_FILES, "codes") and not entry.name.startswith(".")
    ]
    site = _overlaid_file(folder, site_id, "site.yaml", Site, shared.site, problems)
    limits = _overlaid_file(folder, site_id, "limits.yaml", Limits, shared.limits, problems)
    tables = {}
    codes = site_dir / "codes"
    if codes.is_dir():
        for path in sorted(codes.iterdir()):
            name = path.stem
            if f"codes/{path.name}" not in FILES:
                problems.append(f"{path}: not one of the shared code tables")
                continue
            try:
                tables[name] = _overlaid_table(getattr(shared.codes, name), path)
            except MappingFileError as exc:
                problems.append(str(exc))
    ehr_data = _read(folder / EHR_FILE) if (folder / EHR_FILE).is_file() else {}
    ehr_path = site_dir / EHR_FILE
    ehr = SiteEhr()
    try:
        if ehr_path.is_file():
            ehr_data = merged(ehr_data, _read(ehr_path))
        ehr = _validated(ehr_path, ehr_data, SiteEhr)
    except MappingFileError as exc:
        problems.append(str(exc))
    if problems:
        raise MappingFileError("\n".join(problems))
    mappings = replace(
        shared,
        site=site,
        limits=limits,
        codes=replace(shared.codes, **tables),
        version=version,
    )
    return SiteConfig(site_id, mappings, ehr)


def load_group(folder: Path) -> tuple[Mappings, dict[str, SiteConfig]]:
    """The shared mappings and every site's; with sites, one version covers them all (a
    single-site deployment keeps the version of its files alone)."""
    shared = load_mappings(folder)
    ids = site_ids(folder)
    if not ids:
        return shared, {}
    digest = hashlib.sha256(shared.version.encode())
    for site_id in ids:
        digest.update(b"\0" + site_id.encode() + b"\0" + _site_digest(folder / SITES_DIR / site_id))
    version = digest.hexdigest()[:12]
    shared = replace(shared, version=version)
    sites: dict[str, SiteConfig] = {}
    problems: list[str] = []
    for site_id in ids:
        try:
            sites[site_id] = load_site(folder, site_id, shared, version)
        except MappingFileError as exc:
            problems.append(str(exc))
    if problems:
        raise MappingFileError("\n".join(problems))
    return shared, sites


def site_mappers(
    sites: dict[str, SiteConfig], validator: ResourceValidator | None = None
) -> dict[str, Mapper]:
    """A mapper per site of the group, each with the shared files and its site's overlays."""
    return {
        site_id: Mapper(config.mappings, validator, site_id) for site_id, config in sites.items()
    }


def load_site_ehr(folder: Path, site_id: str) -> SiteEhr:
    """A site's ehr.yaml over the shared one, read again for each sync run as the shared
    file is."""
    data = _read(folder / EHR_FILE) if (folder / EHR_FILE).is_file() else {}
    path = folder / SITES_DIR / site_id / EHR_FILE
    if path.is_file():
        data = merged(data, _read(path))
    return _validated(path, data, SiteEhr)


def connection_secret(site_id: str, connection: EhrConnection) -> SecretStr | None:
    """The bearer token of a site's EHR, read from the environment variable it names."""
    if connection.bearer_token_env is None:
        return None
    value = os.environ.get(connection.bearer_token_env)
    if not value:
        raise MappingFileError(
            f"{SITES_DIR}/{site_id}/{EHR_FILE}: connection.bearer_token_env: the environment "
            f"variable {connection.bearer_token_env} is not set"
        )
    return SecretStr(value)


def site_settings(settings: Settings, site_id: str, connection: EhrConnection) -> Settings:
    """The settings a site's sync runs with: the shared ones, with its EHR's connection."""
    update: dict[str, Any] = {
        "ehr_base_url": connection.base_url,
        "ehr_auth": connection.auth,
        "ehr_bearer_token": connection_secret(site_id, connection),
        "ehr_client_id": connection.client_id,
        "ehr_private_key_file": connection.private_key_file,
        "ehr_key_id": connection.key_id,
        "ehr_signing_algorithm": connection.signing_algorithm,
        "ehr_token_url": connection.token_url,
    }
    if connection.scopes is not None:
        update["ehr_scopes"] = connection.scopes
    if connection.proxy_url is not None:
        update["ehr_proxy_url"] = connection.proxy_url
    return settings.model_copy(update=update)


def _optional(schema: Any) -> Any:
    """A schema with nothing required: an overlay names only what it changes."""
    if isinstance(schema, dict):
        return {k: _optional(v) for k, v in schema.items() if k != "required"}
    if isinstance(schema, list):
        return [_optional(item) for item in schema]
    return schema


def site_json_schemas() -> dict[str, dict[str, Any]]:
    """Schemas of a site's overlay files (mappings/schema/sites/)."""
    return {
        "sites/site.yaml": _optional(Site.model_json_schema()),
        "sites/limits.yaml": _optional(Limits.model_json_schema()),
        "sites/ehr.yaml": _optional(SiteEhr.model_json_schema()),
    }
