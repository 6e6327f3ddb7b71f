"""`infusion-adapter sync`: run the sync, see what failed and why, replay it."""

import logging
import signal
import sys
import threading
from datetime import UTC, datetime
from typing import Any

import click
import orjson
from apscheduler.schedulers.background import BackgroundScheduler
from tqdm import tqdm

from adapter.cli_support import open_runtime_or_exit, settings_or_exit
from adapter.operations.outcomes import legend
from adapter.replicas import SharedJobs
from adapter.runtime import Runtime
from adapter.store.outbox import OutboxItem
from adapter.sync.engine import Sync, SyncReport, sync_once
from adapter.sync.reconcile import reconcile_once
from adapter.worker import EventDelivery, add_sync_jobs, sync_runners


def _sync(runtime: Runtime, site: str | None = None) -> Sync:
    """The sync of the deployment's EHR, or of a site's of a group (`--site`)."""
    if runtime.site_syncs or site is not None:
        found = runtime.site_syncs.get(site) if site is not None else None
        if found is None:
            names = ", ".join(sorted(runtime.site_syncs)) or "none"
            click.echo(
                f"--site: name a site whose ehr.yaml names its EHR's connection ({names})",
                err=True,
            )
            sys.exit(2)
        return found
    if runtime.sync is None:
        click.echo("ADAPTER_EHR_BASE_URL is not set: there is no EHR to sync to", err=True)
        sys.exit(2)
    return runtime.sync


SITE = click.option("--site", help="The clinic site of a group whose EHR to sync with.")


EXIT_REFUSED = 1
"""The run left dead letters (the EHR refused resources, or reconciliation found copies changed
or deleted there, or duplicates it could not remove): a person must look."""
EXIT_CONFIGURATION = 2
"""The EHR or the adapter's settings need a person: refused credentials, a 403, a redirect, a
FHIR version the site does not accept."""
EXIT_EHR = 3
"""The EHR was unavailable: the run delivered nothing because of it, or stopped for it (down,
throttling, failing every request). The sync backs off and tries again by itself."""
EXIT_FAILED = 4
"""The run failed for another reason (the store, a lost lease): see the service log."""
NEEDS_A_PERSON = ("dead", "duplicated", "edited_in_ehr", "deleted_in_ehr")


def exit_code(report: SyncReport) -> int:
    """What `sync --once` and `sync reconcile` exit with: 0 when the run completed and left
    nothing for a person, else the most pressing of the codes above."""
    if report.status == "failed" and report.cause == "configuration":
        return EXIT_CONFIGURATION
    if report.status == "failed" and report.cause == "internal":
        return EXIT_FAILED
    if any(report.counts[kind] for kind in NEEDS_A_PERSON):
        return EXIT_REFUSED
    if report.status == "failed":
        return EXIT_EHR
    return 0


def _printed_here() -> None:
    """A run started from the command line is reported by the command, not by the run's log
    line as well (its errors still show)."""
    logging.getLogger("adapter.sync.engine").setLevel(logging.ERROR)


def _report(report: SyncReport) -> None:
    counts = ", ".join(f"{name} {count}" for name, count in sorted(report.counts.items()))
    if report.status == "busy":
        click.echo("another sync run holds the lease; nothing was done")
    elif report.status == "deferred":
        click.echo(f"the sync backs off from the EHR until {report.resume_at:%Y-%m-%d %H:%M:%SZ}")
    elif report.status == "failed":
        # Why it failed is what the user needs; what it did before, if anything, follows.
        done = f" ({counts})" if counts else ""
        click.echo(f"run {report.run_id} failed: {report.error}{done}")
    else:
        click.echo(f"run {report.run_id} {report.status}: {counts or 'nothing to do'}")


@click.group(invoke_without_command=True)
@click.option(
    "--once",
    is_flag=True,
    help="One run now, with a progress bar, then exit: 0 when it completed and left nothing for "
    "a person, 1 when the EHR refused resources (dead letters), 2 when the EHR or the settings "
    "need a person (credentials, 403, a redirect, the FHIR version), 3 when the EHR was "
    "unavailable and nothing was delivered, 4 when the run failed for another reason.",
)
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option(
    "--site",
    help="With --once: the clinic site of a group whose EHR to sync with (each site's sync "
    "runs on its own).",
)
@click.pass_context
def sync(context: click.Context, once: bool, quiet: bool, site: str | None) -> None:
    """Push new and changed resources to the EHR (ADAPTER_EHR_BASE_URL, or each site's of a
    group). Without a subcommand: run the sync on its schedule in the foreground until
    stopped, or once."""
    if context.invoked_subcommand is not None:
        return
    runtime = open_runtime_or_exit(settings_or_exit())
    if once:
        engine = _sync(runtime, site)
        _printed_here()
        due = engine.outbox.count_due(datetime.now(UTC), waiting=True)
        bar = tqdm(total=due, unit="res", desc="syncing", disable=quiet, dynamic_ncols=True)
        report = sync_once(engine, trigger="cli", progress=bar.update)
        bar.close()
        _report(report)
        sys.exit(exit_code(report))
    _run_scheduled(runtime)


