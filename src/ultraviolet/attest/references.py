"""The releases a node may run, as the verifier checks evidence against them.

A node policy can accept several releases at once (rolling updates: the old and the new one).
Each release's reference.json is parsed once here and turned into lookup tables keyed by what
evidence shows (a PCR 11 value, an Authenticode digest, a certificate fingerprint), so that an
appraisal is a handful of dictionary lookups rather than a walk over every reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from ultraviolet.errors import AttestationError
from ultraviolet.formats.pcr import BOOT_PHASES
from ultraviolet.formats.reference import SECURE_BOOT_ROLES, Reference, parse_reference

BANK = "sha256"  # the bank reference.json predicts and the verifier appraises
FINAL_PHASE = ":".join(BOOT_PHASES)  # a running node has passed every boot phase
MAX_PCR = 23
_T = TypeVar("_T")


class ReferencesError(AttestationError):
    """Reference values the verifier cannot appraise against."""


@dataclass(frozen=True)
class Pcr11Prediction:
    """Where a PCR 11 value comes from: a release, a UKI profile and a boot phase path."""

    release: str
    profile: str
    phase: str
    uki_authenticode_sha256: bytes


@dataclass(frozen=True)
class AcceptedReleases:
    releases: tuple[Reference, ...]
    pcrs: tuple[int, ...]  # the policy's [attestation] pcrs, ascending
    boot_loaders: Mapping[bytes, tuple[str, ...]]  # systemd-boot digest -> releases
    ukis: Mapping[bytes, tuple[str, ...]]  # UKI Authenticode digest -> releases
    pcr11: Mapping[bytes, tuple[Pcr11Prediction, ...]]  # every profile and phase path
    certificates: Mapping[str, frozenset[bytes]]  # pk/kek/db -> accepted fingerprints

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(release_name(reference) for reference in self.releases)


def release_name(reference: Reference) -> str:
    return f"{reference.name} {reference.version}"


def load_accepted(reference_documents: Sequence[bytes], pcrs: Sequence[int]) -> AcceptedReleases:
    """Parse every reference.json (ReferenceError names the broken one) and index them."""
    return accept_references([parse_reference(document) for document in reference_documents], pcrs)


def accept_references(references: Sequence[Reference], pcrs: Sequence[int]) -> AcceptedReleases:
    if not references:
        raise ReferencesError("no accepted release: a node could never be trusted")
    if not pcrs or any(not 0 <= pcr <= MAX_PCR for pcr in pcrs):
        raise ReferencesError(f"policy PCRs {list(pcrs)}: expected PCR indices 0-{MAX_PCR}")
    for reference in references:
        _check_appraisable(reference)
    boot_loaders: dict[bytes, tuple[str, ...]] = {}
    ukis: dict[bytes, tuple[str, ...]] = {}
    pcr11: dict[bytes, tuple[Pcr11Prediction, ...]] = {}
    certificates: dict[str, set[bytes]] = {role: set() for role in SECURE_BOOT_ROLES}
    for reference in references:
        name = release_name(reference)
        assert reference.boot_loader_authenticode_sha256 is not None  # _check_appraisable
        _append(boot_loaders, reference.boot_loader_authenticode_sha256, name)
        _append(ukis, reference.uki_authenticode_sha256, name)
        for profile, phases in reference.pcr11.items():
            for phase, value in phases.items():
                prediction = Pcr11Prediction(
                    name, profile, phase, reference.uki_authenticode_sha256
                )
                _append(pcr11, value, prediction)
        for role in SECURE_BOOT_ROLES:
            certificates[role].add(reference.certificates[role])
    return AcceptedReleases(
        releases=tuple(references),
        pcrs=tuple(sorted(set(pcrs))),
        boot_loaders=boot_loaders,
        ukis=ukis,
        pcr11=pcr11,
        certificates={role: frozenset(values) for role, values in certificates.items()},
    )


def _append(table: dict[bytes, tuple[_T, ...]], key: bytes, value: _T) -> None:
    table[key] = (*table.get(key, ()), value)


def _check_appraisable(reference: Reference) -> None:
    name = release_name(reference)
    if reference.boot_loader_authenticode_sha256 is None:
        raise ReferencesError(
            f"reference.json of {name} is format {reference.format}: it has no systemd-boot "
            "digest or PK/KEK fingerprints for PCR 4 and 7; rebuild the release"
        )
    missing = [role for role in SECURE_BOOT_ROLES if role not in reference.certificates]
    if missing:
        raise ReferencesError(f"reference.json of {name} has no {', '.join(missing)} fingerprint")
    for profile, phases in reference.pcr11.items():
        if FINAL_PHASE not in phases:
            raise ReferencesError(
                f"reference.json of {name}: profile {profile} has no {FINAL_PHASE}"
            )
        if any(len(value) != 32 for value in phases.values()):
            raise ReferencesError(f"reference.json of {name}: profile {profile} is not {BANK}")
