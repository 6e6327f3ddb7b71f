"""Alerts that fire once per incident and once more when it ends: the conditions are read from
the store at each check, an incident is a (kind, subject) that holds, and the webhook is told
of each firing and each end once (retried with tenacity; what it did not take is sent at the
next check)."""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import requests
from tenacity import Retrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from adapter.settings import Settings
from adapter.store.alerts import FIRING, Alert, AlertStore
from adapter.store.operations import OperationsReadings
from adapter.store.outbox import Outbox
from adapter.sync.engine import BackOff

log = logging.getLogger(__name__)
EHR_UNREACHABLE = "ehr_unreachable"
SAFETY_FACT_LATE = "safety_fact_late"
DEAD_LETTERS = "dead_letters"
CODE_PENDING = "code_pending"
KINDS = {
    EHR_UNREACHABLE: "The EHR is unreachable",
    SAFETY_FACT_LATE: "A safety fact is not in the EHR",
    DEAD_LETTERS: "The EHR refused resources",
    CODE_PENDING: "A local code waits for its mapping row",
}
WEBHOOK_ATTEMPTS = 4
WEBHOOK_TIMEOUT_SECONDS = 10.0


@dataclass(frozen=True)
class Condition:
    """What holds now: an incident's kind and subject, in words and as data."""

    kind: str
    subject: str
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.kind, self.subject)


class WebhookRefused(Exception):
    """The receiver did not take the notification (no answer, or not a 2xx)."""


@dataclass
class CheckReport:
    opened: int = 0
    closed: int = 0
    notified: int = 0


def _minutes(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


class AlertWatch:
    """Checks the conditions and keeps the alerts table and the webhook in step with them.
    `backoff` is the sync's (None when no EHR is configured: then nothing can be late to it)."""

    def __init__(
        self,
        settings: Settings,
        readings: OperationsReadings,
        outbox: Outbox,
        store: AlertStore,
        backoff: Callable[[], BackOff] | None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.readings = readings
        self.outbox = outbox
        self.store = store
        self.backoff = backoff
        self.sleep = sleep
        self.http = requests.Session()
        self.http.trust_env = False

    def conditions(self, now: datetime) -> list[Condition]:
        found: list[Condition] = []
        settings = self.settings
        if self.backoff is not None:
            since, reason = self.readings.run_streak()
            until = self.backoff().until
            if since and now - since >= timedelta(minutes=settings.alert_ehr_down_minutes):
                found.append(
                    Condition(
                        EHR_UNREACHABLE,
                        "EHR",
                        f"The EHR has not been reached for {_minutes(now - since)}: "
                        f"{reason or 'no answer'}",
                        {
                            "since": since.isoformat(),
                            "reason": reason,
                            "backing_off_until": until.isoformat() if until else None,
                        },
                    )
                )
        late = timedelta(minutes=settings.alert_safety_fact_minutes)
        # Without an EHR nothing is delivered, and nothing is late.
        facts = self.readings.late_safety_facts() if self.backoff is not None else []
        for fact in facts:
            if now - fact.since < late:
                continue
            what = (
                f"A protocol breach of session {fact.source_id}"
                if fact.source_type == "protocol"
                else f"The serious side effect {fact.source_id}"
            )
            found.append(
                Condition(
                    SAFETY_FACT_LATE,
                    f"{fact.source_type}/{fact.source_id}",
                    f"{what} is not in the EHR after {_minutes(now - fact.since)} "
                    f"({', '.join(fact.states)})",
                    {"since": fact.since.isoformat(), "states": list(fact.states)},
                )
            )
        dead = self.outbox.counts().get("dead", 0)
        if dead:
            found.append(
                Condition(
                    DEAD_LETTERS,
                    "outbox",
                    f"The EHR refused {dead} resource(s): see Waiting and refused",
                    {"dead": dead},
                )
            )
        pending = timedelta(hours=settings.alert_code_pending_hours)
        for code in self.readings.held_codes():
            if now - code.since < pending:
                continue
            effect = "holds" if code.state == "waiting" else "went out as text alone in"
            found.append(
                Condition(
                    CODE_PENDING,
                    f"{code.table}:{code.code}",
                    f"The code {code.code} has no row in codes/{code.table}.yaml for "
                    f"{_minutes(now - code.since)}; it {effect} {len(code.records)} record(s)",
                    {"table": code.table, "code": code.code, "state": code.state},
                )
            )
        return found

    def check(self, now: datetime | None = None) -> CheckReport:
        """Open the incidents that began, close those that ended, tell the webhook."""
        now = now or datetime.now(UTC)
        report = CheckReport()
        holding = {c.key: c for c in self.conditions(now)}
        firing = {a.key: a for a in self.store.firing()}
        for key, alert in firing.items():
            if key not in holding:
                self.store.close(alert.id, now)
                log.info("alert ended: %s %s", alert.kind, alert.subject)
                report.closed += 1
        for key, condition in holding.items():
            if key not in firing:
                self.store.open(
                    condition.kind, condition.subject, condition.summary, condition.detail, now
                )
                log.warning("alert: %s", condition.summary)
                report.opened += 1
        if self.settings.alert_webhook_url:
            report.notified = self.notify(self.settings.alert_webhook_url, now)
        return report

    def notify(self, url: str, now: datetime) -> int:
        """Send what the webhook has not been told, in order; stop at the first it refuses."""
        sent = 0
        for alert in self.store.unsent():
            states = ([FIRING] if alert.opened_sent_at is None else []) + (
                ["resolved"] if alert.closed_at else []
            )
            for state in states:
                try:
                    self._post(url, payload(alert, state))
                except WebhookRefused as refused:
                    log.warning("the alert webhook did not take a notification: %s", refused)
                    return sent
                self.store.sent(alert.id, state, now)
                sent += 1
        return sent

    def _post(self, url: str, body: dict[str, Any]) -> None:
        retrying = Retrying(
            retry=retry_if_exception_type(WebhookRefused),
            stop=stop_after_attempt(WEBHOOK_ATTEMPTS),
            wait=wait_exponential(multiplier=1, max=30),
            sleep=self.sleep,
            reraise=True,
        )
        retrying(self._post_once, url, body)

    def _post_once(self, url: str, body: dict[str, Any]) -> None:
        try:
            answer = self.http.post(url, json=body, timeout=WEBHOOK_TIMEOUT_SECONDS)
        except requests.RequestException as exc:
            raise WebhookRefused(f"no answer ({type(exc).__name__})") from None
        if not 200 <= answer.status_code < 300:
            raise WebhookRefused(f"answered {answer.status_code}")


def payload(alert: Alert, state: str) -> dict[str, Any]:
    """The JSON the webhook receives: no patient data, only record ids and codes."""
    return {
        "alert_id": alert.id,
        "state": state,
        "kind": alert.kind,
        "title": KINDS.get(alert.kind, alert.kind),
        "subject": alert.subject,
        "summary": alert.summary,
        "detail": alert.detail,
        "fired_at": alert.opened_at.isoformat(),
        "ended_at": alert.closed_at.isoformat() if alert.closed_at else None,
    }
