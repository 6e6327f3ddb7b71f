"""`infusion-adapter clients`: register, list and revoke who may call the adapter."""

import sys
from datetime import UTC, datetime
from pathlib import Path

import click
import orjson
import requests

from adapter.cli_support import open_runtime_or_exit, settings_or_exit
from adapter.runtime import Runtime
from adapter.security.clients import ROLES, Client
from adapter.security.scopes import ScopeError
from adapter.sync.auth import SmartBackendAuth, load_private_key
from adapter.sync.errors import EhrAuthError, TemporaryEhrError

DEV_FOLDER = Path("var/dev-client")
DEV_SCOPES = "system/*.rs"


def _runtime() -> Runtime:
    return open_runtime_or_exit(settings_or_exit())


def _describe(client: Client) -> str:
    access = f"role {client.role}" if client.kind == "key" else f"scopes {client.scopes}"
    state = f"revoked {client.revoked_at:%Y-%m-%d %H:%M}Z" if client.revoked_at else "active"
    dev = ", development" if client.development else ""
    sites = f"; sites {' '.join(sorted(client.sites))}" if client.sites else ""
    return f"{client.id}  {client.kind:5}  {client.name}  ({access}{sites}; {state}{dev})"


_SITES = click.option(
    "--site",
    "sites",
    multiple=True,
    help="Bind the client to a clinic site of the group (repeat for several); unbound: every site.",
)


def _known_sites(runtime: Runtime, sites: tuple[str, ...]) -> list[str] | None:
    """The sites named, each one of the deployment's; none named: unbound."""
    if not sites:
        return None
    unknown = sorted(set(sites) - set(runtime.mapping.sites))
    if unknown:
        raise ValueError(f"--site: not a site of this deployment: {', '.join(unknown)}")
    return list(sites)


@click.group()
def clients() -> None:
    """Who may call the adapter: API keys (intake, admin) and SMART backend clients (FHIR)."""


@clients.command("add-key")
@click.argument("name")
@click.option("--role", type=click.Choice(ROLES), required=True)
@_SITES
def add_key(name: str, role: str, sites: tuple[str, ...]) -> None:
    """An API key for the intake API (role intake), the whole API (role admin) or /metrics
    alone (role metrics, for a Prometheus scraper)."""
    runtime = _runtime()
    try:
        client, key = runtime.clients.add_key_client(
            name, role, datetime.now(UTC), sites=_known_sites(runtime, sites)
        )
    except ValueError as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(2)
    click.echo(f"client {client.id} ({role})")
    click.echo(f"API key (shown once, store it now): {key}")


@clients.command("add-smart")
@click.argument("name")
@click.option("--scopes", required=True, help='Scopes it may be granted, e.g. "system/*.rs".')
@click.option("--jwks-file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--jwks-url", help="Where the client publishes its JWKS.")
@_SITES
def add_smart(
    name: str, scopes: str, jwks_file: Path | None, jwks_url: str | None, sites: tuple[str, ...]
) -> None:
    """A SMART Backend Services client of the FHIR endpoint (its public keys and scopes)."""
    try:
        jwks = orjson.loads(jwks_file.read_bytes()) if jwks_file else None
        runtime = _runtime()
        client = runtime.clients.add_smart_client(
            name,
            scopes,
            datetime.now(UTC),
            jwks,
            jwks_url,
            sites=_known_sites(runtime, sites),
        )
    except (ValueError, ScopeError, orjson.JSONDecodeError) as exc:
        click.echo(f"refused: {exc}", err=True)
        sys.exit(2)
    click.echo(f"client {client.id}: token endpoint /auth/token, scopes {client.scopes}")


@clients.command("list")
def list_clients() -> None:
    """Every registered client, active and revoked."""
    for client in _runtime().clients.listed():
        click.echo(_describe(client))


@clients.command()
@click.argument("client_id")
def revoke(client_id: str) -> None:
    """Revoke a client: its key and its tokens stop working (within seconds)."""
    if not _runtime().clients.revoke(client_id, datetime.now(UTC)):
        click.echo(f"no active client {client_id}", err=True)
        sys.exit(1)
    click.echo(f"client {client_id} revoked")


@clients.command()
@click.option("--folder", type=click.Path(file_okay=False, path_type=Path), default=DEV_FOLDER)
def dev(folder: Path) -> None:
    """Development credentials for a laptop: an admin API key and a SMART client whose private
    key is written to FOLDER. Earlier development clients are revoked. The service refuses to
    start with development clients when ADAPTER_ENV=production."""
    runtime = _runtime()
    if runtime.settings.env == "production":
        click.echo("refused: ADAPTER_ENV=production takes no development credentials", err=True)
        sys.exit(2)
    for old in runtime.clients.development_clients():
        runtime.clients.revoke(old.id, datetime.now(UTC))
    key_client, key = runtime.clients.add_key_client(
        "development admin", "admin", datetime.now(UTC), development=True
    )
    from joserfc.jwk import ECKey

    private = ECKey.generate_key("P-384", parameters={"kid": "dev-1", "alg": "ES384"})
    folder.mkdir(parents=True, exist_ok=True)
    key_file = folder / "smart-key.pem"
    key_file.write_bytes(private.as_pem(private=True))
    key_file.chmod(0o600)
    smart = runtime.clients.add_smart_client(
        "development FHIR client",
        DEV_SCOPES,
        datetime.now(UTC),
        jwks={"keys": [private.as_dict(private=False)]},
        development=True,
    )
    base = runtime.settings.public_url or f"http://{runtime.settings.host}:{runtime.settings.port}"
    click.echo(f"development admin API key (client {key_client.id}): {key}")
    click.echo(f'  curl -H "Authorization: Bearer {key}" {base}/api/v1/sync/status')
    click.echo(f"development SMART client {smart.id}, private key {key_file}")
    click.echo(
        f"  TOKEN=$(infusion-adapter clients token --client-id {smart.id} --key-file {key_file})"
    )
    click.echo(f'  curl -H "Authorization: Bearer $TOKEN" {base}/fhir/Procedure')


@clients.command()
@click.option("--client-id", required=True)
@click.option(
    "--key-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=True
)
@click.option("--algorithm", type=click.Choice(["ES384", "RS384"]), default="ES384")
@click.option("--key-id", default="dev-1", show_default=True)
@click.option("--scopes", default=DEV_SCOPES, show_default=True)
@click.option("--url", help="The adapter's base URL (default: ADAPTER_PUBLIC_URL or host:port).")
def token(
    client_id: str, key_file: Path, algorithm: str, key_id: str, scopes: str, url: str | None
) -> None:
    """Obtain an access token for the FHIR endpoint, as a SMART backend client would."""
    settings = settings_or_exit()
    base = url or settings.public_url or f"http://{settings.host}:{settings.port}"
    auth = SmartBackendAuth(
        base_url=f"{base.rstrip('/')}/fhir",
        client_id=client_id,
        key=load_private_key(key_file, algorithm),
        algorithm=algorithm,
        scopes=scopes,
        key_id=key_id,
        server="the adapter",
        token_url_setting=None,
    )
    session = requests.Session()
    session.trust_env = False
    try:
        header = auth.header(session, 10.0)
    except (EhrAuthError, TemporaryEhrError) as exc:
        click.echo(f"no token: {exc}", err=True)
        sys.exit(1)
    assert header is not None
    click.echo(header.removeprefix("Bearer "))
