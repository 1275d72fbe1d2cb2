"""What a UKI brings into the measured boot, checked offline (ARCHITECTURE.md, steps 5-6).

5. The IPE policy in the UKI's initrd: present when the node policy wants one, signed by a
   trusted certificate the way the kernel accepts (no signed attributes), and exactly the policy
   the node policy renders to, in the node policy's mode.
6. PCR 11 predicted from the UKI, per profile and boot phase, equals the release's
   reference.json; the image holds that release's UKI and signed /usr.
Without a node policy or a reference the checks that need them are skipped, not passed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass

from cryptography import x509

from ultraviolet.errors import FormatError
from ultraviolet.formats.cpio import CpioArchive, uncompressed_archives
from ultraviolet.formats.ipe import IpePolicy, parse_ipe, render_ipe
from ultraviolet.formats.pcr import predicted_pcr11
from ultraviolet.formats.pkcs7 import parse_signed_data, verify_signed_data
from ultraviolet.formats.reference import Reference
from ultraviolet.formats.uki import Uki
from ultraviolet.policy.ipe import INITRD_IPE_MODE, INITRD_IPE_POLICY, build_ipe_policy
from ultraviolet.policy.model import NodePolicy
from ultraviolet.verify.report import CheckResult, failed, not_applicable, passed, skipped


@dataclass(frozen=True)
class Expectations:
    """What the image is checked against beyond its own signatures."""

    policy: NodePolicy | None = None
    reference: Reference | None = None


def check_ipe(
    uki: Uki, subject: str, trusted: Sequence[x509.Certificate], policy: NodePolicy | None
) -> Iterator[CheckResult]:
    initrd = uki.section(".initrd")
    archive = _ipe_archive(uncompressed_archives(initrd.data)) if initrd else None
    signed = archive.file(INITRD_IPE_POLICY) if archive else None
    wanted = None if policy is None else policy.integrity.ipe_mode != "off"
    if signed is None:
        if wanted:
            yield failed(
                "ipe.present", "the node policy wants IPE; no policy in the initrd", subject
            )
        elif wanted is None:
            yield not_applicable("ipe.present", "no IPE policy in the initrd", subject)
        else:
            yield passed("ipe.present", "no IPE policy, as the node policy says", subject)
        return
    assert archive is not None
    yield passed("ipe.present", f"IPE policy in the initrd ({INITRD_IPE_POLICY})", subject)
    text = yield from _check_ipe_signature(signed, subject, trusted)
    if text is None:
        yield skipped("ipe.policy", "the policy text could not be read from the signature", subject)
        return
    yield _check_ipe_policy(text, archive.file(INITRD_IPE_MODE), policy, subject)


def _ipe_archive(archives: Sequence[CpioArchive]) -> CpioArchive | None:
    # The kernel unpacks archives in order, so a later copy of the path is the one that counts.
    holding = [a for a in archives if a.file(INITRD_IPE_POLICY) is not None]
    return holding[-1] if holding else None


def _check_ipe_signature(
    signed: bytes, subject: str, trusted: Sequence[x509.Certificate]
) -> Generator[CheckResult, None, str | None]:
    """Yields the signature result; returns the embedded policy text (None if unreadable)."""
    try:
        signed_data = parse_signed_data(signed)
    except FormatError as exc:
        yield failed("ipe.signature", str(exc), subject, offset=exc.offset)
        return None
    text = None
    if signed_data.content is not None:
        text = signed_data.content.decode("ascii", errors="replace")
    if any(signer.signed_attributes is not None for signer in signed_data.signers):
        yield failed(
            "ipe.signature",
            "the policy is signed with signed attributes, which the kernel refuses",
            subject,
        )
        return text
    check = verify_signed_data(signed_data, trusted)
    if check.ok and check.signer is not None:
        who = check.signer.subject.rfc4514_string()
        yield passed("ipe.signature", f"policy signed by {who}", subject)
    else:
        yield failed("ipe.signature", check.reason, subject)
    return text


def _check_ipe_policy(
    text: str, mode_file: bytes | None, policy: NodePolicy | None, subject: str
) -> CheckResult:
    try:
        found = parse_ipe(text)
    except FormatError as exc:
        return failed("ipe.policy", str(exc), subject, offset=exc.offset)
    mode = (mode_file or b"").decode("ascii", errors="replace").strip() or "?"
    version = ".".join(map(str, found.version))
    if policy is None:
        return not_applicable(
            "ipe.policy",
            f"policy {found.name} {version} (mode {mode}); no node policy to compare with",
            subject,
        )
    expected = build_ipe_policy(policy)
    if expected is None:  # check_ipe only gets here when the node policy wants IPE
        return failed("ipe.policy", "the node policy turns IPE off", subject)
    differences = _ipe_differences(found, expected)
    if mode != policy.integrity.ipe_mode:
        differences.append(f"mode is {mode}, the node policy says {policy.integrity.ipe_mode}")
    if differences:
        return failed("ipe.policy", "; ".join(differences), subject)
    return passed(
        "ipe.policy",
        f"policy {found.name} {version} is what the node policy renders to (mode {mode})",
        subject,
        sha256=hashlib.sha256(render_ipe(found).encode()).hexdigest(),
    )


def _ipe_differences(found: IpePolicy, expected: IpePolicy) -> list[str]:
    problems = []
    if (found.name, found.version) != (expected.name, expected.version):
        problems.append(
            f"policy is {found.name} {found.version}, expected {expected.name} {expected.version}"
        )
    if (found.default_action, found.op_defaults) != (expected.default_action, expected.op_defaults):
        problems.append("its defaults differ from the node policy's")
    extra = [r.render() for r in found.rules if r not in expected.rules]
    missing = [r.render() for r in expected.rules if r not in found.rules]
    if extra:
        problems.append("rules the node policy does not allow: " + " | ".join(extra))
    if missing:
        problems.append("rules missing: " + " | ".join(missing))
    return problems


def check_reference_uki(
    uki: Uki, authenticode_sha256: bytes, subject: str, reference: Reference
) -> Iterator[CheckResult]:
    """For the reference's UKI: its digest and PCR 11 per profile and phase."""
    if authenticode_sha256 == reference.uki_authenticode_sha256:
        yield passed("reference.uki", "Authenticode digest equals reference.json", subject)
    else:
        yield failed(
            "reference.uki",
            f"Authenticode digest {authenticode_sha256.hex()} is not reference.json's "
            f"{reference.uki_authenticode_sha256.hex()}",
            subject,
        )
    try:
        predicted = predicted_pcr11(uki)
    except FormatError as exc:
        yield failed("pcr11.reference", str(exc), subject, offset=exc.offset)
        return
    differences = _pcr_differences(predicted, reference.pcr11)
    if differences:
        yield failed("pcr11.reference", "; ".join(differences), subject)
    else:
        count = sum(len(phases) for phases in predicted.values())
        yield passed(
            "pcr11.reference",
            f"predicted PCR 11 equals reference.json for {len(predicted)} profile(s), "
            f"{count} phase values",
            subject,
        )


