"""Intake API: POST records, GET a record's current revision and its history."""

from collections import Counter
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool

from adapter.api.deps import IntakeDep, RuntimeDep, SettingsDep, StoreDep, wake_worker
from adapter.api.responses import JsonResponse
from adapter.errors import BadRequest, NotFound, PayloadTooLarge
from adapter.intake.body import read_json, split_body
from adapter.intake.records import RECORD_TYPES, SITE_ID_PATTERN, SOURCE_ID_PATTERN
from adapter.intake.service import ACCEPTED, RecordOutcome, record_status
from adapter.mapping.detected_issue import SOURCE_TYPE as PROTOCOL
from adapter.mapping.detected_issue import breach_summary
from adapter.runtime import Runtime
from adapter.security.access import api_caller, caller_sites
from adapter.site_keys import SEPARATOR, site_key
from adapter.store.records import RecordStore, StoredRecord

router = APIRouter(
    prefix="/api/v1/records",
    tags=["intake"],
    dependencies=[Depends(api_caller("intake", site_bound=True))],
)

RecordType = Annotated[str, Path(description=f"one of {', '.join(RECORD_TYPES)}")]
SourceId = Annotated[
    str,
    Path(
        pattern=f"^(?:{SITE_ID_PATTERN[1:-1]}{SEPARATOR})?{SOURCE_ID_PATTERN[1:-1]}$",
        description="the record's source id; in a clinic group it may be given as `<site>:<id>`, "
        "the store key the answer's `id` gives",
    ),
]
ClinicSite = Annotated[
    str | None,
    Query(
        pattern=SITE_ID_PATTERN,
        description="In a clinic group, the record's `clinic_site` (or give the id as "
        "`<site>:<id>`); a key bound to one site may leave it out",
    ),
]


MOST_ERRORS_SHOWN = 100
"""Errors given in full in one answer; later rejected records say how many they had."""
MOST_ERRORS_PER_RECORD = 20


def _results(outcomes: list[RecordOutcome], position_key: str) -> tuple[list[Any], int]:
    """Each record's outcome line, with the first MOST_ERRORS_SHOWN errors in full (at most
    MOST_ERRORS_PER_RECORD a record); and how many errors were left out."""
    results, shown, left_out = [], 0, 0
    for outcome in outcomes:
        result = outcome.as_dict()
        result[position_key] = result.pop("index")
        errors = result.pop("errors", [])
        room = max(0, min(MOST_ERRORS_PER_RECORD, MOST_ERRORS_SHOWN - shown))
        if errors[:room]:
            result["errors"] = errors[:room]
        if len(errors) > room:
            result["errors_not_shown"] = len(errors) - room
        shown += min(room, len(errors))
        left_out += max(0, len(errors) - room)
        results.append(result)
    return results, left_out


def _status_code(outcomes: list[RecordOutcome]) -> int:
    rejected = sum(outcome.outcome == "rejected" for outcome in outcomes)
    if rejected == 0:
        return 200
    return 422 if rejected == len(outcomes) else 207


@router.post(
    "",
    summary="Submit records",
    description="One record (JSON object), a JSON array of records, or NDJSON. Each record is "
    "accepted or rejected on its own. 200: all accepted; 207: some rejected; 422: all rejected. "
    "The first 100 errors are given in full (20 a record at most); the rest are counted.",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {
                        "anyOf": [
                            {"type": "object"},
                            {"type": "array", "items": {"type": "object"}, "minItems": 1},
                        ]
                    }
                },
                "application/x-ndjson": {"schema": {"type": "string", "pattern": "\\S"}},
            },
        }
    },
)
async def submit_records(
    request: Request, intake: IntakeDep, settings: SettingsDep
) -> JsonResponse:
    # Within ADAPTER_MAX_BODY_BYTES (the Guard middleware saw to it), and parsed off the loop.
    body = await request.body()
    position_key, items = await run_in_threadpool(
        split_body, request.headers.get("content-type", ""), body
    )
    if len(items) > settings.intake_max_records:
        raise PayloadTooLarge(
            f"the body holds {len(items)} records; at most {settings.intake_max_records} are "
            "taken in one request (send several, or import a file with `infusion-adapter import`)"
        )
    outcomes: list[RecordOutcome] = []
    caller = getattr(request.state, "caller", None)
    sites = caller.client.sites if caller is not None else None
    for start in range(0, len(items), settings.intake_batch_size):
        batch = items[start : start + settings.intake_batch_size]
        outcomes += await run_in_threadpool(intake.submit, batch, sites)
    wake_worker(request)
    request.app.state.metrics.received((o.record_type, o.outcome) for o in outcomes)
    request.state.audited_ids = [f"{o.record_type}/{o.id}" for o in outcomes if o.id]
    request.state.audited_query = f"records={len(outcomes)}"
    summary = Counter({name: 0 for name in (*ACCEPTED, "rejected")})
    summary.update(outcome.outcome for outcome in outcomes)
    results, left_out = _results(outcomes, position_key)
    answer: dict[str, Any] = {"received": len(outcomes), "summary": dict(summary)}
    if left_out:
        answer["errors_not_shown"] = left_out
    answer["results"] = results
    return JsonResponse(answer, status_code=_status_code(outcomes))


