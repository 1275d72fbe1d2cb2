"""The verifier's operations, independent of HTTP: enrol, activate, nonces, evidence, state.

Each operation is one or two short transactions on the store, so any number of stateless
workers can share one database. The evidence path appraises first (CPU only) and then, in one
transaction, consumes the nonce (a conditional UPDATE: of two submissions with the same nonce
exactly one matches), writes the evidence record, the node's new state and the alerts.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import hmac
import json
import secrets
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import Connection, LargeBinary, bindparam, delete, func, insert, select, update
from sqlalchemy.orm import Session

from ultraviolet.attest import alerts
from ultraviolet.attest.appraise import appraise
from ultraviolet.attest.enrolment import ChallengeMaker, EkPolicy, check_ak, ek_fingerprint
from ultraviolet.attest.errors import BadRequest, Conflict, Forbidden, Gone, NotFound
from ultraviolet.attest.model import Appraisal, Finding, FindingId, NodeState, Severity
from ultraviolet.attest.references import load_accepted
from ultraviolet.attest.store import (
    ApprovedEk,
    Enrolment,
    EvidenceRecord,
    Node,
    Nonce,
    Release,
    Store,
    UtcDateTime,
    table,
    utcnow,
)
from ultraviolet.errors import UltravioletError
from ultraviolet.formats.evidence import Evidence, EvidenceError, evidence_from_document
from ultraviolet.formats.reference import parse_reference
from ultraviolet.formats.tpm import PublicArea, parse_public_2b
from ultraviolet.formats.tpmcredential import make_credential

NONCE_SIZE = 32
PARSED_AK_CACHE = 4096  # parsed AK public areas kept, by their bytes (a re-enrolled AK is new)

# The hot paths (nonce, evidence) are Core statements built once: the ORM's unit of work and
# identity map cost more CPU than the appraisal itself, and a prebuilt statement's compiled
# form is found in the engine's cache without regenerating its cache key.
_NODES, _NONCES, _RELEASES = table(Node), table(Nonce), table(Release)
_ISSUE_NONCE = (
    insert(_NONCES)
    .from_select(
        ["value", "node_id", "issued_at", "expires_at"],
        select(
            bindparam("b_value", type_=LargeBinary),
            _NODES.c.id,
            bindparam("b_issued_at", type_=UtcDateTime),
            bindparam("b_expires_at", type_=UtcDateTime),
        ).where(_NODES.c.id == bindparam("b_node_id")),
    )
    .execution_options(preserve_rowcount=True)
)  # an INSERT's rowcount is kept only if asked
_NODE_AK = select(_NODES.c.ak_public, _NODES.c.ak_name).where(_NODES.c.id == bindparam("node_id"))
_LOCK_NODE = (
    select(_NODES.c.ak_name, _NODES.c.state)
    .where(_NODES.c.id == bindparam("node_id"))
    .with_for_update()
)
_UPDATE_NODE = update(_NODES).where(_NODES.c.id == bindparam("node_id_"))
_RELEASE_KEYS = select(_RELEASES.c.name, _RELEASES.c.version, _RELEASES.c.uploaded_at).order_by(
    _RELEASES.c.name, _RELEASES.c.version
)
_RELEASE_DOCUMENTS = select(_RELEASES.c.document).order_by(_RELEASES.c.name, _RELEASES.c.version)
_CONSUME_NONCE = (
    update(_NONCES)
    .where(_NONCES.c.value == bindparam("b_value"), _NONCES.c.node_id == bindparam("b_node_id"))
    .where(_NONCES.c.used_at.is_(None), _NONCES.c.expires_at > bindparam("b_now"))
    .values(used_at=bindparam("b_used_at"))
)
_NONCE = select(_NONCES.c.node_id, _NONCES.c.used_at, _NONCES.c.expires_at).where(
    _NONCES.c.value == bindparam("value")
)
_INSERT_EVIDENCE = insert(table(EvidenceRecord))


class Appraiser(Protocol):
    def __call__(
        self, evidence: Evidence, *, ak: PublicArea, nonce: bytes, accepted: Any
    ) -> Appraisal: ...


ReleaseLoader = Callable[[Sequence[bytes], Sequence[int]], Any]


@dataclass(frozen=True)
class VerifierConfig:
    pcrs: tuple[int, ...] = (4, 7, 11)
    nonce_ttl: dt.timedelta = dt.timedelta(minutes=2)
    enrolment_ttl: dt.timedelta = dt.timedelta(minutes=10)
    check_in_interval: dt.timedelta = dt.timedelta(minutes=10)
    sinks: tuple[alerts.Sink, ...] = ()
    base_url: str = "http://localhost:8400"


@dataclass(frozen=True)
class Challenge:
    enrolment: str
    credential_blob: bytes
    encrypted_secret: bytes


@dataclass(frozen=True)
class Outcome:
    state: NodeState
    findings: tuple[Finding, ...]
    release: str | None
    evidence_id: int


@dataclass
class _AcceptedCache:
    key: tuple[tuple[str, str, str], ...] | None = None
    value: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Verifier:
    def __init__(
        self,
        store: Store,
        *,
        config: VerifierConfig,
        appraiser: Appraiser = appraise,
        load_accepted: ReleaseLoader = load_accepted,
        make_challenge: ChallengeMaker | None = make_credential,
        ek_policy: EkPolicy | None = None,
        clock: Callable[[], dt.datetime] = utcnow,
    ) -> None:
        self.store = store
        self.appraiser = appraiser
        self.load_accepted = load_accepted
        self.make_challenge = make_challenge
        self.config = config
        self.ek_policy = ek_policy or EkPolicy()
        self.clock = clock
        self._accepted = _AcceptedCache()
        # Keyed by the AK's bytes, so a node that re-enrols with another AK is never appraised
        # with its old key; PublicArea is frozen, so sharing one between threads is safe.
        self._parse_ak = functools.lru_cache(maxsize=PARSED_AK_CACHE)(parse_public_2b)

    # Enrolment.

    def approve_ek(self, fingerprint: str, comment: str = "") -> None:
        with self.store.session.begin() as session:
            if session.get(ApprovedEk, fingerprint) is None:
                session.add(ApprovedEk(fingerprint=fingerprint, comment=comment,
                                       approved_at=self.clock()))  # fmt: skip

    def enrol(
        self, node_id: str, ek_public: bytes, ek_certificate: bytes | None, ak_public: bytes
    ) -> Challenge:
        ek = self.ek_policy.parse_ek(ek_public)
        ak = check_ak(ak_public)
        fingerprint = ek_fingerprint(ek)
        now = self.clock()
        with self.store.session.begin() as session:
            self.ek_policy.check(session, fingerprint, ek_certificate, now)
            node = session.get(Node, node_id)
            if node is not None and node.ek_fingerprint != fingerprint:
                raise Conflict("enrol.node-exists", f"node {node_id} is enrolled with another EK")
        secret = secrets.token_bytes(32)
        blob, encrypted = self.ek_policy.challenge(self.make_challenge, ek, ak.name(), secret)
        enrolment_id = secrets.token_hex(16)
        with self.store.session.begin() as session:
            session.add(
                Enrolment(
                    id=enrolment_id, node_id=node_id, ek_public=ek_public,
                    ek_certificate=ek_certificate, ek_fingerprint=fingerprint,
                    ak_public=ak_public, ak_name=ak.name(),
                    secret_sha256=hashlib.sha256(secret).digest(), created_at=now,
                    expires_at=now + self.config.enrolment_ttl, status="pending",
                )
            )  # fmt: skip
        return Challenge(enrolment_id, blob, encrypted)

    def activate(self, enrolment_id: str, secret: bytes) -> tuple[str, NodeState]:
        """The node proved that its TPM holds the EK and the AK: it is enrolled."""
        now = self.clock()
        with self.store.session.begin() as session:
            enrolment = session.get(Enrolment, enrolment_id, with_for_update=True)
            if enrolment is None:
                raise NotFound("enrolment.unknown", f"no enrolment {enrolment_id}")
            if enrolment.status != "pending":
                raise Gone("enrolment.used", f"enrolment {enrolment_id} is {enrolment.status}")
            if enrolment.expires_at <= now:
                enrolment.status = "expired"
                raise Gone("enrolment.expired", f"enrolment {enrolment_id} expired")
            proof = hashlib.sha256(secret).digest()
            right = hmac.compare_digest(proof, enrolment.secret_sha256)
            # One try per challenge: a wrong answer burns it (no guessing).
            enrolment.status = "activated" if right else "failed"
            state = self._enrol_node(session, enrolment, now) if right else None
        if state is None:
            raise Forbidden("enrolment.secret", "the activated secret is wrong")
        return enrolment.node_id, state

    def _enrol_node(self, session: Session, enrolment: Enrolment, now: dt.datetime) -> NodeState:
        node = session.get(Node, enrolment.node_id, with_for_update=True)
        if node is None:
            node = Node(id=enrolment.node_id, enrolled_at=now, last_evidence_at=None)
            session.add(node)
        elif node.ek_fingerprint != enrolment.ek_fingerprint:
            raise Conflict("enrol.node-exists", f"node {node.id} is enrolled with another EK")
        node.ek_public = enrolment.ek_public
        node.ek_fingerprint = enrolment.ek_fingerprint
        node.ak_public = enrolment.ak_public
        node.ak_name = enrolment.ak_name
        # A (re-)enrolled AK has shown nothing yet: no trust carried over from an old AK.
        node.state = NodeState.UNKNOWN.value
        node.state_changed_at = now
        node.release = None
        return NodeState.UNKNOWN

    # Challenges and evidence.

    def issue_nonce(self, node_id: str) -> tuple[bytes, dt.datetime]:
        now = self.clock()
        value = secrets.token_bytes(NONCE_SIZE)
        expires = now + self.config.nonce_ttl
        with self.store.autocommit.begin() as connection:
            # One statement (so no transaction is needed): a nonce row exists only if the node
            # does.
            parameters: dict[str, Any] = {"b_node_id": node_id, "b_value": value}
            parameters |= {"b_issued_at": now, "b_expires_at": expires}
            issued = connection.execute(_ISSUE_NONCE, parameters)
            if issued.rowcount != 1:
                raise NotFound("node.unknown", f"node {node_id} is not enrolled")
        return value, expires

    def accepted_releases(self, connection: Connection | None = None) -> Any:
        """The loaded accepted releases, reloaded when the releases table changed."""
        if connection is None:
            with self.store.engine.connect() as opened:
                return self.accepted_releases(opened)
        rows = connection.execute(_RELEASE_KEYS).all()
        key = tuple((name, version, uploaded.isoformat()) for name, version, uploaded in rows)
        with self._accepted.lock:
            if key != self._accepted.key:
                documents = list(connection.execute(_RELEASE_DOCUMENTS).scalars())
                self._accepted.value = self.load_accepted(documents, self.config.pcrs)
                self._accepted.key = key
            return self._accepted.value

    def _read_for_appraisal(self, node_id: str) -> tuple[bytes, bytes, Any]:
        """(AK public, AK name, accepted releases or the UltravioletError loading them), read
        before the appraisal; the evidence's transaction checks the AK again."""
        with self.store.autocommit.connect() as connection:
            node = connection.execute(_NODE_AK, {"node_id": node_id}).first()
            if node is None:
                raise NotFound("node.unknown", f"node {node_id} is not enrolled")
            try:
                accepted = self.accepted_releases(connection)
            except UltravioletError as exc:  # reported after the evidence is known to parse
                accepted = exc
        return node.ak_public, node.ak_name, accepted

    def _appraise(
        self, ak_public: bytes, nonce: bytes, document: Mapping[str, Any], accepted: Any
    ) -> Appraisal:
        try:
            evidence = evidence_from_document(document)
        except EvidenceError as exc:
            return Appraisal((Finding(FindingId.EVIDENCE_FORMAT, Severity.FAIL, str(exc)),))
        if isinstance(accepted, UltravioletError):  # e.g. every release retired: no match
            message = f"no usable accepted releases: {accepted}"
            return Appraisal((Finding(FindingId.PCR11_REFERENCE, Severity.FAIL, message),))
        try:
            ak = self._parse_ak(ak_public)
            return self.appraiser(evidence, ak=ak, nonce=nonce, accepted=accepted)
        except UltravioletError as exc:  # the appraisal reports findings; this is a safety net
            return Appraisal((Finding(FindingId.EVIDENCE_FORMAT, Severity.FAIL, str(exc)),))

    def submit_evidence(self, node_id: str, nonce: bytes, document: Mapping[str, Any]) -> Outcome:
        ak_public, ak_name, accepted = self._read_for_appraisal(node_id)
        appraisal = self._appraise(ak_public, nonce, document, accepted)
        raw = json.dumps(document, sort_keys=True).encode()
        now = self.clock()
        with self.store.engine.begin() as connection:
            # The node row is locked first: the evidence row's foreign key takes a share lock
            # on it, and upgrading that later would deadlock two concurrent submissions.
            stored = connection.execute(_LOCK_NODE, {"node_id": node_id}).first()
            if stored is None:  # removed meanwhile
                raise NotFound("node.unknown", f"node {node_id} is not enrolled")
            if stored.ak_name != ak_name:  # re-enrolled while this was appraised
                message = "the node enrolled another AK while this evidence was appraised"
                appraisal = Appraisal((Finding(FindingId.AK_KNOWN, Severity.FAIL, message),))
            problem = self._consume_nonce(connection, node_id, nonce, now)
            findings = _with_nonce_finding(appraisal.findings, problem)
            outcome = Appraisal(findings, appraisal.release)
            state = outcome.state.value
            record = connection.execute(
                _INSERT_EVIDENCE,
                {
                    "node_id": node_id, "received_at": now, "nonce": nonce, "raw": raw,
                    "state": state, "release": outcome.release,
                    "findings": json.dumps([f.to_json() for f in findings]),
                },
            )  # fmt: skip
            inserted = record.inserted_primary_key
            assert inserted is not None  # an INSERT without RETURNING still reports its key
            evidence_id = int(inserted[0])
            changes = {"state": state, "release": outcome.release, "last_evidence_at": now,
                       "last_evidence_id": evidence_id}  # fmt: skip
            if stored.state != state:
                changes["state_changed_at"] = now
            connection.execute(_UPDATE_NODE, {"node_id_": node_id, **changes})
            alerts.record_appraisal(
                connection, node_id=node_id, findings=findings, state=outcome.state, now=now,
                sinks=self.config.sinks, base_url=self.config.base_url,
            )  # fmt: skip
        return Outcome(outcome.state, findings, outcome.release, evidence_id)

    def _consume_nonce(
        self, connection: Connection, node_id: str, nonce: bytes, now: dt.datetime
    ) -> str:
        """Mark the nonce used; '' if it was ours, unused and fresh, else what was wrong."""
        consumed = connection.execute(
            _CONSUME_NONCE,
            {"b_value": nonce, "b_node_id": node_id, "b_now": now, "b_used_at": now},
        )
        if consumed.rowcount == 1:
            return ""
        known = connection.execute(_NONCE, {"value": nonce}).first()
        if known is None or known.node_id != node_id:
            return "the nonce was not issued to this node"
        if known.used_at is not None:
            return f"the nonce was already used at {known.used_at.isoformat()}"
        return f"the nonce expired at {known.expires_at.isoformat()}"

    # State.

    def mark_stale(self) -> list[str]:
        """Trusted or never-attested nodes without evidence within the interval become stale.
        Untrusted nodes stay untrusted: silence must not launder a failed appraisal."""
        now = self.clock()
        limit = now - self.config.check_in_interval
        seen = func.coalesce(Node.last_evidence_at, Node.enrolled_at)
        marked = []
        with self.store.engine.begin() as connection:
            candidates = connection.execute(
                select(Node.id, Node.last_evidence_at).where(
                    Node.state.in_([NodeState.TRUSTED.value, NodeState.UNKNOWN.value]),
                    seen < limit,
                )
            ).all()
            for node_id, last_seen in candidates:
                flipped = connection.execute(
                    update(Node)
                    .where(Node.id == node_id, Node.state.in_(["trusted", "unknown"]), seen < limit)
                    .values(state=NodeState.STALE.value, state_changed_at=now)
                )
                if flipped.rowcount != 1:
                    continue  # another worker got it, or evidence just arrived
                alerts.record_missed_checkin(
                    connection, node_id=node_id, last_seen=last_seen, now=now,
                    sinks=self.config.sinks, base_url=self.config.base_url,
                )  # fmt: skip
                marked.append(node_id)
        return marked

    def prune_nonces(self, keep: dt.timedelta = dt.timedelta(hours=1)) -> int:
        """Forget nonces that expired more than `keep` ago (a replay of one then reads as a
        nonce never issued: still a failed nonce.fresh)."""
        with self.store.session.begin() as session:
            pruned = session.execute(delete(Nonce).where(Nonce.expires_at < self.clock() - keep))
        return int(getattr(pruned, "rowcount", 0) or 0)

    def delete_release(self, name: str, version: str) -> None:
        """Retire a release: evidence of nodes still running it fails from now on."""
        with self.store.session.begin() as session:
            existing = session.get(Release, (name, version))
            if existing is None:
                raise NotFound("release.unknown", f"no accepted release {name} {version}")
            session.delete(existing)

    def put_release(self, name: str, version: str, document: bytes) -> None:
        reference = parse_reference(document)  # ReferenceError: a FormatError, a bad request
        if (reference.name, reference.version) != (name, version):
            raise Conflict(
                "release.mismatch",
                f"the document is {reference.name} {reference.version}, not {name} {version}",
            )
        try:  # what the appraisal will load, checked now rather than at the next evidence
            self.load_accepted([document], self.config.pcrs)
        except UltravioletError as exc:
            raise BadRequest("release.invalid", str(exc)) from None
        with self.store.session.begin() as session:
            existing = session.get(Release, (name, version))
            if existing is None:
                session.add(Release(name=name, version=version, document=document,
                                    uploaded_at=self.clock()))  # fmt: skip
            else:
                existing.document = document
                existing.uploaded_at = self.clock()


def _with_nonce_finding(findings: Sequence[Finding], problem: str) -> tuple[Finding, ...]:
    """The store knows whether the nonce was fresh; the appraisal only whether the quote
    carries it. A stale nonce replaces the appraisal's nonce finding with a failure."""
    if not problem:
        if any(f.id is FindingId.NONCE_FRESH for f in findings):
            return tuple(findings)
        return (*findings, Finding(FindingId.NONCE_FRESH, Severity.PASS, "nonce issued and unused"))
    failure = Finding(FindingId.NONCE_FRESH, Severity.FAIL, problem)
    return (*(f for f in findings if f.id is not FindingId.NONCE_FRESH), failure)
