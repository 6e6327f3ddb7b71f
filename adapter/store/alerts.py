"""The alerts table: one row per incident, opened once, closed once, each notified once."""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Engine, func, or_, select, update

from adapter.store.tables import alerts

FIRING, RESOLVED = "firing", "resolved"


@dataclass(frozen=True)
class Alert:
    id: int
    kind: str
    subject: str
    summary: str
    detail: dict[str, Any]
    opened_at: datetime
    closed_at: datetime | None
    opened_sent_at: datetime | None
    closed_sent_at: datetime | None

    @property
    def state(self) -> str:
        return RESOLVED if self.closed_at else FIRING

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)


def _alert(row: Any) -> Alert:
    return Alert(
        row.id,
        row.kind,
        row.subject,
        row.summary,
        orjson.loads(row.detail or "{}"),
        row.opened_at,
        row.closed_at,
        row.opened_sent_at,
        row.closed_sent_at,
    )


class AlertStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def firing(self) -> list[Alert]:
        query = select(alerts).where(alerts.c.closed_at.is_(None)).order_by(alerts.c.id)
        with self.engine.connect() as connection:
            return [_alert(row) for row in connection.execute(query)]

    def recent(self, limit: int = 50) -> list[Alert]:
        """The latest alerts, firing or resolved, newest first."""
        query = select(alerts).order_by(alerts.c.id.desc()).limit(limit)
        with self.engine.connect() as connection:
            return [_alert(row) for row in connection.execute(query)]

    def open_counts(self) -> dict[str, int]:
        query = (
            select(alerts.c.kind, func.count())
            .where(alerts.c.closed_at.is_(None))
            .group_by(alerts.c.kind)
        )
        with self.engine.connect() as connection:
            return {row[0]: row[1] for row in connection.execute(query)}

    def open(
        self, kind: str, subject: str, summary: str, detail: dict[str, Any], now: datetime
    ) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                alerts.insert().values(
                    kind=kind,
                    subject=subject[:255],
                    summary=summary,
                    detail=orjson.dumps(detail).decode(),
                    opened_at=now,
                )
            )

    def close(self, alert_id: int, now: datetime) -> None:
        with self.engine.begin() as connection:
            connection.execute(
                update(alerts)
                .where(alerts.c.id == alert_id, alerts.c.closed_at.is_(None))
                .values(closed_at=now)
            )

    def unsent(self) -> list[Alert]:
        """Alerts whose firing or end the webhook has not been told of, oldest first."""
        query = (
            select(alerts)
            .where(
                or_(
                    alerts.c.opened_sent_at.is_(None),
                    alerts.c.closed_at.is_not(None) & alerts.c.closed_sent_at.is_(None),
                )
            )
            .order_by(alerts.c.id)
        )
        with self.engine.connect() as connection:
            return [_alert(row) for row in connection.execute(query)]

    def sent(self, alert_id: int, state: str, now: datetime) -> None:
        column = "opened_sent_at" if state == FIRING else "closed_sent_at"
        with self.engine.begin() as connection:
            connection.execute(update(alerts).where(alerts.c.id == alert_id).values({column: now}))
