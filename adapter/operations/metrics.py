"""The service's metrics in the Prometheus text format: what this process counted since it
started (intake, runs, requests to the EHR, token refusals), and what the store holds now
(read at each scrape)."""

import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import requests
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from adapter.runtime import Runtime
from adapter.security.audit import AuditWriter
from adapter.store.alerts import AlertStore
from adapter.store.operations import OperationsReadings
from adapter.sync.engine import SyncReport

disable_created_metrics()  # type: ignore[no-untyped-call]  # the `_created` series say when this process started, and no more
RUN_SECONDS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
REQUEST_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
JOURNEY_SECONDS = (0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 900, 3600, 14400, 86400)


class StoreCollector(Collector):
    """Gauges read from the store at each scrape: they hold for every process on the store."""

    def __init__(self, runtime: Runtime, writer: AuditWriter) -> None:
        self.runtime = runtime
        self.readings = OperationsReadings(runtime.store.engine)
        self.alerts = AlertStore(runtime.store.engine)
        self.writer = writer

    def collect(self) -> Iterator[Metric]:
        now = datetime.now(UTC)
        yield _gauge(
            "adapter_records",
            "Clinic records stored, by type and mapping state (pending, mapped, uncoded, "
            "waiting for a mapping row or their session, failed).",
            ["record_type", "mapping_state"],
            self.readings.records_by_state().items(),
        )
        held = self.readings.held_codes()
        codes: dict[tuple[str, str], int] = {}
        for code in held:
            codes[(code.table, code.state)] = codes.get((code.table, code.state), 0) + 1
        yield _gauge(
            "adapter_mapping_codes_without_row",
            "Local codes without a row in their table: holding records (waiting) or sent as "
            "text alone (uncoded).",
            ["table", "state"],
            codes.items(),
        )
        yield _gauge(
            "adapter_resources",
            "FHIR resources by type and delivery state to the EHR.",
            ["resource_type", "state"],
            self.readings.resources_by_state().items(),
        )
        oldest = self.readings.oldest_undelivered()
        yield _gauge(
            "adapter_oldest_undelivered_seconds",
            "Age of the oldest resource version not yet in the EHR (0: none).",
            [],
            [((), (now - oldest).total_seconds() if oldest else 0.0)],
        )
        until = self.runtime.longest_backoff().until
        backing_off = until is not None and until > now
        yield _gauge(
            "adapter_ehr_breaker_open",
            "1 while the sync backs off from an EHR that is down (the breaker opened).",
            [],
            [((), 1.0 if backing_off else 0.0)],
        )
        yield _gauge(
            "adapter_ehr_backoff_until_seconds",
            "Unix time until which the sync backs off (0: it does not).",
            [],
            [((), until.timestamp() if backing_off and until else 0.0)],
        )
        success = self.readings.last_success()
        yield _gauge(
            "adapter_sync_last_success_seconds",
            "Unix time of the end of the last completed sync run (0: none yet).",
            [],
            [((), success.timestamp() if success else 0.0)],
        )
        yield _gauge(
            "adapter_audit_queue_depth",
            "Audit entries kept in memory, not yet written to the store.",
            [],
            [((), float(len(self.writer.entries)))],
        )
        yield _gauge(
            "adapter_alerts_open",
            "Alerts firing now, by kind.",
            ["kind"],
            [((kind,), count) for kind, count in self.alerts.open_counts().items()],
        )


def _gauge(
    name: str,
    documentation: str,
    labels: list[str],
    values: Iterable[tuple[tuple[str, ...], float]],
) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=labels)
    for label_values, value in values:
        gauge.add_metric(list(label_values), value)
    return gauge


class Metrics:
    """This process's instruments and the store's gauges, in a registry of their own."""

    def __init__(self, runtime: Runtime, writer: AuditWriter) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.intake = Counter(
            "adapter_intake_records",
            "Records received at the intake API, by type and outcome (created, amended, "
            "unchanged, stale, rejected).",
            ["record_type", "outcome"],
            registry=self.registry,
        )
        self.token_refusals = Counter(
            "adapter_token_refusals",
            "Requests for an access token at /auth/token that were refused.",
            registry=self.registry,
        )
        self.sync_runs = Counter(
            "adapter_sync_runs",
            "Sync runs of this process, by trigger and status (completed, failed).",
            ["trigger", "status"],
            registry=self.registry,
        )
        self.sync_outcomes = Counter(
            "adapter_sync_resource_outcomes",
            "What the sync runs of this process did with each resource (delivered, "
            "delivered_partially, retry_later, waiting, dead, skipped).",
            ["outcome"],
            registry=self.registry,
        )
        self.sync_duration = Histogram(
            "adapter_sync_run_duration_seconds",
            "Duration of the sync runs of this process.",
            buckets=RUN_SECONDS,
            registry=self.registry,
        )
        self.journey = Histogram(
            "adapter_record_to_ehr_seconds",
            "From a record's receipt at intake to its resource's first answer from the EHR "
            "(delivered), for each resource version the sync runs of this process delivered.",
            buckets=JOURNEY_SECONDS,
            registry=self.registry,
        )
        self.ehr_requests = Histogram(
            "adapter_ehr_request_duration_seconds",
            "Time to the EHR's answer, by method and status code.",
            ["method", "status"],
            buckets=REQUEST_SECONDS,
            registry=self.registry,
        )
        self.registry.register(StoreCollector(runtime, writer))
        for sync in runtime.syncs():
            sync.client.session.hooks["response"].append(self._answered)

    def _answered(self, response: requests.Response, *_: Any, **__: Any) -> None:
        """A requests hook: each answer of the EHR, timed by requests itself."""
        method = response.request.method or "GET"
        self.ehr_requests.labels(method, str(response.status_code)).observe(
            response.elapsed.total_seconds()
        )

    def run(self, trigger: str, report: SyncReport, started: float) -> None:
        """Count a sync run that was recorded (idle, deferred and busy runs are not)."""
        if report.run_id is None:
            return
        self.sync_runs.labels(trigger, report.status).inc()
        self.sync_duration.observe(time.monotonic() - started)
        for outcome, count in report.counts.items():
            self.sync_outcomes.labels(outcome).inc(count)
        for seconds in report.journeys:
            self.journey.observe(seconds)

    def received(self, outcomes: Iterable[tuple[str | None, str]]) -> None:
        for record_type, outcome in outcomes:
            self.intake.labels(record_type or "unknown", outcome).inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
