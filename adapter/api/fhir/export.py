"""Bulk Data $export: kick-off (system, Patient, Group), status polling, files, cancel."""

from dataclasses import dataclass
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse, Response

from adapter.api.deps import RuntimeDep
from adapter.api.fhir.wire import fhir_base, handling, media_type
from adapter.errors import BadRequest, UnsupportedMediaType
from adapter.export.service import COMPLETED, FAILED, exported_types
from adapter.runtime import Runtime
from adapter.security.access import Caller, CallerDep, token_caller
from adapter.worker import EXPORT_JOB

router = APIRouter()


@dataclass(frozen=True)
class ExportParameters:
    prefer: str | None
    types: str | None
    since: str | None
    output_format: str | None


def _parameters(
    prefer: Annotated[str | None, Header()] = None,
    types: Annotated[str | None, Query(alias="_type")] = None,
    since: Annotated[str | None, Query(alias="_since")] = None,
    output_format: Annotated[str | None, Query(alias="_outputFormat")] = None,
) -> ExportParameters:
    return ExportParameters(prefer, types, since, output_format)


ExportDep = Annotated[ExportParameters, Depends(_parameters)]

_POSTED = {"_type": "valueString", "_since": "valueInstant", "_outputFormat": "valueString"}
"""The kick-off parameters this server supports, in the query or in a POSTed Parameters
resource, and the value each takes there (Bulk Data IG 2.0, "Bulk Data Kick-off Request")."""


def _unsupported(name: str, where: str) -> BadRequest:
    return BadRequest(
        f"{where}: {name!r} is not supported here; supported: {', '.join(_POSTED)} (or send "
        "Prefer: handling=lenient to have the export without it)",
        expression=[where],
    )


async def _posted(
    request: Request,
    prefer: Annotated[str | None, Header()] = None,
    types: Annotated[str | None, Query(alias="_type")] = None,
    since: Annotated[str | None, Query(alias="_since")] = None,
    output_format: Annotated[str | None, Query(alias="_outputFormat")] = None,
) -> ExportParameters | BadRequest | UnsupportedMediaType:
    """The kick-off parameters of a POST: a Parameters resource (`_type` may repeat), or, as
    some clients send them (Medplum's bulkExport), the query's; a parameter this server does
    not support is refused, naming it. The refusal is returned, not raised: it is raised once
    the caller's access is checked, so that a caller without access learns nothing more."""
    try:
        return await _read_posted(request, prefer, types, since, output_format)
    except (BadRequest, UnsupportedMediaType) as refusal:
        return refusal


async def _read_posted(
    request: Request,
    prefer: str | None,
    types: str | None,
    since: str | None,
    output_format: str | None,
) -> ExportParameters:
    queried = {"_type": types, "_since": since, "_outputFormat": output_format}
    body = await request.body()
    kind = media_type(request)
    if body.strip() and kind not in ("application/fhir+json", "application/json", ""):
        raise UnsupportedMediaType(
            f"a kick-off's Parameters are sent as application/fhir+json, not {kind}"
        )
    try:
        resource = orjson.loads(body) if body.strip() else {"resourceType": "Parameters"}
    except orjson.JSONDecodeError:
        raise BadRequest("the body is not JSON: send a Parameters resource") from None
    if not isinstance(resource, dict) or resource.get("resourceType") != "Parameters":
        raise BadRequest("the body must be a Parameters resource", expression=["resourceType"])
    found: dict[str, list[str]] = {}
    for index, parameter in enumerate(resource.get("parameter") or []):
        name = parameter.get("name") if isinstance(parameter, dict) else None
        where = f"Parameters.parameter[{index}]"
        if name not in _POSTED:
            if handling(prefer, "lenient"):
                continue
            raise _unsupported(str(name), where)
        value = parameter.get(_POSTED[name])
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{where}: {name} needs {_POSTED[name]}", expression=[where])
        found.setdefault(name, []).append(value)
    for name, value in queried.items():
        if value is not None:
            found.setdefault(name, []).append(value)
    for name in ("_since", "_outputFormat"):
        if len(found.get(name, [])) > 1:
            raise BadRequest(f"{name}: given more than once", expression=[name])
    types = ",".join(found["_type"]) if "_type" in found else None
    first = {name: values[0] for name, values in found.items()}
    return ExportParameters(prefer, types, first.get("_since"), first.get("_outputFormat"))


PostedDep = Annotated[ExportParameters | BadRequest | UnsupportedMediaType, Depends(_posted)]


async def _exporter(
    request: Request, types: Annotated[str | None, Query(alias="_type")] = None
) -> Caller:
    """A token whose scopes allow reading every type the export would write."""
    caller = token_caller(request)
    for resource_type in exported_types(types):
        caller.require(resource_type, "r")
    return caller


_exporter.access = "scope:r(exported types)"  # type: ignore[attr-defined]
Exporter = Annotated[Caller, Depends(_exporter)]


