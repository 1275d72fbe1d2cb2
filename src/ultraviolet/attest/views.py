"""Read-only views of the store for the API, the fleet page and the metrics."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select

from ultraviolet.attest.model import NodeState
from ultraviolet.attest.store import EvidenceRecord, Node, OutboxAlert, Store


@dataclass(frozen=True)
class NodeView:
    node_id: str
    state: str
    release: str | None
    enrolled_at: dt.datetime
    state_changed_at: dt.datetime
    last_evidence_at: dt.datetime | None
    ek_fingerprint: str
    failing: tuple[dict[str, Any], ...]  # failed or warned findings of the last evidence

    def to_json(self) -> dict[str, Any]:
        return {
            "node_id": self.node_id,
            "state": self.state,
            "release": self.release,
            "enrolled_at": self.enrolled_at.isoformat(),
            "state_changed_at": self.state_changed_at.isoformat(),
            "last_evidence_at": self.last_evidence_at.isoformat()
            if self.last_evidence_at
            else None,
            "ek_fingerprint": self.ek_fingerprint,
            "failing": list(self.failing),
        }


def _failing(findings_json: str | None) -> tuple[dict[str, Any], ...]:
    if not findings_json:
        return ()
    findings: list[dict[str, Any]] = json.loads(findings_json)
    return tuple(f for f in findings if f.get("severity") in ("fail", "warn"))


def _views(store: Store, node_id: str | None, limit: int | None) -> list[NodeView]:
    query = (
        select(Node, EvidenceRecord.findings)
        .outerjoin(EvidenceRecord, EvidenceRecord.id == Node.last_evidence_id)
        .order_by(Node.id)
    )
    if node_id is not None:
        query = query.where(Node.id == node_id)
    if limit is not None:
        query = query.limit(limit)
    with store.session() as session:
        rows = session.execute(query).all()
    return [
        NodeView(
            node_id=node.id,
            state=node.state,
            release=node.release,
            enrolled_at=node.enrolled_at,
            state_changed_at=node.state_changed_at,
            last_evidence_at=node.last_evidence_at,
            ek_fingerprint=node.ek_fingerprint,
            failing=_failing(findings),
        )
        for node, findings in rows
    ]


def node_view(store: Store, node_id: str) -> NodeView | None:
    found = _views(store, node_id, None)
    return found[0] if found else None


def node_views(store: Store, limit: int | None = None) -> list[NodeView]:
    return _views(store, None, limit)


def fleet_counts(store: Store) -> dict[str, int]:
    counts = {state.value: 0 for state in NodeState}
    with store.session() as session:
        for state, count in session.execute(select(Node.state, func.count()).group_by(Node.state)):
            counts[state] = count
    return counts


def pending_alerts(store: Store) -> int:
    with store.session() as session:
        count = session.scalar(
            select(func.count()).select_from(OutboxAlert).where(OutboxAlert.delivered_at.is_(None))
        )
    return int(count or 0)
