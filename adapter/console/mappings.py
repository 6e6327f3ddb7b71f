"""Mappings: the local codes without a row, the records they hold (or that went out with the code
as text alone), a form that proposes the row and shows the FHIR those records would become, and
saving it into the mapping file (comments and order kept), checked, reloaded and audited."""

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse
from pydantic import TypeAdapter

from adapter.console.access import checked_form, console_router
from adapter.console.today import zone_of
from adapter.console.web import one, page
from adapter.errors import MappingFileError
from adapter.fhir.validation import InvalidResource
from adapter.intake.records import AnyRecord, ClinicRecord, InfusionSession
from adapter.mapping.config import CodeTable, Mappings
from adapter.mapping.mapper import Mapper, SourceRecord
from adapter.mapping.rows import TABLES, ProposedRow, add_row, trial
from adapter.mapping.sites import SiteConfig, site_mappers
from adapter.runtime import Runtime
from adapter.store.operations import HeldCode, OperationsReadings
from adapter.worker import SYNC_JOB

router = console_router()

_RECORD = TypeAdapter[AnyRecord](ClinicRecord)
PREVIEWED = 5
"""Held records whose FHIR is shown in a preview."""


@dataclass
class Proposal:
    """A held code with the row proposed for it, and what the row would make."""

    held: HeldCode
    row: ProposedRow
    systems: list[str]
    preview: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _systems(table: CodeTable) -> list[str]:
    """The code systems a table's rows use, the most used first."""
    used = Counter(coding.system for row in table.rows for coding in row.codings)
    return [system for system, _ in used.most_common()]


def propose(mappings: Mappings, held: HeldCode) -> Proposal:
    systems = _systems(getattr(mappings.codes, held.table))
    text = held.code.replace("_", " ").strip().capitalize()
    row = ProposedRow(held.table, held.code, text, systems[0] if systems else "")
    return Proposal(held, row, systems)


def _row(fields: dict[str, list[str]]) -> ProposedRow:
    table = one(fields, "table", 32)
    return ProposedRow(
        table=table if table in TABLES else "",
        local=one(fields, "local", 64),
        text=one(fields, "text", 256),
        system=one(fields, "system", 256),
        code=one(fields, "code", 64),
        display=one(fields, "display", 256),
        source=one(fields, "source", 1000),
    )


def concepts(value: Any, row: ProposedRow, path: str) -> list[str]:
    """The paths of the concepts in a resource that the row makes (its coding, or its text)."""
    found: list[str] = []
    if isinstance(value, dict):
        listed = value.get("coding")
        codings: list[Any] = listed if isinstance(listed, list) else []
        if any(c.get("code") == row.code and c.get("system") == row.system for c in codings) or (
            not codings and not row.code and value.get("text") == row.text
        ):
            found.append(path)
        for key, inner in value.items():
            found += concepts(inner, row, f"{path}.{key}")
    elif isinstance(value, list):
        for inner in value:
            found += concepts(inner, row, path)
    return found


def preview(
    runtime: Runtime,
    mappings: Mappings,
    held: HeldCode,
    row: ProposedRow,
    sites: dict[str, SiteConfig] | None = None,
) -> list[dict[str, Any]]:
    """What the first held records of the code would become with these mappings (in a clinic
    group, a record's site's: the shared files with its overlays), and where in them the row's
    concept goes."""
    validator = runtime.mapping.mapper.validator
    mapper = Mapper(mappings, validator)
    by_site = site_mappers(sites or {}, validator)
    shown: list[dict[str, Any]] = []
    for record_type, source_id in held.records[:PREVIEWED]:
        stored = runtime.store.get(record_type, source_id)
        if stored is None:
            continue
        record = _RECORD.validate_json(stored.parsed)
        if record.clinic_site is not None and record.clinic_site not in by_site:
            continue  # its site's folder was removed: it waits for the site to come back
        session = None
        if stored.session_id:
            found = runtime.store.get("infusion_session", stored.session_id)
            parsed = _RECORD.validate_json(found.parsed) if found else None
            session = parsed if isinstance(parsed, InfusionSession) else None
        chosen = by_site[record.clinic_site] if record.clinic_site else mapper
        try:
            built = chosen.map(SourceRecord(record, stored.first_received_at, session))
        except InvalidResource as exc:
            shown.append(
                {
                    "record": f"{record_type}/{source_id}",
                    "site": record.clinic_site,
                    "problems": exc.problems,
                }
            )
            continue
        still = [m.as_dict() for m in built.missing + built.uncoded]
        shown.append(
            {
                "record": f"{record_type}/{source_id}",
                "site": record.clinic_site,
                "still": still,
                "where": [p for r in built.resources for p in concepts(r, row, r["resourceType"])],
                "resources": [
                    orjson.dumps(r, option=orjson.OPT_INDENT_2).decode() for r in built.resources
                ],
            }
        )
    return shown


