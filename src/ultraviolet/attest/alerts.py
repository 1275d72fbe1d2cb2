"""Alerts: decided in the transaction that records the evidence, delivered later from an outbox.

One alert exists per (node, check), where a check is a finding id or `checkin.missed`; its
fingerprint is SHA-256 of both. `alert_state` remembers whether it is firing, so an alert is
queued only when it changes (fires or resolves), never again while unchanged. Queued alerts are
rows of `alert_outbox`, one per sink, written in the same transaction as the evidence record or
the stale marking: a crash loses neither or both. A dispatcher (any worker) leases due rows,
POSTs them and retries failures with exponential backoff; delivery is at least once.

Sinks: a webhook gets the alert as JSON (`format` 1, see docs/attest.md); Prometheus
Alertmanager gets a one-element list per its v2 API (POST /api/v2/alerts). A firing alert's
endsAt lies FIRING_HORIZON ahead so that Alertmanager keeps it active without resends; resolving
sends endsAt = now.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import Connection, bindparam, exists, insert, or_, select, update
from sqlalchemy.orm import aliased

from ultraviolet.attest.model import Finding, NodeState, Severity
from ultraviolet.attest.store import AlertState, OutboxAlert, Store, table, utcnow

log = logging.getLogger("ultraviolet.attest.alerts")

CHECKIN_MISSED = "checkin.missed"
ALERT_NAME = "UltravioletAttestation"
WEBHOOK_FORMAT = 1
FIRING_HORIZON = dt.timedelta(days=7)
LEASE = dt.timedelta(seconds=60)
BACKOFF_BASE = 1.0  # seconds; doubled per failed attempt
BACKOFF_CAP = 300.0


@dataclass(frozen=True)
class Sink:
    kind: str  # "webhook" or "alertmanager"
    url: str  # for alertmanager the base URL; /api/v2/alerts is appended

    def __post_init__(self) -> None:
        if self.kind not in ("webhook", "alertmanager"):
            raise ValueError(f"unknown alert sink {self.kind!r}")

    @property
    def endpoint(self) -> str:
        if self.kind == "alertmanager":
            return self.url.rstrip("/") + "/api/v2/alerts"
        return self.url


@dataclass(frozen=True)
class AlertChange:
    node_id: str
    check: str
    firing: bool
    severity: str
    state: str
    message: str
    starts_at: dt.datetime
    changed_at: dt.datetime

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.node_id, self.check)


def fingerprint(node_id: str, check: str) -> str:
    return hashlib.sha256(f"{node_id}\0{check}".encode()).hexdigest()


def _iso(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def webhook_payload(change: AlertChange, generator_url: str) -> dict[str, Any]:
    return {
        "format": WEBHOOK_FORMAT,
        "fingerprint": change.fingerprint,
        "status": "firing" if change.firing else "resolved",
        "node_id": change.node_id,
        "check": change.check,
        "severity": change.severity,
        "node_state": change.state,
        "message": change.message,
        "starts_at": _iso(change.starts_at),
        "ends_at": None if change.firing else _iso(change.changed_at),
        "url": generator_url,
    }


def alertmanager_payload(change: AlertChange, generator_url: str) -> list[dict[str, Any]]:
    """postableAlerts of Alertmanager's v2 OpenAPI: labels identify the alert."""
    ends_at = change.starts_at + FIRING_HORIZON if change.firing else change.changed_at
    return [
        {
            "labels": {
                "alertname": ALERT_NAME,
                "node": change.node_id,
                "check": change.check,
                "severity": change.severity,
            },
            "annotations": {
                "summary": f"{change.node_id}: {change.check} {change.severity}",
                "description": change.message,
                "node_state": change.state,
            },
            "startsAt": _iso(change.starts_at),
            "endsAt": _iso(ends_at),
            "generatorURL": generator_url,
        }
    ]


