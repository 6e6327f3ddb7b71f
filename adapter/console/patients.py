"""A patient the EHR knows by the record's MRN but with another family name or birth date: the
console shows both sides, and an admin who has checked that they are the same person confirms
the EHR's Patient; the held resources then go to it on replay. The confirmation holds for that
Patient alone (another one under the MRN is checked again), and can be withdrawn. In a clinic
group each site's sync asks its own EHR: the page, and a confirmation made on it, are of one
site (`?site=<site>`), whose sync alone reads it."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse

from adapter.console.access import checked_form, console_router, current
from adapter.console.today import zone_of
from adapter.console.web import ConsoleRefused, one, page
from adapter.console.words import delivery_reason
from adapter.runtime import Runtime
from adapter.store.operations import HeldItem, OperationsReadings
from adapter.store.sync_state import PatientConfirmation, PatientMatches
from adapter.sync.patients import CONFIRMABLE, MATCHED, PatientFacts, RecordFacts, differences

router = console_router()

MOST_READ = 10_000
FACTS = {"family": "family name", "birth_date": "birth date"}

Mrn = Annotated[str, Path(min_length=1, max_length=64)]
SiteParameter = Annotated[str | None, Query(max_length=64)]


def site_of(runtime: Runtime, site: str | None) -> str | None:
    """The site a patient page is of: required in a clinic group (each site's EHR has its own
    Patients), refused outside one."""
    sites = sorted(runtime.mapping.sites)
    if not sites:
        if site is not None:
            raise ConsoleRefused("site: this deployment is not a clinic group; leave it out")
        return None
    if site not in sites:
        raise ConsoleRefused(f"site: name one of the clinic group's sites ({', '.join(sites)})")
    return site


def _held(runtime: Runtime, mrn: str, site: str | None) -> list[HeldItem]:
    """The resources of the MRN held back for their patient's name or birth date (of the
    site's sync, in a group)."""
    return [
        item
        for item in OperationsReadings(runtime.store.engine).held_items(("waiting",), MOST_READ)
        if item.detail.get("patient_mrn") == mrn
        and item.detail.get("reason") in CONFIRMABLE
        and item.site == site
    ]


def _facts(runtime: Runtime, held: list[HeldItem]) -> list[PatientFacts]:
    """The distinct patient facts the held resources' records give."""
    found = RecordFacts(runtime.store).of((i.source_type, i.source_id) for i in held)
    return list(dict.fromkeys(found.values()))


def _words(differs: list[str]) -> str:
    return " and ".join(FACTS.get(name, name) for name in differs)


def _patient(runtime: Runtime, mrn: str, site: str | None) -> dict[str, Any]:
    matches = PatientMatches(runtime.store.engine, site)
    found = matches.get([mrn]).get(mrn)
    match = found if found and found.state == MATCHED else None
    held = _held(runtime, mrn, site)
    facts = _facts(runtime, held)
    differs = sorted({d for f in facts for d in differences(match, f)} if match else set())
    return {
        "zone": zone_of(runtime),
        "mrn": mrn,
        "site": site,
        "match": match,
        "asked": found is not None,
        "held": held,
        "facts": facts,
        "differs": differs,
        "differs_words": _words(differs),
        "words": _words,
        "confirmation": matches.confirmations([mrn]).get(mrn),
        "delivery_reason": delivery_reason,
    }


@router.get("/patients/{mrn:path}")
async def console_patient(request: Request, mrn: Mrn, site: SiteParameter = None) -> HTMLResponse:
    runtime: Runtime = request.app.state.runtime
    context = await run_in_threadpool(_patient, runtime, mrn, site_of(runtime, site))
    if context["match"]:
        request.state.audited_ids = [f"Patient/{context['match'].ehr_id}"[:200]]
    return page(request, "patient.html", section="held", **context)


def confirm(
    runtime: Runtime, mrn: str, site: str | None, ehr_id: str, client_id: str
) -> dict[str, Any]:
    """Keep the admin's confirmation of the EHR Patient the page showed (for the site's sync,
    in a group); refused when the EHR's Patient of the MRN is another one now, or nothing
    differs."""
    context = _patient(runtime, mrn, site)
    match = context["match"]
    if match is None or match.ehr_id != ehr_id:
        raise ConsoleRefused(
            "the EHR's Patient of this MRN is not the one the page showed (it changed since, "
            "or was not found again): load the page again",
            status=409,
        )
    if not context["differs"]:
        raise ConsoleRefused(
            "nothing is held back for this MRN's family name or birth date", status=409
        )
    confirmation = PatientConfirmation(
        mrn, ehr_id, context["differs"], client_id, datetime.now(UTC)
    )
    PatientMatches(runtime.store.engine, site).confirm(confirmation)
    return {**context, "confirmation": confirmation}


@router.post("/patients/{mrn:path}/confirm")
async def console_confirm_patient(
    request: Request, mrn: Mrn, site: SiteParameter = None
) -> HTMLResponse:
    fields = await checked_form(request)
    ehr_id = one(fields, "ehr_id", 128)
    client_id = current(request).client.id
    runtime: Runtime = request.app.state.runtime
    chosen = site_of(runtime, site)
    context = await run_in_threadpool(confirm, runtime, mrn, chosen, ehr_id, client_id)
    request.state.audited_ids = [f"Patient/{ehr_id}"[:200]]
    request.state.audited_query = f"confirmed=1&differs={','.join(context['differs'])}" + (
        f"&site={chosen}" if chosen else ""
    )
    return page(request, "patient.html", section="held", confirmed=True, **context)


@router.post("/patients/{mrn:path}/withdraw")
async def console_withdraw_patient(
    request: Request, mrn: Mrn, site: SiteParameter = None
) -> HTMLResponse:
    await checked_form(request)
    runtime: Runtime = request.app.state.runtime
    chosen = site_of(runtime, site)
    matches = PatientMatches(runtime.store.engine, chosen)
    confirmation = await run_in_threadpool(lambda: matches.confirmations([mrn]).get(mrn))
    if confirmation is None:
        raise ConsoleRefused("this MRN has no confirmed EHR Patient", status=409)
    await run_in_threadpool(matches.withdraw, mrn)
    request.state.audited_ids = [f"Patient/{confirmation.ehr_id}"[:200]]
    request.state.audited_query = "withdrawn=1" + (f"&site={chosen}" if chosen else "")
    context = await run_in_threadpool(_patient, runtime, mrn, chosen)
    return page(request, "patient.html", section="held", withdrawn=True, **context)
