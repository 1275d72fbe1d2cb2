"""The verifier's decision: one node's evidence against its enrolled AK and accepted releases.

Every check yields one Finding with a stable id. Checks build on each other: the quote's
signature by the enrolled AK makes its nonce and pcrDigest trustworthy; the pcrDigest makes the
quoted PCR values trustworthy; a log that replays to those values makes its events
trustworthy, PCR by PCR. A check whose footing failed is SKIP (the failure below it already
makes the node untrusted), so that a PASS never rests on unauthenticated data.

Inside a PCR, trust only what the digests cover: an event's type and data are not hashed into
the PCR, so PCR 4 and 7 events are read only when their digest is recomputed from their data
(images excepted: their digest is the Authenticode hash, which we compare with references).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from ultraviolet.attest.bootlog import (
    DRTM_PCRS,
    FirmwareLog,
    KeyDatabase,
    Pcr7Facts,
    UserspaceLog,
    firmware_event_counts,
    read_firmware_log,
    read_userspace_log,
    replay_logs,
)
from ultraviolet.attest.model import Appraisal, Finding, FindingId, Severity
from ultraviolet.attest.references import BANK, FINAL_PHASE, AcceptedReleases
from ultraviolet.errors import FormatError, UltravioletError
from ultraviolet.formats import pcr as pcr_math
from ultraviolet.formats.evidence import Evidence, IpeEvent
from ultraviolet.formats.tpm import (
    ALG_NULL,
    ALG_RSASSA,
    HASH_ALGORITHMS,
    PublicArea,
    Quote,
    Signature,
    hash_name,
    parse_quote,
    parse_signature,
    quote_pcr_digest,
    verify_signature,
)

SECURE_BOOT_VARIABLES = {"PK": "pk", "KEK": "kek", "db": "db"}
_IPE_ACTION = re.compile(r'rule="[^"]*\baction=(ALLOW|DENY)\b')
_ID = FindingId
_ALL = tuple(FindingId)  # in report order (iterating the enum itself is slow)
_NO_DETAILS: Mapping[str, Any] = MappingProxyType({})
_NONE: frozenset[int] = frozenset()
_SHARED_PASSES = 1024  # a pass message names at most the policy's PCRs or a record count
_PASSES: dict[tuple[FindingId, str], Finding] = {}


def _short(value: bytes) -> str:
    return value.hex()[:16]


@dataclass(slots=True)
class _Run:
    """One appraisal in progress: the findings so far and what they established."""

    evidence: Evidence
    ak: PublicArea
    nonce: bytes
    accepted: AcceptedReleases
    findings: dict[FindingId, Finding] = field(default_factory=dict)
    quote: Quote | None = None
    signature: Signature | None = None
    firmware: FirmwareLog | None = None
    userspace: UserspaceLog | None = None
    quoted: Mapping[str, Mapping[int, bytes]] = field(default_factory=dict)  # authenticated
    replayed: set[int] = field(default_factory=set)  # BANK PCRs whose log matched the quote
    booted_uki: bytes | None = None  # the UKI PCR 4 measured
    release: str | None = None
    selected: dict[str, set[int]] | None = None  # the quote's PCRs by bank, once read

    def record(
        self, finding_id: FindingId, severity: Severity, message: str, **details: Any
    ) -> bool:
        # Finding(...) fills a frozen dataclass through object.__setattr__ per field, a tenth
        # of an appraisal's cost for its dozen findings: fill the same fields directly.
        finding: Finding = object.__new__(Finding)
        finding.__dict__.update(id=finding_id, severity=severity, message=message, details=details)
        self.findings[finding_id] = finding
        return severity is Severity.PASS

    def passed(self, finding_id: FindingId, message: str, **details: Any) -> bool:
        if details:
            return self.record(finding_id, Severity.PASS, message, **details)
        # Most passes say the same thing for every node: share one immutable Finding.
        finding = _PASSES.get((finding_id, message))
        if finding is None:
            finding = Finding(finding_id, Severity.PASS, message, _NO_DETAILS)
            if len(_PASSES) < _SHARED_PASSES:
                _PASSES[finding_id, message] = finding
        self.findings[finding_id] = finding
        return True

    def failed(self, finding_id: FindingId, message: str, **details: Any) -> bool:
        return self.record(finding_id, Severity.FAIL, message, **details)

    def skip(self, ids: Sequence[FindingId], reason: str) -> None:
        for finding_id in ids:
            if finding_id not in self.findings:
                self.record(finding_id, Severity.SKIP, f"not checked: {reason}")


def appraise(
    evidence: Evidence, *, ak: PublicArea, nonce: bytes, accepted: AcceptedReleases
) -> Appraisal:
    """Trusted or not, with one finding per FindingId. `nonce` is the challenge the service
    issued to this node (it checked issue, use and expiry); the quote must carry it."""
    run = _Run(evidence, ak, nonce, accepted)
    _check_ipe(run)
    _appraise_quote_and_logs(run)
    findings = run.findings
    ordered = tuple(findings[finding_id] for finding_id in _ALL if finding_id in findings)
    return Appraisal(ordered, run.release)


def _appraise_quote_and_logs(run: _Run) -> None:
    if not _check_format(run):
        run.skip(_ALL, "the evidence does not parse")
        return
    if not _check_signature(run):
        run.skip(_ALL, "the quote is not signed by the enrolled AK")
        return
    _check_nonce(run)
    _check_selection(run)
    if not _check_pcr_digest(run):
        run.skip(_ALL, "the PCR values are not the ones the TPM quoted")
        return
    _check_replay(run)
    _check_pcr4(run)
    _check_pcr7(run)
    _check_pcr11(run)


# Evidence and quote.


def _check_format(run: _Run) -> bool:
    evidence, part = run.evidence, "quote"
    try:
        run.quote = parse_quote(evidence.quote)
        part = "signature"
        run.signature = parse_signature(evidence.signature)
        part = "firmware log"
        run.firmware = read_firmware_log(bytes(evidence.firmware_log))
        part = "userspace log"
        run.userspace = read_userspace_log(bytes(evidence.userspace_log))
    except FormatError as exc:
        return run.failed(_ID.EVIDENCE_FORMAT, f"the {part} does not parse: {exc}", part=part)
    return run.passed(_ID.EVIDENCE_FORMAT, "quote, signature and both logs parse")


def _check_signature(run: _Run) -> bool:
    assert run.quote is not None and run.signature is not None
    message, signature, ak = run.evidence.quote, run.signature, run.ak
    try:
        verify_signature(message, signature, ak)
    except UltravioletError as exc:
        return _signature_failed(run, message, signature, str(exc))
    run.passed(_ID.AK_KNOWN, "the quote is signed by the enrolled AK")
    return run.passed(_ID.QUOTE_SIGNATURE, "the signature covers the quote as sent")


def _signature_failed(run: _Run, message: bytes, signature: Signature, why: str) -> bool:
    """Tell a quote by another key (ak.known) from a quote altered after the AK signed it
    (quote.signature) where the signature shows it: an RSASSA signature decrypted with the
    AK's public key yields a well-formed PKCS#1 block only if the AK made it."""
    ak = run.ak
    scheme = ak.parameters.scheme
    own_scheme = (scheme.scheme, scheme.hash_alg)
    if scheme.scheme != ALG_NULL and (signature.scheme, signature.hash_alg) != own_scheme:
        run.failed(_ID.AK_KNOWN, f"signed by another key: {why}", ak_name=_name(ak))
        run.skip([_ID.QUOTE_SIGNATURE], "the quote is not signed by the enrolled AK")
        return False
    made_by_ak = _rsassa_made_by(ak, signature)
    if made_by_ak is True:
        run.passed(_ID.AK_KNOWN, "the signature was made by the enrolled AK")
        run.failed(
            _ID.QUOTE_SIGNATURE,
            "the enrolled AK signed other bytes: the quote was altered after signing",
            quote_sha256=hashlib.sha256(message).hexdigest(),
        )
    elif made_by_ak is False:
        run.failed(
            _ID.AK_KNOWN,
            "the quote is signed by another key than the enrolled AK "
            f"(qualifiedSigner {run.quote.attest.qualified_signer.hex() if run.quote else '?'})",
            ak_name=_name(ak),
        )
        run.skip([_ID.QUOTE_SIGNATURE], "the quote is not signed by the enrolled AK")
    else:
        text = (
            f"the signature does not verify with the enrolled AK ({why}): another key signed "
            "it or the quote was altered (this signature scheme cannot tell which)"
        )
        run.failed(_ID.AK_KNOWN, text, ak_name=_name(ak))
        run.failed(_ID.QUOTE_SIGNATURE, text)
    return False


