"""The FHIR endpoint's reads: a page of a search, counts, includes, versions and history."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Executable, Row, and_, func, literal, or_, select
from sqlalchemy.exc import OperationalError

from adapter.fhir.indexing import REFERENCE_SYSTEM
from adapter.fhir.search import SearchRequest, keyset, sort_column
from adapter.store import raw
from adapter.store.loop_reads import LoopReads
from adapter.store.resources import StoredResource
from adapter.store.tables import fhir_resource_versions as versions
from adapter.store.tables import fhir_resources as resources
from adapter.store.tables import fhir_search_tokens as tokens

MAX_INCLUDED = 1000
_READ = (
    "SELECT resource_type, id, version_id, last_updated, content, site FROM fhir_resources "
    "WHERE resource_type = ? AND id = ?"
)
Sites = frozenset[str] | None
"""The clinic sites a caller is bound to, whose resources alone it sees; None: every site."""


def of_sites(sites: Sites) -> list[Any]:
    """The condition that limits fhir_resources to these sites (none when None)."""
    return [] if sites is None else [resources.c.site.in_(sorted(sites))]


@dataclass(frozen=True)
class Hit:
    id: str
    resource_type: str
    sort_value: Any
    content: str


class FhirReader:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        """An engine of single reads (make_engine's `single_reads`): autocommit, no ping. Each
        query here stands alone (FHIR promises no snapshot across a search's parts), so none
        pays for a ping, a BEGIN and a ROLLBACK: three round trips more than the query."""
        self.loop_reads = LoopReads(engine) if LoopReads.serves(engine) else None
        """Reads by id awaited on the event loop (PostgreSQL); SQLite answers in-process."""
        self._read_sql = raw.statement(engine, _READ)
        self._last_updated = raw.from_store(engine, resources.c.last_updated)

    def close(self) -> None:
        if self.loop_reads is not None:
            self.loop_reads.close()
        self.engine.dispose()

    def _rows(self, query: Executable) -> list[Row[Any]]:
        """The rows of a query, read `raw.again_once` (SQLAlchemy replaces a dropped
        connection itself)."""

        def rows() -> list[Row[Any]]:
            with self.engine.connect() as connection:
                return list(connection.execute(query))

        return raw.again_once(rows, OperationalError)

    def page(self, request: SearchRequest, backwards: bool = False) -> tuple[list[Hit], bool]:
        """One page in the search's order (fetched in reverse for a previous page), and whether
        more rows lie beyond it in the direction read."""
        column = sort_column(request)
        reverse = request.descending != backwards
        order = [column.desc(), resources.c.id.desc()] if reverse else [column, resources.c.id]
        query = (
            select(resources.c.id, resources.c.resource_type, column, resources.c.content)
            .where(*request.where, keyset(request, backwards))
            .order_by(*order)
            .limit(request.count + 1)
        )
        rows = [Hit(*row) for row in self._rows(query)]
        more = len(rows) > request.count
        rows = rows[: request.count]
        if backwards:
            rows.reverse()
        return rows, more

    def count(self, request: SearchRequest) -> int:
        query = select(func.count()).select_from(resources).where(*request.where)
        return int(self._rows(query)[0][0])

    def revincluded(
        self, resource_type: str, param: str, targets: list[str], sites: Sites = None
    ) -> tuple[list[Hit], bool]:
        """Resources of `resource_type` whose `param` references one of `targets` (Type/id)."""
        if not targets:
            return [], False
        query = (
            select(resources.c.id, resources.c.resource_type, literal(None), resources.c.content)
            .join(tokens, tokens.c.resource_id == resources.c.id)
            .where(
                resources.c.resource_type == resource_type,
                tokens.c.param == param,
                tokens.c.system == REFERENCE_SYSTEM,
                tokens.c.code.in_(targets),
                *of_sites(sites),
            )
            .order_by(resources.c.id)
            .limit(MAX_INCLUDED + 1)
        )
        rows = [Hit(*row) for row in self._rows(query)]
        return rows[:MAX_INCLUDED], len(rows) > MAX_INCLUDED

    def included(
        self, param: str, sources: list[str], sites: Sites = None, target: str | None = None
    ) -> list[Hit]:
        """Resources that `param` of these resources references (of the `target` type
        alone, if given)."""
        if not sources:
            return []
        references = select(tokens.c.code).where(
            tokens.c.resource_id.in_(sources),
            tokens.c.param == param,
            tokens.c.system == REFERENCE_SYSTEM,
        )
        targets = {row[0] for row in self._rows(references)}
        if target is not None:
            targets = {found for found in targets if found.startswith(f"{target}/")}
        ids = [found.split("/", 1)[1] for found in targets if "/" in found]
        query = select(
            resources.c.id, resources.c.resource_type, literal(None), resources.c.content
        ).where(resources.c.id.in_(ids[:MAX_INCLUDED]), *of_sites(sites))
        return [Hit(*row) for row in self._rows(query) if f"{row[1]}/{row[0]}" in targets]

    async def read(
        self, resource_type: str, resource_id: str, sites: Sites = None
    ) -> StoredResource | None:
        """The current version, by id: the hottest path of the endpoint, so it runs one
        prepared statement without the ORM layers (about a tenth of the time of a Core select
        on SQLite). On PostgreSQL it is awaited, and the loop serves other requests meanwhile;
        SQLite's answer, in-process, costs less than a hop to a thread."""
        values = (resource_type, resource_id)
        if self.loop_reads is not None:
            row = await self.loop_reads.first_row(self._read_sql, values)
        else:
            row = raw.read_once(self.engine, self._read_sql, values)
        if row is None or (sites is not None and row[5] not in sites):
            return None  # another site's resource is as unknown as an absent one
        return StoredResource(row[0], row[1], row[2], self._last_updated(row[3]), row[4])

    def versions(
        self,
        resource_type: str,
        resource_id: str | None = None,
        version_id: int | None = None,
        since: datetime | None = None,
        limit: int = 1000,
        after: tuple[datetime, str, int] | None = None,
        sites: Sites = None,
    ) -> list[StoredResource]:
        """Versions, newest first: of one resource, or of a type (since a moment); `after`
        (last updated, id, version) of the last one a page showed, for the next page."""
        conditions = self._version_conditions(resource_type, since, sites)
        if resource_id is not None:
            conditions.append(versions.c.id == resource_id)
        if version_id is not None:
            conditions.append(versions.c.version_id == version_id)
        if after is not None:
            moment, last_id, last_version = after
            conditions.append(
                or_(
                    versions.c.last_updated < moment,
                    and_(versions.c.last_updated == moment, versions.c.id > last_id),
                    and_(
                        versions.c.last_updated == moment,
                        versions.c.id == last_id,
                        versions.c.version_id < last_version,
                    ),
                )
            )
        query = (
            select(
                versions.c.resource_type,
                versions.c.id,
                versions.c.version_id,
                versions.c.last_updated,
                versions.c.content,
            )
            .where(and_(*conditions))
            .order_by(versions.c.last_updated.desc(), versions.c.id, versions.c.version_id.desc())
            .limit(limit)
        )
        return [StoredResource(*row) for row in self._rows(query)]

    def count_versions(
        self,
        resource_type: str,
        since: datetime | None = None,
        sites: Sites = None,
        resource_id: str | None = None,
    ) -> int:
        """How many versions of a type, or of one resource, there are (since a moment): a
        history's total."""
        conditions = self._version_conditions(resource_type, since, sites)
        if resource_id is not None:
            conditions.append(versions.c.id == resource_id)
        query = select(func.count()).where(and_(*conditions))
        rows = self._rows(query)
        return int(rows[0][0]) if rows else 0

    @staticmethod
    def _version_conditions(
        resource_type: str, since: datetime | None, sites: Sites = None
    ) -> list[Any]:
        conditions: list[Any] = [versions.c.resource_type == resource_type]
        if since is not None:
            conditions.append(versions.c.last_updated > since)
        if sites is not None:
            # A resource's site never changes: its current row says it for every version.
            conditions.append(versions.c.id.in_(select(resources.c.id).where(*of_sites(sites))))
        return conditions
