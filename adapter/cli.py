"""The `infusion-adapter` command: serve, import, db, mappings, sync, clients and audit."""

import gc
import sys
from pathlib import Path

import click
import orjson
from tqdm import tqdm

from adapter.cli_support import open_runtime_or_exit as _runtime
from adapter.cli_support import settings_or_exit as _settings
from adapter.errors import MappingFileError
from adapter.importer import ImportReport, import_file
from adapter.intake.body import ndjson_lines
from adapter.logs import configure_logging
from adapter.mapping.config import json_schemas
from adapter.mapping.mapper import Mapper
from adapter.mapping.preview import PreviewEntry
from adapter.mapping.preview import preview as preview_file
from adapter.mapping.service import MappingReport
from adapter.mapping.sites import load_group, site_mappers
from adapter.runtime import Runtime, intake_context
from adapter.security.audit_commands import audit
from adapter.security.commands import clients
from adapter.store import migrate
from adapter.store.engine import make_engine
from adapter.sync.commands import sync
from adapter.worker import LARGE_LOAD


@click.group()
def main() -> None:
    """Clinic infusion records in, FHIR R4 out."""
    configure_logging(_settings().log_level)


@main.command()
@click.option("--host", help="Address to listen on (default: ADAPTER_HOST).")
@click.option("--port", type=int, help="Port to listen on (default: ADAPTER_PORT).")
def serve(host: str | None, port: int | None) -> None:
    """Run the service."""
    import uvicorn

    from adapter.app import create_app
    from adapter.serving import server_config

    settings = _settings()
    try:
        app = create_app(settings)
    except MappingFileError as exc:
        click.echo(f"refusing to start, a mapping file is broken:\n{exc}", err=True)
        sys.exit(2)
    except RuntimeError as exc:
        click.echo(f"refusing to start: {exc}", err=True)
        sys.exit(2)
    host, port = host or settings.host, port or settings.port
    click.echo(
        f"infusion-adapter serving on http://{host}:{port}  (console: /console, FHIR: /fhir, "
        "health: /healthz, metrics: /metrics, OpenAPI: /openapi.json with an API key)"
    )
    uvicorn.Server(server_config(app, settings, host, port)).run()


@main.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--batch-size", type=int, help="Records per transaction (default: ADAPTER_INTAKE_BATCH_SIZE)."
)
@click.option("--quiet", is_flag=True, help="No progress bar; the summary only.")
@click.option("--no-map", is_flag=True, help="Store the records only; the service maps them later.")
@click.option(
    "--site",
    help="The clinic site of a group the file comes from: records naming no site are its, "
    "records naming another are refused.",
)
def import_command(
    file: Path, batch_size: int | None, quiet: bool, no_map: bool, site: str | None
) -> None:
    """Import an NDJSON file of clinic records through the intake path."""
    settings = _settings()
    runtime = _runtime(settings)
    if site is not None and site not in runtime.mapping.sites:
        click.echo(f"--site: {site!r} is not a site of this deployment", err=True)
        sys.exit(2)
    file_size = file.stat().st_size
    bar = tqdm(total=None, unit="rec", desc="importing", disable=quiet, dynamic_ncols=True)

    def progress(report: ImportReport) -> None:
        if report.bytes_read:
            bar.total = max(report.records, int(file_size * report.records / report.bytes_read))
        bar.update(report.records - bar.n)
        bar.set_postfix(accepted=report.accepted, rejected=report.counts["rejected"], refresh=False)

    report = import_file(
        runtime.intake,
        file,
        batch_size or settings.intake_batch_size,
        progress,
        longest_line=settings.max_body_bytes,
        site=site,
    )
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
    if not no_map:
        _map_pending(runtime, quiet)
    sys.exit(1 if report.counts["rejected"] else 0)


def _map_pending(runtime: Runtime, quiet: bool) -> None:
    bar = tqdm(total=None, unit="rec", desc="mapping", disable=quiet, dynamic_ncols=True)

    def progress(report: MappingReport) -> None:
        bar.update(report.records - bar.n)
        bar.set_postfix(waiting=report.waiting, failed=report.failed, refresh=False)

    report = runtime.mapping.run(on_batch=progress)
    bar.close()
    if report.resources.created >= LARGE_LOAD:
        runtime.resources.refresh_statistics()
    resources = report.resources
    click.echo(
        f"mapped {report.mapped} records ({report.waiting} waiting for a mapping, "
        f"{report.failed} failed): resources {resources.created} created, "
        f"{resources.updated} updated, {resources.unchanged} unchanged, "
        f"{resources.withdrawn} withdrawn"
    )
    if report.waiting or report.failed:
        click.echo("see `infusion-adapter mappings pending` for what they wait for")


@main.group()
def db() -> None:
    """The store's schema."""


@db.command()
def upgrade() -> None:
    """Create or upgrade the store's schema to the newest migration."""
    engine = make_engine(_settings().database_url)
    if migrate.upgrade(engine) is None:
        click.echo(f"store schema is up to date ({migrate.current(engine)})")


@main.group()
def mappings() -> None:
    """The mapping files in ADAPTER_MAPPINGS_DIR."""


@mappings.command()
def check() -> None:
    """Validate every mapping file; name the file and key of each problem."""
    folder = _settings().mappings_dir
    try:
        load_group(folder)
    except MappingFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    click.echo(f"{folder}: every mapping file is valid")


