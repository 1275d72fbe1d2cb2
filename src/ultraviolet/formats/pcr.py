"""TPM PCR arithmetic and the PCR 11 values a UKI produces (systemd-stub + systemd-pcrphase).

PCR extend: new = H(old || digest), starting from zeros. systemd-stub measures, in the canonical
UKI section order, every present section except .pcrsig: first H(name + NUL), then H(contents)
(VirtualSize bytes). systemd-pcrphase then extends H(phase word) at each boot phase. The phase
paths are the ones systemd-measure names: enter-initrd, enter-initrd:leave-initrd, ...
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from ultraviolet.errors import FormatError
from ultraviolet.formats.uki import SECTION_ORDER, Uki, UkiSection

BOOT_PHASES = ("enter-initrd", "leave-initrd", "sysinit", "ready")
BANKS = ("sha1", "sha256", "sha384", "sha512")
UNMEASURED = frozenset({".pcrsig"})


class PcrError(FormatError):
    pass


def zero_pcr(bank: str = "sha256") -> bytes:
    if bank not in BANKS:
        raise PcrError("PCR bank", f"unknown bank {bank!r}; known: {', '.join(BANKS)}")
    return bytes(hashlib.new(bank).digest_size)


def extend(pcr: bytes, digest: bytes, bank: str = "sha256") -> bytes:
    if len(digest) != len(pcr):
        raise PcrError("PCR extend", f"a {bank} digest has {len(pcr)} bytes, got {len(digest)}")
    return hashlib.new(bank, pcr + digest).digest()


def replay(digests: Sequence[bytes], bank: str = "sha256", start: bytes | None = None) -> bytes:
    value = zero_pcr(bank) if start is None else start
    for digest in digests:
        value = extend(value, digest, bank)
    return value


def uki_measurements(
    sections: Mapping[str, UkiSection],
    bank: str = "sha256",
    cache: dict[int, bytes] | None = None,
) -> list[bytes]:
    """The digests systemd-stub extends into PCR 11 for these sections, in order. `cache`
    (section file offset -> digest) lets the profiles of one UKI share their base sections'
    digests: the kernel and initrd are most of a UKI's bytes."""
    digests = []
    for name in SECTION_ORDER:
        section = sections.get(name)
        if section is None or name in UNMEASURED or not section.data:
            continue
        digests.append(hashlib.new(bank, name.encode() + b"\0").digest())
        digest = None if cache is None else cache.get(section.offset)
        if digest is None:
            digest = hashlib.new(bank, section.data).digest()
            if cache is not None:
                cache[section.offset] = digest
        digests.append(digest)
    return digests


def phase_paths() -> list[str]:
    return [":".join(BOOT_PHASES[: i + 1]) for i in range(len(BOOT_PHASES))]


def predict_pcr11(
    uki: Uki,
    *,
    profile: int | None = None,
    bank: str = "sha256",
    cache: dict[int, bytes] | None = None,
) -> dict[str, bytes]:
    """PCR 11 after each boot phase: {"enter-initrd": ..., "enter-initrd:leave-initrd": ...}."""
    if profile is None:
        sections = uki.base
    elif 0 <= profile < len(uki.profiles):
        sections = uki.profiles[profile].sections
    else:
        raise PcrError("UKI profile", f"no profile {profile}; the UKI has {len(uki.profiles)}")
    value = replay(uki_measurements(sections, bank, cache), bank)
    result = {}
    for path, word in zip(phase_paths(), BOOT_PHASES, strict=True):
        value = extend(value, hashlib.new(bank, word.encode()).digest(), bank)
        result[path] = value
    return result


def predicted_pcr11(uki: Uki, bank: str = "sha256") -> dict[str, dict[str, bytes]]:
    """PCR 11 per boot phase for the base UKI ("main") and each profile (by its ID= or
    "profile-N"): what a node booting that entry shows, and what reference.json records."""
    cache: dict[int, bytes] = {}
    profiles = {"main": predict_pcr11(uki, bank=bank, cache=cache)}
    for profile in uki.profiles:
        key = profile.id or f"profile-{profile.number}"
        profiles[key] = predict_pcr11(uki, profile=profile.number, bank=bank, cache=cache)
    return profiles