def _run_scheduled(runtime: Runtime) -> None:
    """The sync and the nightly reconciliation on their schedules, in this process alone; on
    PostgreSQL the sync is also woken when any process queues resources."""
    stop = threading.Event()
    scheduler = BackgroundScheduler(timezone=UTC)
    if not runtime.syncs():
        _sync(runtime)  # says why there is nothing to sync, and exits
    runners = sync_runners(runtime)
    for runner in runners:
        add_sync_jobs(scheduler, runner)
    # Beside the service's processes: each tick's sync runs in one of them.
    SharedJobs(runtime.store.engine).share(scheduler)
    # Woken by resources queued in other processes: PostgreSQL's notices.
    events = (
        EventDelivery(runtime, runners, mapping=False) if runtime.settings.event_delivery else None
    )
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    scheduler.start()
    if events is not None:
        events.start()
    click.echo("syncing on schedule; stop with Ctrl-C")
    stop.wait()
    if events is not None:
        events.stop()
    scheduler.shutdown(wait=True)


def _item_line(item: OutboxItem) -> str:
    detail: dict[str, Any] = item.detail or {}
    status = f" {detail['status']}" if detail.get("status") else ""
    return (
        f"{item.resource_type}/{item.resource_id}  v{item.version_id}  {item.state}{status}  "
        f"attempts {item.attempts}  {item.updated_at:%Y-%m-%d %H:%M:%SZ}\n"
        f"    {detail.get('reason', '')}"
    )


def _list(states: tuple[str, ...], limit: int, as_json: bool) -> None:
    runtime = open_runtime_or_exit(settings_or_exit())
    items = runtime.outbox.listed(states, limit)
    if as_json:
        click.echo(orjson.dumps([item_json(item) for item in items]).decode())
        return
    for item in items:
        click.echo(_item_line(item))
    click.echo(f"{len(items)} shown" + (f" (limit {limit})" if len(items) == limit else ""))


def item_json(item: OutboxItem) -> dict[str, Any]:
    return {
        "resource_type": item.resource_type,
        "id": item.resource_id,
        "version": item.version_id,
        "state": item.state,
        "attempts": item.attempts,
        "next_attempt_at": item.next_attempt_at.isoformat(),
        "updated_at": item.updated_at.isoformat(),
        "ehr_id": item.ehr_id,
        **(item.detail or {}),
    }


LIMIT = click.option("--limit", type=int, default=100, show_default=True)
AS_JSON = click.option("--json", "as_json", is_flag=True, help="One JSON array.")


@sync.command("dead-letters")
@LIMIT
@AS_JSON
def dead_letters(limit: int, as_json: bool) -> None:
    """Resources the EHR refused, with its OperationOutcome: fix the cause, then replay."""
    _list(("dead",), limit, as_json)


@sync.command()
@LIMIT
@AS_JSON
def waiting(limit: int, as_json: bool) -> None:
    """Resources held back: their patient is not settled in the EHR, or what they reference
    is not delivered yet. They are tried again on every run."""
    _list(("waiting",), limit, as_json)


@sync.command()
@click.argument("ids", nargs=-1)
@click.option("--all", "everything", is_flag=True, help="Every dead letter (and with --waiting).")
@click.option("--waiting", "with_waiting", is_flag=True, help="Waiting items too.")
def replay(ids: tuple[str, ...], everything: bool, with_waiting: bool) -> None:
    """Queue dead letters again (by resource id, or --all) for the next run."""
    if not ids and not everything:
        click.echo("name resource ids, or --all", err=True)
        sys.exit(2)
    runtime = open_runtime_or_exit(settings_or_exit())
    states = ("dead", "waiting") if with_waiting else ("dead",)
    count = runtime.outbox.requeue(datetime.now(UTC), states, None if everything else list(ids))
    click.echo(f"{count} queued for the next run")
    if ids and count < len(ids):
        click.echo("some ids named are not dead letters (or waiting, with --waiting)", err=True)


@sync.command()
@click.option("--limit", type=int, default=20, show_default=True)
def runs(limit: int) -> None:
    """The latest sync and reconciliation runs, each with its last error, and what the counts
    shown mean."""
    runtime = open_runtime_or_exit(settings_or_exit())
    found = runtime.sync_runs.recent(limit)
    for run in found:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(run.counts.items()))
        ended = f"{run.ended_at:%H:%M:%SZ}" if run.ended_at else "running"
        site = f"  site {run.site}" if run.site else ""
        click.echo(
            f"{run.id}  {run.trigger}{site}  {run.started_at:%Y-%m-%d %H:%M:%SZ} - {ended}  "
            f"{run.status}  {counts}" + (f"\n    {run.problem}" if run.problem else "")
        )
    for name, meaning in legend({name for run in found for name in run.counts}):
        click.echo(f"{name}: {meaning}")


@sync.command()
@SITE
def reconcile(site: str | None) -> None:
    """Compare what the EHR holds for the adapter's identifiers with what was delivered, and
    queue again what is missing or different there; changes made at the EHR are kept or undone
    as mappings/ehr.yaml says, and the adapter's own extra copies removed. Exits as `sync
    --once` does (1: something there needs a person)."""
    runtime = open_runtime_or_exit(settings_or_exit())
    _printed_here()
    report = reconcile_once(_sync(runtime, site))
    _report(report)
    sys.exit(exit_code(report))
