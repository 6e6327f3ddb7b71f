"""The `infusion-adapter` command: serve, import, db and mappings."""

import logging
import sys
from pathlib import Path

import click
from pydantic import ValidationError
from tqdm import tqdm

from adapter.errors import MappingFileError
from adapter.importer import ImportReport, import_file
from adapter.mapping.config import load_mappings
from adapter.runtime import Runtime, open_runtime
from adapter.settings import Settings, get_settings
from adapter.store import migrate
from adapter.store.engine import make_engine


def _settings() -> Settings:
    try:
        return get_settings()
    except ValidationError as exc:
        for err in exc.errors(include_url=False, include_input=False):
            click.echo(f"settings: {err['msg']}", err=True)
        sys.exit(2)


def _runtime(settings: Settings) -> Runtime:
    try:
        return open_runtime(settings)
    except MappingFileError as exc:
        click.echo(f"refusing to start, a mapping file is broken:\n{exc}", err=True)
        sys.exit(2)


@click.group()
def main() -> None:
    """Clinic infusion records in, FHIR R4 out."""
    logging.basicConfig(
        level=_settings().log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


@main.command()
@click.option("--host", help="Address to listen on (default: ADAPTER_HOST).")
@click.option("--port", type=int, help="Port to listen on (default: ADAPTER_PORT).")
def serve(host: str | None, port: int | None) -> None:
    """Run the service."""
    import uvicorn

    from adapter.app import create_app

    settings = _settings()
    try:
        app = create_app(settings)
    except MappingFileError as exc:
        click.echo(f"refusing to start, a mapping file is broken:\n{exc}", err=True)
        sys.exit(2)
    host, port = host or settings.host, port or settings.port
    click.echo(
        f"infusion-adapter serving on http://{host}:{port}  (API docs: /docs, health: /healthz)"
    )
    uvicorn.run(app, host=host, port=port, log_level=settings.log_level.lower())


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--batch-size", type=int, help="Records per transaction (default: ADAPTER_INTAKE_BATCH_SIZE)."
)
@click.option("--quiet", is_flag=True, help="No progress bar; the summary only.")
def import_command(file: Path, batch_size: int | None, quiet: bool) -> None:
    """Import an NDJSON file of clinic records through the intake path."""
    settings = _settings()
    runtime = _runtime(settings)
    file_size = file.stat().st_size
    bar = tqdm(total=None, unit="rec", desc="importing", disable=quiet, dynamic_ncols=True)

    def progress(report: ImportReport) -> None:
        if report.bytes_read:
            bar.total = max(report.records, int(file_size * report.records / report.bytes_read))
        bar.update(report.records - bar.n)
        bar.set_postfix(accepted=report.accepted, rejected=report.counts["rejected"], refresh=False)

    report = import_file(runtime.intake, file, batch_size or settings.intake_batch_size, progress)
    bar.close()
    counts = ", ".join(
        f"{name} {report.counts[name]}"
        for name in ("created", "amended", "unchanged", "stale", "rejected")
    )
    click.echo(
        f"{report.records} records in {report.seconds:.1f} s "
        f"({report.rate:,.0f} records/s): {counts}"
    )
    if report.rejected_file:
        click.echo(f"rejected lines and their reasons: {report.rejected_file}")
    sys.exit(1 if report.counts["rejected"] else 0)


@main.group()
def db() -> None:
    """The store's schema."""


@db.command()
def upgrade() -> None:
    """Create or upgrade the store's schema to the newest migration."""
    migrate.upgrade(make_engine(_settings().database_url))
    click.echo("store schema is up to date")


@main.group()
def mappings() -> None:
    """The mapping files in ADAPTER_MAPPINGS_DIR."""


@mappings.command()
def check() -> None:
    """Validate every mapping file; name the file and key of each problem."""
    folder = _settings().mappings_dir
    try:
        load_mappings(folder)
    except MappingFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"{folder}: every mapping file is valid")


if __name__ == "__main__":
    main()