def _name(ak: PublicArea) -> str:
    try:
        return ak.name().hex()
    except UltravioletError as exc:  # an AK whose nameAlg names no hash
        return f"unnamed: {exc}"


def _rsassa_made_by(ak: PublicArea, signature: Signature) -> bool | None:
    """True/False for an RSASSA signature under an RSA AK, None where we cannot tell."""
    try:
        key = ak.public_key()
    except UltravioletError:
        return None
    if not isinstance(key, rsa.RSAPublicKey) or signature.scheme != ALG_RSASSA:
        return None
    if signature.hash_alg not in HASH_ALGORITHMS:
        return None
    chosen = HASH_ALGORITHMS[signature.hash_alg][2]()
    try:
        key.recover_data_from_signature(signature.rsa, padding.PKCS1v15(), chosen)
    except (InvalidSignature, ValueError):
        return False
    return True


def _check_nonce(run: _Run) -> bool:
    assert run.quote is not None
    if hmac.compare_digest(run.quote.nonce, run.nonce):
        return run.passed(_ID.NONCE_FRESH, "the quote answers this challenge")
    return run.failed(
        _ID.NONCE_FRESH,
        f"the quote's extraData {run.quote.nonce.hex()} is not the challenge {run.nonce.hex()}"
        " (a replayed or foreign quote)",
        expected=run.nonce.hex(),
        found=run.quote.nonce.hex(),
    )


