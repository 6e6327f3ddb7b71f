"""A patient the EHR knows by the record's MRN but with another family name or birth date: the
console shows both sides, and an admin who has checked that they are the same person confirms
the EHR's Patient; the held resources then go to it on replay. The confirmation holds for that
Patient alone (another one under the MRN is checked again), and can be withdrawn."""

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Path, Request
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


def _held(runtime: Runtime, mrn: str) -> list[HeldItem]:
    """The resources of the MRN held back for their patient's name or birth date."""
    return [
        item
        for item in OperationsReadings(runtime.store.engine).held_items(("waiting",), MOST_READ)
        if item.detail.get("patient_mrn") == mrn and item.detail.get("reason") in CONFIRMABLE
    ]


def _facts(runtime: Runtime, held: list[HeldItem]) -> list[PatientFacts]:
    """The distinct patient facts the held resources' records give."""
    found = RecordFacts(runtime.store).of((i.source_type, i.source_id) for i in held)
    return list(dict.fromkeys(found.values()))


def _words(differs: list[str]) -> str:
    return " and ".join(FACTS.get(name, name) for name in differs)


def _patient(runtime: Runtime, mrn: str) -> dict[str, Any]:
    matches = PatientMatches(runtime.store.engine)
    found = matches.get([mrn]).get(mrn)
    match = found if found and found.state == MATCHED else None
    held = _held(runtime, mrn)
    facts = _facts(runtime, held)
    differs = sorted({d for f in facts for d in differences(match, f)} if match else set())
    return {
        "zone": zone_of(runtime),
        "mrn": mrn,
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
async def console_patient(request: Request, mrn: Mrn) -> HTMLResponse:
    context = await run_in_threadpool(_patient, request.app.state.runtime, mrn)
    if context["match"]:
        request.state.audited_ids = [f"Patient/{context['match'].ehr_id}"[:200]]
    return page(request, "patient.html", section="held", **context)


def confirm(runtime: Runtime, mrn: str, ehr_id: str, client_id: str) -> dict[str, Any]:
    """Keep the admin's confirmation of the EHR Patient the page showed; refused when the EHR's
    Patient of the MRN is another one now, or nothing differs."""
    context = _patient(runtime, mrn)
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
    PatientMatches(runtime.store.engine).confirm(confirmation)
    return {**context, "confirmation": confirmation}


@router.post("/patients/{mrn:path}/confirm")
async def console_confirm_patient(request: Request, mrn: Mrn) -> HTMLResponse:
    fields = await checked_form(request)
    ehr_id = one(fields, "ehr_id", 128)
    client_id = current(request).client.id
    context = await run_in_threadpool(confirm, request.app.state.runtime, mrn, ehr_id, client_id)
    request.state.audited_ids = [f"Patient/{ehr_id}"[:200]]
    request.state.audited_query = f"confirmed=1&differs={','.join(context['differs'])}"
    return page(request, "patient.html", section="held", confirmed=True, **context)


@router.post("/patients/{mrn:path}/withdraw")
async def console_withdraw_patient(request: Request, mrn: Mrn) -> HTMLResponse:
    await checked_form(request)
    runtime: Runtime = request.app.state.runtime
    matches = PatientMatches(runtime.store.engine)
    confirmation = await run_in_threadpool(lambda: matches.confirmations([mrn]).get(mrn))
    if confirmation is None:
        raise ConsoleRefused("this MRN has no confirmed EHR Patient", status=409)
    await run_in_threadpool(matches.withdraw, mrn)
    request.state.audited_ids = [f"Patient/{confirmation.ehr_id}"[:200]]
    request.state.audited_query = "withdrawn=1"
    context = await run_in_threadpool(_patient, runtime, mrn)
    return page(request, "patient.html", section="held", withdrawn=True, **context)