_ALERT_STATE = table(AlertState)
_OUTBOX = table(OutboxAlert)
_ALERT_STATES = (
    select(
        _ALERT_STATE.c.check,
        _ALERT_STATE.c.firing,
        _ALERT_STATE.c.severity,
        _ALERT_STATE.c.starts_at,
    )
    .where(_ALERT_STATE.c.node_id == bindparam("node_id"))
    .with_for_update()
)
_INSERT_ALERT_STATE = insert(_ALERT_STATE)
_UPDATE_ALERT_STATE = update(_ALERT_STATE).where(
    _ALERT_STATE.c.fingerprint == bindparam("fingerprint_")
)
_INSERT_OUTBOX = insert(_OUTBOX)


@dataclass
class _Stored:
    """One row of alert_state as this transaction sees it."""

    firing: bool
    severity: str
    starts_at: dt.datetime


def _alert_states(connection: Connection, node_id: str) -> dict[str, _Stored]:
    """The node's alerts by check, in one query (the caller holds the node's row lock)."""
    rows = connection.execute(_ALERT_STATES, {"node_id": node_id})
    return {row.check: _Stored(row.firing, row.severity, row.starts_at) for row in rows}


def _change(
    connection: Connection,
    known: dict[str, _Stored],
    node_id: str,
    check: str,
    firing: bool,
    now: dt.datetime,
    **fields: str,
) -> AlertChange | None:
    """Flip the stored state of one alert; None when it is unchanged (nothing to send)."""
    current = known.get(check)
    if current is None:
        if not firing:
            return None
        current = _Stored(True, fields["severity"], now)
        connection.execute(
            _INSERT_ALERT_STATE,
            {
                "fingerprint": fingerprint(node_id, check), "node_id": node_id, "check": check,
                "firing": True, "severity": current.severity, "starts_at": now, "changed_at": now,
            },
        )  # fmt: skip
        known[check] = current
    elif current.firing == firing:
        return None
    else:
        current.firing = firing
        values: dict[str, Any] = {"firing": firing, "changed_at": now}
        if firing:
            current.starts_at = now
            current.severity = fields["severity"]
            values.update(starts_at=now, severity=current.severity)
        key = fingerprint(node_id, check)
        connection.execute(_UPDATE_ALERT_STATE, {"fingerprint_": key, **values})
    # Alertmanager identifies an alert by its labels: a resolution carries the severity the
    # alert fired with, or it would be another alert.
    return AlertChange(
        node_id=node_id,
        check=check,
        firing=firing,
        starts_at=current.starts_at,
        changed_at=now,
        severity=current.severity,
        state=fields["state"],
        message=fields["message"],
    )


def _enqueue(
    connection: Connection, changes: Iterable[AlertChange], sinks: Sequence[Sink], base_url: str
) -> int:
    count = 0
    for change in changes:
        generator_url = f"{base_url.rstrip('/')}/#node-{change.node_id}"
        for sink in sinks:
            payload: Any
            if sink.kind == "alertmanager":
                payload = alertmanager_payload(change, generator_url)
            else:
                payload = webhook_payload(change, generator_url)
            row = {
                "fingerprint": change.fingerprint,
                "sink": sink.kind,
                "url": sink.endpoint,
                "payload": json.dumps(payload, sort_keys=True),
                "created_at": change.changed_at,
                "attempts": 0,
                "next_attempt_at": change.changed_at,
                "lease_until": None,
                "delivered_at": None,
                "last_error": None,
            }
            connection.execute(_INSERT_OUTBOX, row)  # one at a time: ids keep the changes' order
            count += 1
    return count


def record_appraisal(
    connection: Connection,
    *,
    node_id: str,
    findings: Sequence[Finding],
    state: NodeState,
    now: dt.datetime,
    sinks: Sequence[Sink],
    base_url: str,
) -> list[AlertChange]:
    """Alerts that fire or resolve because of one appraisal (and resolve a missed check-in)."""
    changes = []
    known = _alert_states(connection, node_id)
    for finding in findings:
        firing = finding.severity in (Severity.FAIL, Severity.WARN)  # not PASS or SKIP
        change = _change(
            connection, known, node_id, finding.id.value, firing, now,
            severity=finding.severity.value, state=state.value, message=finding.message,
        )  # fmt: skip
        if change is not None:
            changes.append(change)
    checkin = _change(
        connection, known, node_id, CHECKIN_MISSED, False, now,
        severity="pass", state=state.value, message="evidence received",
    )  # fmt: skip
    if checkin is not None:
        changes.append(checkin)
    _enqueue(connection, changes, sinks, base_url)
    return changes