def _proposals(runtime: Runtime) -> list[Proposal]:
    mappings = runtime.mapping.mapper.mappings
    held = OperationsReadings(runtime.store.engine).held_codes()
    return [propose(mappings, code) for code in held]


def _page(request: Request, proposals: list[Proposal], **context: Any) -> HTMLResponse:
    runtime: Runtime = request.app.state.runtime
    return page(
        request,
        "mappings.html",
        section="mappings",
        zone=zone_of(runtime),
        proposals=proposals,
        version=runtime.mapping.version,
        **context,
    )


@router.get("/mappings")
async def console_mappings(request: Request) -> HTMLResponse:
    proposals = await run_in_threadpool(_proposals, request.app.state.runtime)
    return _page(request, proposals)


def _with_form(runtime: Runtime, row: ProposedRow) -> list[Proposal]:
    """The page's proposals, the one of `row`'s code carrying the form as it was sent and the
    preview of its records (or why there is none)."""
    proposals = _proposals(runtime)
    for proposal in proposals:
        if proposal.held.table == row.table and proposal.held.code.upper() == row.local.upper():
            proposal.row = row
            proposal.problems = row.problems()
            if not proposal.problems:
                try:
                    with trial(runtime.settings.mappings_dir, row) as (mappings, sites):
                        proposal.preview = preview(runtime, mappings, proposal.held, row, sites)
                except MappingFileError as exc:
                    proposal.problems = str(exc).splitlines()
    return proposals


@router.post("/mappings/preview")
async def console_preview(request: Request) -> HTMLResponse:
    row = _row(await checked_form(request))
    proposals = await run_in_threadpool(_with_form, request.app.state.runtime, row)
    return _page(request, proposals, previewed=(row.table, row.local.upper()))


def save(runtime: Runtime, row: ProposedRow) -> dict[str, Any]:
    """Write the row, load the mapping files again and map what it covers: how many of the
    records the code held (or left uncoded) are mapped with it now."""
    held = [
        record
        for code in OperationsReadings(runtime.store.engine).held_codes()
        if code.table == row.table and code.code.upper() == row.local.strip().upper()
        for record in code.records
    ]
    add_row(runtime.settings.mappings_dir, row)
    runtime.reload_mappings()
    report = runtime.mapping.run()
    states = [runtime.mapping.queue.state(*record)["state"] for record in held]
    return {
        "held": len(held),
        "released": sum(1 for state in states if state == "mapped"),
        "still": len(held) - sum(1 for state in states if state == "mapped"),
        "remapped": report.mapped,
    }


@router.post("/mappings/save")
async def console_save_row(request: Request) -> HTMLResponse:
    row = _row(await checked_form(request))
    runtime: Runtime = request.app.state.runtime
    request.state.audited_ids = [f"codes/{row.table}.yaml#{row.local}"[:200]]
    request.state.audited_query = (
        f"text={row.text}&system={row.system}&code={row.code}&display={row.display}"
        f"&source={row.source}"
    )[:2000]
    try:
        saved = await run_in_threadpool(save, runtime, row)
    except MappingFileError as exc:
        proposals = await run_in_threadpool(_with_form, runtime, row)
        for proposal in proposals:
            if proposal.row is row:
                proposal.problems = str(exc).splitlines()
        return _page(request, proposals, failed=str(exc), status=422)
    worker = request.app.state.worker
    if worker is not None:
        worker.wake(SYNC_JOB)
    proposals = await run_in_threadpool(_proposals, runtime)
    return _page(request, proposals, saved=row, outcome=saved)
