"""$export jobs: kick-off, status, cancel; the runner that writes NDJSON; expiry of old files.

Follows the FHIR Bulk Data Access IG (https://hl7.org/fhir/uv/bulkdata/export.html): system,
Patient and Group level, `_type`, `_since`; output one NDJSON file per resource type.
"""

import logging
import shutil
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from sqlalchemy import ColumnElement, Engine, and_, false, func, or_, select, update

from adapter.errors import BadRequest, NotFound, TooManyRequests
from adapter.fhir.indexing import SERIES_PARAM
from adapter.fhir.search import parse_instant
from adapter.fhir.search_params import SEARCH_PARAMS
from adapter.store.clock import horizon
from adapter.store.engine import any_row
from adapter.store.fhir_reads import of_sites
from adapter.store.tables import export_jobs as jobs
from adapter.store.tables import fhir_resources as resources
from adapter.store.tables import fhir_search_tokens as tokens

log = logging.getLogger(__name__)

ACCEPTED, RUNNING, COMPLETED, FAILED, CANCELLED, EXPIRED = (
    "accepted",
    "in-progress",
    "completed",
    "failed",
    "cancelled",
    "expired",
)
ALL_PATIENTS = "all-patients"
SERIES_PREFIX = "series-"
OUTPUT_FORMATS = {"application/fhir+ndjson", "application/ndjson", "ndjson"}
_BATCH = 1000


@dataclass(frozen=True)
class JobStatus:
    id: str
    status: str
    progress: str | None
    manifest: dict[str, Any] | None
    error: str | None


def exported_types(types: str | None) -> list[str]:
    """The types an export's `_type` names (every served type when it names none)."""
    chosen = [t for t in (types or "").split(",") if t] or list(SEARCH_PARAMS)
    unknown = [t for t in chosen if t not in SEARCH_PARAMS]
    if unknown:
        raise BadRequest(
            f"_type: {', '.join(unknown)} not exported; exported: {', '.join(SEARCH_PARAMS)}",
            expression=["_type"],
        )
    return chosen