def _store_key(runtime: Runtime, request: Request, source_id: str, site: str | None) -> str | None:
    """The store key of the record asked for: its id, or `<site>:<id>` in a clinic group. A
    key bound to sites finds their records alone: another site's, or a site the group does not
    have, is None, answered as a record never received (the same words), so that a bound key
    learns neither the other sites' records nor which sites there are."""
    named, _, plain = source_id.rpartition(SEPARATOR)
    sites = runtime.mapping.sites
    bound = caller_sites(request)
    if not sites:
        if named or site is not None:
            raise NotFound(
                "site: this deployment is not a clinic group: no record is of a site",
                expression=["site"],
            )
        return plain
    if named and site is not None and named != site:
        raise BadRequest("site: the id names another site than `site`", expression=["site"])
    site = site or named or None
    if site is None and bound is not None and len(bound) == 1:
        site = next(iter(bound))
    if site is None:
        raise BadRequest(
            "site: in a clinic group name the record's clinic site (`?site=<site>`)",
            expression=["site"],
        )
    if bound is not None and site not in bound:
        return None
    if site not in sites:
        raise NotFound("site: not a site of this clinic group", expression=["site"])
    return site_key(site, plain)


def _require(store: RecordStore, record_type: str, key: str | None) -> StoredRecord:
    if record_type not in RECORD_TYPES:
        raise NotFound(f"unknown record type; expected one of {', '.join(RECORD_TYPES)}")
    stored = store.get(record_type, key) if key is not None else None
    if stored is None:
        raise NotFound(f"no {record_type} record with that id has been received")
    return stored


def _links(store: RecordStore, stored: StoredRecord) -> dict[str, Any]:
    if stored.record_type == "infusion_session":
        return {"records": store.linked_counts(stored.source_id)}
    session_id = stored.session_id or ""
    return {"session": {"id": session_id, "received": store.exists("infusion_session", session_id)}}


def _mapping(runtime: Runtime, stored: StoredRecord) -> dict[str, Any]:
    state = runtime.mapping.queue.state(stored.record_type, stored.source_id)
    resources = runtime.resources.for_source(stored.record_type, stored.source_id)
    journeys = runtime.outbox.journeys([r.id for r in resources])
    return {
        **state,
        "resources": [
            {
                "resourceType": r.resource_type,
                "id": r.id,
                "versionId": str(r.version_id),
                **({"journey": journeys[r.id]} if r.id in journeys else {}),
            }
            for r in resources
        ],
    }


def _protocol(runtime: Runtime, stored: StoredRecord) -> dict[str, Any]:
    """A session's protocol breaches (DetectedIssues), current ones first, withdrawn ones after."""
    if stored.record_type != "infusion_session":
        return {}
    issues = [
        breach_summary(orjson.loads(r.content))
        for r in runtime.resources.for_source(PROTOCOL, stored.source_id)
        if r.resource_type == "DetectedIssue"
    ]
    issues.sort(key=lambda issue: (issue["status"] == "entered-in-error", issue["identified"]))
    return {"protocol_breaches": issues}


@router.get("/{record_type}/{source_id}", summary="A record's current revision and status")
def get_record(
    request: Request,
    record_type: RecordType,
    source_id: SourceId,
    store: StoreDep,
    runtime: RuntimeDep,
    site: ClinicSite = None,
) -> JsonResponse:
    stored = _require(store, record_type, _store_key(runtime, request, source_id, site))
    history = store.revision_history(record_type, stored.source_id)
    return JsonResponse(
        {
            "record_type": stored.record_type,
            "id": stored.source_id,
            "revision": stored.revision,
            "status": record_status(stored.withdrawn),
            "first_received_at": stored.first_received_at.isoformat(),
            "updated_at": stored.updated_at.isoformat(),
            "record": orjson.loads(stored.parsed),
            "links": _links(store, stored),
            "mapping": _mapping(runtime, stored),
            **_protocol(runtime, stored),
            "revisions": [
                {
                    "revision": item.revision,
                    "status": record_status(item.withdrawn),
                    "received_at": item.received_at.isoformat(),
                    "current": item.revision == stored.revision,
                }
                for item in history
            ],
        }
    )


@router.get(
    "/{record_type}/{source_id}/revisions/{revision}",
    summary="One revision as received (raw) and as validated (parsed)",
)
def get_revision(
    request: Request,
    record_type: RecordType,
    source_id: SourceId,
    revision: Annotated[int, Path(ge=1)],
    store: StoreDep,
    runtime: RuntimeDep,
    site: ClinicSite = None,
) -> JsonResponse:
    stored = _require(store, record_type, _store_key(runtime, request, source_id, site))
    for item in store.revision_history(record_type, stored.source_id):
        if item.revision == revision:
            return JsonResponse(
                {
                    "record_type": record_type,
                    "id": stored.source_id,
                    "revision": item.revision,
                    "status": record_status(item.withdrawn),
                    "received_at": item.received_at.isoformat(),
                    "received": read_json(item.raw),
                    "parsed": orjson.loads(item.parsed),
                }
            )
    raise NotFound("that revision of the record has not been received")
