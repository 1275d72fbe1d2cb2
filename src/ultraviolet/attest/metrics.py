"""Prometheus metrics. Counters count what this worker did (Prometheus sums the workers);
fleet gauges are read from the shared database at scrape time, so every worker reports the
same fleet."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ultraviolet.attest.store import Store
from ultraviolet.attest.views import fleet_counts, pending_alerts

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class _FleetCollector(Collector):
    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nodes = GaugeMetricFamily(
            "ultraviolet_attest_nodes", "Enrolled nodes by attestation state", labels=["state"]
        )
        for state, count in fleet_counts(self.store).items():
            nodes.add_metric([state], count)
        yield nodes
        yield GaugeMetricFamily(
            "ultraviolet_attest_alerts_pending",
            "Alerts in the outbox not yet delivered",
            value=pending_alerts(self.store),
        )


class Metrics:
    def __init__(self, store: Store) -> None:
        self.registry = CollectorRegistry()
        self.evidence = Counter(
            "ultraviolet_attest_evidence",
            "Evidence submissions appraised, by resulting state",
            ["state"],
            registry=self.registry,
        )
        self.failed_findings = Counter(
            "ultraviolet_attest_failed_findings",
            "Failed or warned findings, by finding id",
            ["finding"],
            registry=self.registry,
        )
        self.appraisal_seconds = Histogram(
            "ultraviolet_attest_evidence_seconds",
            "Time to appraise and record one evidence submission",
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
        )
        self.nonces = Counter("ultraviolet_attest_nonces", "Nonces issued", registry=self.registry)
        self.enrolments = Counter(
            "ultraviolet_attest_enrolments",
            "Enrolment steps, by result",
            ["result"],
            registry=self.registry,
        )
        self.alerts = Counter(
            "ultraviolet_attest_alert_deliveries",
            "Alert delivery attempts, by result",
            ["result"],
            registry=self.registry,
        )
        self.stale = Counter(
            "ultraviolet_attest_stale_marked", "Nodes marked stale", registry=self.registry
        )
        self.registry.register(_FleetCollector(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)