def record_missed_checkin(
    connection: Connection,
    *,
    node_id: str,
    last_seen: dt.datetime | None,
    now: dt.datetime,
    sinks: Sequence[Sink],
    base_url: str,
) -> list[AlertChange]:
    seen = _iso(last_seen) if last_seen else "never"
    change = _change(
        connection, _alert_states(connection, node_id), node_id, CHECKIN_MISSED, True, now,
        severity=Severity.FAIL.value, state=NodeState.STALE.value,
        message=f"no evidence within the check-in interval (last: {seen})",
    )  # fmt: skip
    changes = [change] if change is not None else []
    _enqueue(connection, changes, sinks, base_url)
    return changes


def backoff(attempts: int) -> dt.timedelta:
    return dt.timedelta(seconds=min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1)))


class Dispatcher:
    """Delivers due outbox rows; several workers may run one each (rows are leased)."""

    def __init__(self, store: Store, *, timeout: float = 5.0, batch: int = 50) -> None:
        self.store = store
        self.batch = batch
        self.client = httpx.Client(timeout=timeout)

    def close(self) -> None:
        self.client.close()

    def _lease(self, now: dt.datetime) -> list[OutboxAlert]:
        leased: list[OutboxAlert] = []
        # A sink sees one alert's changes in order: a row waits while an older row of the same
        # alert for the same sink is undelivered (else a retried "firing" could land after the
        # "resolved" that followed it, and the alert would stay firing at the receiver).
        earlier = aliased(OutboxAlert)
        blocked = exists().where(
            earlier.fingerprint == OutboxAlert.fingerprint,
            earlier.url == OutboxAlert.url,
            earlier.id < OutboxAlert.id,
            earlier.delivered_at.is_(None),
        )
        with self.store.session.begin() as session:
            due = session.scalars(
                select(OutboxAlert.id)
                .where(OutboxAlert.delivered_at.is_(None), OutboxAlert.next_attempt_at <= now)
                .where(or_(OutboxAlert.lease_until.is_(None), OutboxAlert.lease_until < now))
                .where(~blocked)
                .order_by(OutboxAlert.id)
                .limit(self.batch)
            ).all()
            for row_id in due:
                # The conditional update is the lease: of two workers only one matches the row.
                claimed = session.execute(
                    update(OutboxAlert)
                    .where(OutboxAlert.id == row_id, OutboxAlert.delivered_at.is_(None))
                    .where(or_(OutboxAlert.lease_until.is_(None), OutboxAlert.lease_until < now))
                    .values(lease_until=now + LEASE)
                )
                if getattr(claimed, "rowcount", 0) == 1:
                    row = session.get(OutboxAlert, row_id)
                    if row is not None:
                        leased.append(row)
        return leased

    def _send(self, row: OutboxAlert) -> str | None:
        try:
            response = self.client.post(
                row.url, content=row.payload, headers={"Content-Type": "application/json"}
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code >= 300:
            return f"HTTP {response.status_code}: {response.text[:200]}"
        return None

    def run_once(self, now: dt.datetime | None = None) -> tuple[int, int]:
        """Send what is due; (delivered, failed)."""
        now = now or utcnow()
        delivered = failed = 0
        for row in self._lease(now):
            error = self._send(row)
            with self.store.session.begin() as session:
                stored = session.get(OutboxAlert, row.id)
                if stored is None:
                    continue
                stored.attempts += 1
                stored.lease_until = None
                if error is None:
                    stored.delivered_at = utcnow()
                    stored.last_error = None
                    delivered += 1
                else:
                    stored.last_error = error
                    stored.next_attempt_at = utcnow() + backoff(stored.attempts)
                    failed += 1
                    log.warning("alert %s to %s failed: %s", row.id, row.url, error)
        return delivered, failed