@mappings.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "output",
    type=click.Choice(["text", "ndjson"]),
    default="text",
    show_default=True,
    help="ndjson: one JSON object per line of the file, then one per session's protocol checks.",
)
@click.option(
    "--site",
    help="In a clinic group, the site the file comes from: records naming no site are its, "
    "records naming another are refused.",
)
def preview(file: Path, output: str, site: str | None) -> None:
    """Print the FHIR resources the records in FILE would become; store nothing.

    Each line says whether it is the current revision of its record (a later revision in the
    file makes it stale), whether that revision withdraws the record, and which mapping rows it
    used or lacks; each session then shows the protocol breaches its records give. In a clinic
    group each record is mapped with its site's overlays."""
    settings = _settings()
    try:
        shared, sites = load_group(settings.mappings_dir)
    except MappingFileError as exc:
        click.echo(str(exc), err=True)
        sys.exit(2)
    if site is not None and site not in sites:
        click.echo(f"--site: {site!r} is not a site of this deployment", err=True)
        sys.exit(2)
    mapper = Mapper(shared)
    context = intake_context(shared, sites, settings.default_site)
    bound = frozenset({site}) if site else None
    with file.open("rb") as stream:
        entries = preview_file(mapper, ndjson_lines(stream), context, site_mappers(sites), bound)
    for entry in entries:
        if output == "ndjson":
            click.echo(orjson.dumps(entry.as_json()).decode())
        else:
            _print_preview(entry)


def _print_preview(entry: PreviewEntry) -> None:
    where = f"line {entry.line}" if entry.line is not None else entry.state
    what = (
        f"{entry.record_type} {entry.id} revision {entry.revision}"
        if entry.revision is not None
        else f"{entry.record_type} {entry.id}"
    )
    if entry.state == "rejected":
        click.echo(f"# {where}: rejected on intake: {'; '.join(entry.reasons)}")
        return
    if entry.state in ("stale", "repeat"):
        why = "; ".join(entry.reasons) or "the same revision appears earlier in the file"
        click.echo(f"# {where}: {what}: {entry.state.upper()}, not applied ({why})")
        return
    built = entry.built
    marker = {
        "current": "current",
        "withdrawn": "current, WITHDRAWN (entered in error)",
        "protocol": "the session's protocol breaches",
        "encounter": "the session's visit",
        "series": "the series' care plan",
        "patient": "the patient",
    }.get(entry.state, entry.state)
    used = ", ".join(built.used) if built and built.used else "no table rows"
    click.echo(f"# {where}: {what} ({marker}), used {used}")
    for reason in entry.reasons:
        click.echo(f"#   {reason}")
    if built is None:
        return
    for missing in built.missing:
        click.echo(
            f"#   waiting for a mapping: {missing.table} has no row {missing.code!r} "
            f"({missing.field})"
        )
    for missing in built.uncoded:
        click.echo(
            f"#   sent as text for now: {missing.table} has no row {missing.code!r} "
            f"({missing.field})"
        )
    if built.waiting_for:
        click.echo(f"#   waiting for {built.waiting_for}")
    for resource in built.resources:
        click.echo(orjson.dumps(resource, option=orjson.OPT_INDENT_2).decode())


@mappings.command()
def pending() -> None:
    """List the records held: waiting for a mapping row or their session, or failed to map."""
    runtime = _runtime(_settings())
    held = runtime.mapping.queue.held()
    if not held:
        click.echo("no record waits for a mapping")
        return
    for item in held:
        if "missing" in item.detail:
            why = "; ".join(
                f"{m['table']} has no row {m['code']!r} ({m['field']})"
                for m in item.detail["missing"]
            )
        elif "uncoded" in item.detail:
            why = "delivered with text alone until a row is added: " + "; ".join(
                f"{m['table']} has no row {m['code']!r} ({m['field']})"
                for m in item.detail["uncoded"]
            )
        elif "waiting_for" in item.detail:
            why = f"waiting for {item.detail['waiting_for']}"
        else:
            why = "failed: " + "; ".join(item.detail.get("problems", []))
        click.echo(f"{item.record_type} {item.source_id} (revision {item.revision}): {why}")


@mappings.command()
def reload() -> None:
    """Load the mapping files again and map every record they now cover."""
    runtime = _runtime(_settings())
    try:
        changed = runtime.reload_mappings()
    except MappingFileError as exc:
        click.echo(f"the mapping files are broken; nothing changed:\n{exc}", err=True)
        sys.exit(2)
    previous = runtime.mapping.previous_version
    if changed or previous:
        click.echo(f"mapping version {runtime.mapping.version} (changed from {previous or 'none'})")
    else:
        click.echo(f"mapping version {runtime.mapping.version} (unchanged)")
    _map_pending(runtime, quiet=True)


@mappings.command()
@click.option(
    "--output",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder (default: mappings/schema).",
)
def schema(output: Path | None) -> None:
    """Write a JSON Schema of each mapping file, for editors."""
    folder = output or _settings().mappings_dir / "schema"
    for name, body in json_schemas().items():
        target = folder / name.replace(".yaml", ".schema.json")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(
            orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode() + "\n"
        )
    click.echo(f"JSON Schemas written to {folder}")


main.add_command(sync)
main.add_command(clients)
main.add_command(audit)

YOUNG_COLLECTION = 20_000
"""Allocations between collections of the youngest generation (Python's default is 700)."""


def entry() -> None:
    """The `infusion-adapter` command as its own process. What the imports made lives as long as
    the process, so the cyclic collector stops scanning it (`gc.freeze`); and the youngest
    generation is collected every YOUNG_COLLECTION allocations, not every 700. A sync run of
    30,000 resources spent 0.39-0.45 s of its ~4.6 s of CPU in collections that found next to
    nothing (reference counting frees what it makes); 0.12 s since, all during the imports."""
    gc.freeze()
    gc.set_threshold(YOUNG_COLLECTION, *gc.get_threshold()[1:])
    main()


if __name__ == "__main__":
    entry()