class ExportService:
    def __init__(self, engine: Engine, folder: Path, retention: timedelta) -> None:
        self.engine = engine
        self.folder = folder
        self.retention = retention

    def kick_off(
        self,
        level: str,
        request_url: str,
        types: str | None,
        since: str | None,
        output_format: str | None,
        group_id: str | None = None,
        client_id: str | None = None,
        most_at_once: int | None = None,
        sites: frozenset[str] | None = None,
    ) -> str:
        """Check the request and queue the job; its id names its status URL. A client with
        `most_at_once` jobs queued or running is told to wait (429, as the Bulk Data IG says)."""
        chosen = exported_types(types)
        if output_format and output_format.replace(" ", "+") not in OUTPUT_FORMATS:
            raise BadRequest(
                "_outputFormat: only application/fhir+ndjson", expression=["_outputFormat"]
            )
        moment = parse_instant(since, "_since") if since else None
        if (
            group_id is not None
            and group_id != ALL_PATIENTS
            and not group_id.startswith(SERIES_PREFIX)
        ):
            raise NotFound(
                f"Group/{group_id} is not known; groups: {ALL_PATIENTS}, {SERIES_PREFIX}<series id>"
            )
        job_id = str(uuid.uuid4())
        now = datetime.now(UTC)
        with self.engine.begin() as connection:
            if client_id is not None and most_at_once is not None:
                running = connection.execute(
                    select(func.count()).where(
                        jobs.c.client_id == client_id, jobs.c.status.in_((ACCEPTED, RUNNING))
                    )
                ).scalar_one()
                if running >= most_at_once:
                    raise TooManyRequests(
                        f"{running} exports of this client are queued or running; wait for one "
                        "to complete, or cancel one",
                        retry_after=30,
                    )
            connection.execute(
                jobs.insert().values(
                    id=job_id,
                    status=ACCEPTED,
                    level=level,
                    group_id=group_id,
                    types=orjson.dumps(chosen).decode(),
                    since=moment,
                    request_url=request_url,
                    client_id=client_id,
                    sites=" ".join(sorted(sites)) if sites is not None else None,
                    created_at=now,
                    updated_at=now,
                )
            )
        return job_id

    def status(self, job_id: str, client_id: str | None = None) -> JobStatus:
        """A job's status; a job kicked off by another client is not found."""
        with self.engine.connect() as connection:
            row = connection.execute(
                select(
                    jobs.c.id,
                    jobs.c.status,
                    jobs.c.progress,
                    jobs.c.manifest,
                    jobs.c.error,
                    jobs.c.client_id,
                ).where(jobs.c.id == job_id)
            ).one_or_none()
        foreign = row is not None and row.client_id not in (None, client_id)
        if row is None or foreign or row.status in (CANCELLED, EXPIRED):
            raise NotFound("no such export job (it may have been cancelled or expired)")
        return JobStatus(
            row.id,
            row.status,
            row.progress,
            orjson.loads(row.manifest) if row.manifest else None,
            row.error,
        )

    def cancel(self, job_id: str, client_id: str | None = None) -> None:
        self.status(job_id, client_id)
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(status=CANCELLED, updated_at=datetime.now(UTC))
            )
        shutil.rmtree(self.folder / job_id, ignore_errors=True)

    def file(self, job_id: str, name: str, client_id: str | None = None) -> Path:
        status = self.status(job_id, client_id)
        path = self.folder / job_id / name
        if status.status != COMPLETED or "/" in name or not path.is_file():
            raise NotFound("no such export file")
        return path

    def any_to_run(self) -> bool:
        """Whether any job is queued, or left running (by this process or a stopped one)."""
        return any_row(self.engine, jobs.c.id, jobs.c.status.in_([ACCEPTED, RUNNING]))

    def any_expired(self) -> bool:
        """Whether any completed job has outlived the retention, its files not yet removed."""
        return any_row(self.engine, jobs.c.id, _expired(datetime.now(UTC)))

    def resume(self) -> int:
        """Jobs a stopped process left running are queued again (their files are rewritten)."""
        with self.engine.begin() as connection:
            result = connection.execute(
                update(jobs).where(jobs.c.status == RUNNING).values(status=ACCEPTED)
            )
        return int(result.rowcount or 0)

    def run(self) -> int:
        """Run every queued job; returns how many completed."""
        done = 0
        while job := self._claim():
            try:
                if self._write(job):
                    done += 1
            except Exception as exc:  # the job fails; the service goes on
                log.error("export job failed: %s", type(exc).__name__)
                self._set(
                    job["id"], status=FAILED, error=f"the export failed ({type(exc).__name__})"
                )
        return done

    def expire(self) -> int:
        """Remove the files of completed jobs older than the retention."""
        with self.engine.connect() as connection:
            old = [
                row.id
                for row in connection.execute(select(jobs.c.id).where(_expired(datetime.now(UTC))))
            ]
        for job_id in old:
            shutil.rmtree(self.folder / job_id, ignore_errors=True)
            self._set(job_id, status=EXPIRED)
        return len(old)

    def _claim(self) -> dict[str, Any] | None:
        with self.engine.begin() as connection:
            row = connection.execute(
                select(jobs).where(jobs.c.status == ACCEPTED).order_by(jobs.c.created_at).limit(1)
            ).one_or_none()
            if row is None:
                return None
            claimed = connection.execute(
                update(jobs)
                .where(jobs.c.id == row.id, jobs.c.status == ACCEPTED)
                .values(status=RUNNING, updated_at=datetime.now(UTC))
            )
            return dict(row._mapping) if claimed.rowcount else self._claim()

    def _set(self, job_id: str, **values: Any) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(jobs)
                .where(jobs.c.id == job_id)
                .values(updated_at=datetime.now(UTC), **values)
            )

    def _cancelled(self, job_id: str) -> bool:
        with self.engine.connect() as connection:
            status = connection.execute(select(jobs.c.status).where(jobs.c.id == job_id))
            return bool(status.scalar_one() == CANCELLED)

    def _patients(self, job: dict[str, Any]) -> list[tuple[str | None, str]] | None:
        """The MRN identifiers a Group export covers; None for every patient."""
        group = job["group_id"]
        if group is None or group == ALL_PATIENTS:
            return None
        series = group.removeprefix(SERIES_PREFIX)
        procedures = select(tokens.c.resource_id).where(
            tokens.c.param == SERIES_PARAM, tokens.c.code == series
        )
        bound = _bound_to(job)
        if bound:
            # A client bound to sites finds their series alone: another site's has no patients.
            procedures = procedures.where(
                tokens.c.resource_id.in_(select(resources.c.id).where(*bound))
            )
        query = (
            select(tokens.c.system, tokens.c.code)
            .where(tokens.c.param == "patient:identifier", tokens.c.resource_id.in_(procedures))
            .distinct()
        )
        with self.engine.connect() as connection:
            return [(row.system, row.code) for row in connection.execute(query)]

    def _write(self, job: dict[str, Any]) -> bool:
        folder = self.folder / job["id"]
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        # Every version at or before the transactionTime has committed, and any later one
        # will be after it: a client's next `_since` of this time misses none.
        transaction_time = horizon(self.engine, datetime.now(UTC))
        patients = self._patients(job)
        output = []
        types = orjson.loads(job["types"])
        for index, resource_type in enumerate(types, start=1):
            conditions = [
                resources.c.resource_type == resource_type,
                resources.c.last_updated <= transaction_time,
            ]
            if job["since"] is not None:
                conditions.append(resources.c.last_updated > job["since"])
            # A client bound to sites exports theirs alone.
            conditions += _bound_to(job)
            if patients is not None:
                # The MRN's system and value together: the sites of a group may each have
                # their own MRN system, where one value names two people.
                members = select(tokens.c.resource_id).where(
                    tokens.c.param.in_(["patient:identifier", "subject:identifier"]),
                    or_(
                        false(),
                        *(
                            and_(tokens.c.system == system, tokens.c.code == code)
                            if system is not None
                            else and_(tokens.c.system.is_(None), tokens.c.code == code)
                            for system, code in patients
                        ),
                    ),
                )
                conditions.append(resources.c.id.in_(members))
            count = 0
            path = folder / f"{resource_type}.ndjson"
            with path.open("wb") as handle, self.engine.connect() as connection:
                result = connection.execution_options(yield_per=_BATCH).execute(
                    select(resources.c.content).where(and_(*conditions)).order_by(resources.c.id)
                )
                for (content,) in result:
                    handle.write(content.encode() + b"\n")
                    count += 1
            if self._cancelled(job["id"]):
                shutil.rmtree(folder, ignore_errors=True)
                return False
            if count:
                output.append({"type": resource_type, "file": path.name, "count": count})
            else:
                path.unlink()
            self._set(job["id"], progress=f"{index} of {len(types)} resource types written")
        manifest = {
            "transactionTime": transaction_time.isoformat(),
            "request": job["request_url"],
            # Every file answers only the client that started the export, with its token
            # (Bulk Data IG: true when the files need the access token).
            "requiresAccessToken": True,
            "output": output,
            "error": [],
        }
        self._set(
            job["id"],
            status=COMPLETED,
            manifest=orjson.dumps(manifest).decode(),
            expires_at=datetime.now(UTC) + self.retention,
        )
        return True


def _bound_to(job: dict[str, Any]) -> list[Any]:
    """The conditions on resources of the sites the job's client is bound to (none: unbound)."""
    return of_sites(frozenset(job["sites"].split())) if job.get("sites") else []


def _expired(now: datetime) -> ColumnElement[bool]:
    """Completed jobs whose files have outlived the retention."""
    return and_(jobs.c.status == COMPLETED, jobs.c.expires_at < now)
