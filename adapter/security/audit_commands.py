"""`infusion-adapter audit`: check that the audit record is whole."""

import sys

import click

from adapter.cli_support import settings_or_exit
from adapter.security.audit_chain import verify
from adapter.store import migrate
from adapter.store.engine import make_engine


@click.group()
def audit() -> None:
    """The record of access kept by the service."""


@audit.command("verify")
@click.option("--from", "first", type=click.IntRange(min=1), default=1, help="First entry id.")
@click.option("--through", type=click.IntRange(min=1), help="Last entry id (default: the end).")
def verify_command(first: int, through: int | None) -> None:
    """Walk the audit record's chain; exit 1 at the first entry changed, inserted or removed
    behind the adapter's back. Entries verify with the ADAPTER_SECRET_KEY they were written
    under (after a rotation, check the earlier ones with --through and the old secret)."""
    settings = settings_or_exit()
    engine = make_engine(settings.database_url)
    if migrate.pending(engine):
        click.echo("the store's schema is behind: run `infusion-adapter db upgrade`", err=True)
        sys.exit(2)
    found = verify(engine, settings.secret_key, first, through)
    engine.dispose()
    older = f"; {found.before_chain} older entries predate the chain" if found.before_chain else ""
    if found.problem:
        click.echo(
            f"the audit record was tampered with: {found.problem} "
            f"({found.checked} entries verified before it{older})",
            err=True,
        )
        sys.exit(1)
    last = f", through entry {found.last_id}" if found.last_id else ""
    click.echo(f"the audit record is whole: {found.checked} entries verified{last}{older}")