def _pcr_differences(
    predicted: Mapping[str, Mapping[str, bytes]], recorded: Mapping[str, Mapping[str, bytes]]
) -> list[str]:
    problems = []
    for profile in sorted(set(predicted) | set(recorded)):
        if profile not in recorded:
            problems.append(f"profile {profile} is not in reference.json")
            continue
        if profile not in predicted:
            problems.append(f"reference.json has profile {profile}, the UKI does not")
            continue
        ours, theirs = predicted[profile], recorded[profile]
        for phase in sorted(set(ours) | set(theirs)):
            if ours.get(phase) != theirs.get(phase):
                value = ours[phase].hex() if phase in ours else "none"
                problems.append(f"{profile}/{phase}: predicted {value}")
    return problems


def check_reference_usr(signed_root_hashes: Sequence[bytes], reference: Reference) -> CheckResult:
    if reference.usr_root_hash in signed_root_hashes:
        return passed(
            "reference.usr", "a signed usr slot has reference.json's root hash", "reference.json"
        )
    return failed(
        "reference.usr",
        f"no signed usr slot has reference.json's root hash {reference.usr_root_hash.hex()}",
        "reference.json",
    )


def check_reference_policy(policy: NodePolicy, reference: Reference) -> CheckResult:
    if policy.digest == reference.node_policy_sha256.hex():
        return passed(
            "reference.policy", "reference.json was built from this node policy", "reference.json"
        )
    return failed(
        "reference.policy",
        f"reference.json was built from another node policy (sha256 "
        f"{reference.node_policy_sha256.hex()}, this one is {policy.digest})",
        "reference.json",
    )