async def _posted_exporter(request: Request, asked: PostedDep) -> Caller:
    """As `_exporter`, for the types a POSTed kick-off names (every type when its parameters
    cannot be read); then a refused kick-off is refused."""
    caller = token_caller(request)
    asked_types = asked.types if isinstance(asked, ExportParameters) else None
    for resource_type in exported_types(asked_types):
        caller.require(resource_type, "r")
    if isinstance(asked, BadRequest | UnsupportedMediaType):
        raise asked
    return caller


_posted_exporter.access = "scope:r(exported types)"  # type: ignore[attr-defined]
PostedExporter = Annotated[Caller, Depends(_posted_exporter)]


def _kick_off(
    request: Request,
    runtime: Runtime,
    level: str,
    asked: ExportParameters,
    caller: Caller,
    group_id: str | None = None,
) -> Response:
    if "respond-async" not in (asked.prefer or ""):
        raise BadRequest(
            "$export runs asynchronously: send Prefer: respond-async", expression=["Prefer"]
        )
    # A filter left out would export more than was asked for: refused unless the client
    # said it would rather have that (a POSTed body's parameters are checked as it is read).
    for name in request.query_params:
        if name not in _POSTED and not handling(asked.prefer, "lenient"):
            raise _unsupported(name, name)
    job_id = runtime.exports.kick_off(
        level,
        str(request.url),
        asked.types,
        asked.since,
        asked.output_format,
        group_id,
        client_id=caller.client.id,
        most_at_once=runtime.settings.exports_per_client,
        sites=caller.client.sites,
    )
    request.state.audited_ids = [job_id]
    worker = request.app.state.worker
    if worker is not None:
        worker.wake(EXPORT_JOB)
    location = f"{fhir_base(request)}/$export-status/{job_id}"
    return Response(status_code=202, headers={"Content-Location": location})


@router.get("/$export", summary="System level export")
def export_system(
    request: Request, runtime: RuntimeDep, asked: ExportDep, caller: Exporter
) -> Response:
    return _kick_off(request, runtime, "system", asked, caller)


@router.get("/Patient/$export", summary="Patient level export")
def export_patients(
    request: Request, runtime: RuntimeDep, asked: ExportDep, caller: Exporter
) -> Response:
    return _kick_off(request, runtime, "patient", asked, caller)


@router.get("/Group/{group_id}/$export", summary="Group level export (all-patients, series-<id>)")
def export_group(
    request: Request, runtime: RuntimeDep, asked: ExportDep, caller: Exporter, group_id: str
) -> Response:
    return _kick_off(request, runtime, "group", asked, caller, group_id)


@router.post("/$export", summary="System level export, parameters in a Parameters body")
def export_system_posted(
    request: Request, runtime: RuntimeDep, caller: PostedExporter, asked: PostedDep
) -> Response:
    assert isinstance(asked, ExportParameters)  # a refusal was raised by PostedExporter
    return _kick_off(request, runtime, "system", asked, caller)


@router.post("/Patient/$export", summary="Patient level export, parameters in a Parameters body")
def export_patients_posted(
    request: Request, runtime: RuntimeDep, caller: PostedExporter, asked: PostedDep
) -> Response:
    assert isinstance(asked, ExportParameters)  # a refusal was raised by PostedExporter
    return _kick_off(request, runtime, "patient", asked, caller)


@router.post(
    "/Group/{group_id}/$export", summary="Group level export, parameters in a Parameters body"
)
def export_group_posted(
    request: Request,
    runtime: RuntimeDep,
    caller: PostedExporter,
    asked: PostedDep,
    group_id: str,
) -> Response:
    assert isinstance(asked, ExportParameters)  # a refusal was raised by PostedExporter
    return _kick_off(request, runtime, "group", asked, caller, group_id)


@router.get("/$export-status/{job_id}", summary="Export status; the manifest once complete")
def export_status(
    request: Request, runtime: RuntimeDep, caller: CallerDep, job_id: str
) -> Response:
    status = runtime.exports.status(job_id, caller.client.id)
    if status.status == COMPLETED and status.manifest is not None:
        base = fhir_base(request)
        manifest = {
            **status.manifest,
            "output": [
                {
                    "type": item["type"],
                    "url": f"{base}/$export-file/{job_id}/{item['file']}",
                    "count": item["count"],
                }
                for item in status.manifest["output"]
            ],
        }
        return Response(content=orjson.dumps(manifest), media_type="application/json")
    if status.status == FAILED:
        raise BadRequest(status.error or "the export failed")
    return Response(
        status_code=202,
        headers={"X-Progress": status.progress or status.status, "Retry-After": "2"},
    )


@router.delete("/$export-status/{job_id}", summary="Cancel an export and delete its files")
def export_cancel(runtime: RuntimeDep, caller: CallerDep, job_id: str) -> Response:
    runtime.exports.cancel(job_id, caller.client.id)
    return Response(status_code=202)


@router.get("/$export-file/{job_id}/{name}", summary="One NDJSON output file of a completed export")
def export_file(runtime: RuntimeDep, caller: CallerDep, job_id: str, name: str) -> FileResponse:
    path = runtime.exports.file(job_id, name, caller.client.id)
    return FileResponse(path, media_type="application/fhir+ndjson")