def _selected(run: _Run) -> dict[str, set[int]]:
    """The quoted PCRs by bank."""
    assert run.quote is not None
    if run.selected is None:
        run.selected = {}
        for selection in run.quote.selections:
            run.selected.setdefault(selection.bank, set()).update(selection.pcrs)
    return run.selected


def _check_selection(run: _Run) -> bool:
    selected = _selected(run).get(BANK, set())
    missing = [pcr for pcr in run.accepted.pcrs if pcr not in selected]
    if missing:
        return run.failed(
            _ID.QUOTE_PCR_SELECTION,
            f"the quote leaves out {BANK} PCR(s) {missing} "
            f"of the policy's {list(run.accepted.pcrs)}",
            missing=missing,
            quoted=sorted(selected),
        )
    return run.passed(_ID.QUOTE_PCR_SELECTION, _covers_message(run.accepted.pcrs))


@functools.lru_cache(maxsize=64)
def _covers_message(pcrs: tuple[int, ...]) -> str:
    return f"the quote covers {BANK} PCRs {list(pcrs)}"


def _check_pcr_digest(run: _Run) -> bool:
    assert run.quote is not None and run.signature is not None
    selected, sent = _selected(run), run.evidence.pcrs
    if not all(values.keys() <= selected.get(bank, _NONE) for bank, values in sent.items()):
        pairs = {(bank, pcr) for bank, pcrs in selected.items() for pcr in pcrs}
        extra = sorted({(bank, pcr) for bank, values in sent.items() for pcr in values} - pairs)
        listed = ", ".join(f"{bank}:{pcr}" for bank, pcr in extra)
        return run.failed(_ID.QUOTE_PCR_DIGEST, f"PCR values the quote does not cover: {listed}")
    hash_alg = hash_name(run.signature.hash_alg)
    try:
        computed = quote_pcr_digest(run.quote.selections, run.evidence.pcrs, hash_alg)
    except FormatError as exc:
        return run.failed(_ID.QUOTE_PCR_DIGEST, f"cannot hash the PCR values: {exc.detail}")
    if not hmac.compare_digest(computed, run.quote.pcr_digest):
        return run.failed(
            _ID.QUOTE_PCR_DIGEST,
            f"the PCR values hash to {computed.hex()}, the quote's pcrDigest is "
            f"{run.quote.pcr_digest.hex()}",
        )
    run.quoted = run.evidence.pcrs  # (evidence is immutable: read, not copied)
    return run.passed(_ID.QUOTE_PCR_DIGEST, "the PCR values are the ones the TPM quoted")


# Logs against the quoted PCRs.


def _initial(pcr: int, bank: str) -> bytes:
    zero = pcr_math.zero_pcr(bank)
    return b"\xff" * len(zero) if pcr in DRTM_PCRS else zero


def _check_replay(run: _Run) -> bool:
    firmware_bad: list[str] = []
    userspace_bad: list[str] = []
    assert run.firmware is not None and run.userspace is not None
    firmware_data = run.evidence.firmware_log
    for bank, values in run.quoted.items():
        replayed = replay_logs(run.firmware, run.userspace, bank, firmware_data, values.keys())
        if replayed.firmware_error:
            firmware_bad.append(f"{bank}: {replayed.firmware_error}")
            continue
        if replayed.userspace_error:
            userspace_bad.append(f"{bank}: {replayed.userspace_error}")
            continue
        if values.items() <= replayed.every_pcr.items():  # all match (PCR values are public)
            if bank == BANK:
                run.replayed.update(values)
            continue
        for pcr, quoted in sorted(values.items()):
            expected = replayed.values.get(pcr) or _initial(pcr, bank)
            if hmac.compare_digest(expected, quoted):
                if bank == BANK:
                    run.replayed.add(pcr)
                continue
            extended = pcr in replayed.userspace_pcrs
            text = _replay_mismatch(run, bank, pcr, expected, quoted, extended)
            (userspace_bad if extended else firmware_bad).append(text)
    _replay_finding(run, _ID.EVENTLOG_REPLAY, firmware_bad, "the firmware log")
    _replay_finding(run, _ID.USERSPACE_LOG_REPLAY, userspace_bad, "the userspace log")
    return not (firmware_bad or userspace_bad)


def _replay_mismatch(
    run: _Run, bank: str, pcr: int, expected: bytes, quoted: bytes, userspace: bool
) -> str:
    assert run.firmware is not None
    counts = firmware_event_counts(run.evidence.firmware_log)
    source = f"{counts.get(pcr, 0)} firmware log events"
    if userspace:
        assert run.userspace is not None
        more = sum(1 for _, at, digests in run.userspace.events if at == pcr and bank in digests)
        source += f" and {more} userspace log events"
    return f"{bank} PCR {pcr}: {source} replay to {expected.hex()}, the TPM quoted {quoted.hex()}"


def _replay_finding(run: _Run, finding_id: FindingId, problems: list[str], log: str) -> None:
    if problems:
        run.failed(finding_id, f"{log} does not replay to the quote: " + "; ".join(problems))
    else:
        run.passed(finding_id, f"{log} replays to the quoted PCRs")


def _trusted_pcr(run: _Run, finding_id: FindingId, pcr: int) -> bool:
    if pcr not in run.quoted.get(BANK, {}):
        run.skip([finding_id], f"{BANK} PCR {pcr} is not quoted")
        return False
    if pcr not in run.replayed:
        run.skip([finding_id], f"the log does not replay to the quoted PCR {pcr}")
        return False
    return True


# PCR 4: the boot chain.


def _check_pcr4(run: _Run) -> None:
    if not _trusted_pcr(run, _ID.PCR4_BOOT_CHAIN, 4):
        return
    assert run.firmware is not None
    facts = run.firmware.pcr4
    if facts.disguised is not None:
        event = facts.disguised
        run.failed(
            _ID.PCR4_BOOT_CHAIN,
            f"event #{event.index} ({event.type_name}) in PCR 4 has a digest that is not the "
            "hash of its data: it may stand for an unlisted image",
            event=event.index,
        )
        return
    _judge_boot_chain(run, list(facts.applications))


def _describe_image(run: _Run, digest: bytes) -> str:
    accepted = run.accepted
    if digest in accepted.boot_loaders:
        return f"{_short(digest)} (systemd-boot of {', '.join(accepted.boot_loaders[digest])})"
    if digest in accepted.ukis:
        return f"{_short(digest)} (UKI of {', '.join(accepted.ukis[digest])})"
    return f"{_short(digest)} (unknown image)"


def _judge_boot_chain(run: _Run, applications: list[bytes]) -> None:
    accepted = run.accepted
    if (
        len(applications) == 2
        and applications[0] in accepted.boot_loaders
        and applications[1] in accepted.ukis
    ):
        run.booted_uki = applications[1]
        run.passed(
            _ID.PCR4_BOOT_CHAIN,
            f"systemd-boot then the UKI of {', '.join(accepted.ukis[applications[1]])}",
            uki=applications[1].hex(),
        )
        return
    found = ", ".join(_describe_image(run, digest) for digest in applications) or "none"
    run.failed(
        _ID.PCR4_BOOT_CHAIN,
        f"PCR 4 measured {len(applications)} application(s): {found}; expected an accepted "
        "systemd-boot, then an accepted UKI, and nothing else",
        applications=[digest.hex() for digest in applications],
    )


# PCR 7: Secure Boot state and keys.


def _check_pcr7(run: _Run) -> None:
    if not _trusted_pcr(run, _ID.PCR7_SECURE_BOOT, 7):
        return
    assert run.firmware is not None
    facts = run.firmware.pcr7
    if facts.uncovered is not None:
        event = facts.uncovered
        run.failed(
            _ID.PCR7_SECURE_BOOT,
            f"event #{event.index} ({event.type_name}) in PCR 7: its digest is not the hash "
            "of its data, so its content cannot be trusted",
            event=event.index,
        )
        return
    problems = _secure_boot_problems(run, facts)
    if problems:
        run.failed(_ID.PCR7_SECURE_BOOT, "; ".join(problems))
    else:
        run.passed(_ID.PCR7_SECURE_BOOT, "Secure Boot on with our PK, KEK and db")


def _secure_boot_problems(run: _Run, facts: Pcr7Facts) -> list[str]:
    problems = []
    if facts.secure_boot != b"\x01":
        shown = "not measured" if facts.secure_boot is None else facts.secure_boot.hex()
        problems.append(f"SecureBoot is {shown}, expected 01 (on)")
    for name, role in SECURE_BOOT_VARIABLES.items():
        problem = _key_database_problem(run, name, role, facts.databases.get(name))
        if problem:
            problems.append(problem)
    if not facts.authorities:
        problems.append("no db authority was measured: the boot loader was not verified by db")
    for fingerprint in facts.authorities:
        if fingerprint not in run.accepted.certificates["db"]:
            problems.append(
                f"an image was verified by a db entry that is not ours: {_short(fingerprint)}"
            )
    return problems


def _key_database_problem(
    run: _Run, name: str, role: str, database: KeyDatabase | None
) -> str | None:
    if database is None:
        return f"{name} was not measured"
    if database.problem is not None:
        return database.problem
    ours = run.accepted.certificates[role]
    foreign = [fp for fp in database.fingerprints if fp not in ours]
    if not database.fingerprints or foreign:
        shown = ", ".join(_short(fp) for fp in foreign) or "no certificate"
        expected = ", ".join(_short(fp) for fp in sorted(ours))
        return f"{name} holds {shown}, expected only our {role} certificate ({expected})"
    return None


# PCR 11: the UKI and the boot phase.


def _check_pcr11(run: _Run) -> None:
    value = run.quoted.get(BANK, {}).get(11)
    if value is None:
        run.skip([_ID.PCR11_REFERENCE], f"{BANK} PCR 11 is not quoted")
        return
    predictions = run.accepted.pcr11.get(value, ())
    final = [p for p in predictions if p.phase == FINAL_PHASE]
    if not final:
        where = (
            "; it is " + ", ".join(f"{p.release} {p.profile} at {p.phase}" for p in predictions)
            if predictions
            else f" of releases {', '.join(run.accepted.names)}"
        )
        run.failed(
            _ID.PCR11_REFERENCE,
            f"PCR 11 {value.hex()} is no accepted UKI profile after {FINAL_PHASE}{where}",
            found=value.hex(),
        )
        return
    booted = [p for p in final if run.booted_uki in (None, p.uki_authenticode_sha256)]
    if not booted:
        run.failed(
            _ID.PCR11_REFERENCE,
            f"PCR 11 is {final[0].release} {final[0].profile}, but PCR 4 booted the UKI "
            f"{_short(run.booted_uki or b'')}",
        )
        return
    match = booted[0]
    run.release = match.release
    run.passed(
        _ID.PCR11_REFERENCE,
        f"PCR 11 is {match.release}, profile {match.profile}, after {match.phase}",
        release=match.release,
        profile=match.profile,
    )


# IPE.


def _check_ipe(run: _Run) -> None:
    denials = [event for event in run.evidence.ipe_events if _is_denial(event)]
    if denials:
        first = denials[0]
        run.failed(
            _ID.IPE_DENIALS,
            f"{len(denials)} IPE denial(s) since the last evidence, first at {first.timestamp}: "
            f"{first.record}",
            records=[event.record for event in denials],
        )
    else:
        run.passed(_ID.IPE_DENIALS, f"no IPE denial in {len(run.evidence.ipe_events)} record(s)")


def _is_denial(event: IpeEvent) -> bool:
    """A record that says DENY, or that we cannot read as ALLOW (fail closed)."""
    match = _IPE_ACTION.search(event.record)
    return match is None or match.group(1) == "DENY"
