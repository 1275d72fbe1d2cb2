"""Hand the usr root-hash signature to the kernel through the UKI command line.

With only `usrhash=`, systemd 257 opens the usr verity device without its signature, so the
kernel marks it unsigned and an IPE rule `dmverity_signature=TRUE` denies all of /usr
(TESTBED.md). The UKI therefore carries
`systemd.verity_usr_options=root-hash-signature=base64:<PKCS#7>`: the hex root hash signed
detached, without certificates or attributes (small enough for the 2 KiB x86 command line).
As the root hash is known only after /usr is built, the UKI mkosi made is reassembled with the
new .cmdline from the same stub (byte-identical to what ukify makes), Authenticode-signed again
and put back into the ESP of the disk image.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.build.keyset import Signer
from ultraviolet.diskimage import UKI_DIRECTORY, open_disk_image, uki_paths
from ultraviolet.errors import BuildError
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.uki import build_uki, parse_uki
from ultraviolet.formats.veritysig import parse_verity_sig
from ultraviolet.tools import ToolsChroot

STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
OPTION = "systemd.verity_usr_options=root-hash-signature=base64:"
CMDLINE_LIMIT = 2048  # x86 COMMAND_LINE_SIZE
# $1 image@@ESP offset, $2 mkosi's UKI in the ESP, $3 our UKI, $4 its ESP path, $5 loader.conf
_ESP_UPDATE = """set -e
mdel -i "$1" "::$2"
mcopy -o -i "$1" "$3" "::$4"
mmd -D s -i "$1" ::loader 2>/dev/null || true
mcopy -o -i "$1" "$5" ::loader/loader.conf
"""


@dataclass(frozen=True)
class EspFile:
    esp_offset: int
    path: str  # inside the ESP, e.g. EFI/Linux/x.efi


def root_hash_option(root_hash: bytes, signer: Signer) -> str:
    signature = signer.sign_pkcs7_detached(root_hash.hex().encode(), include_certificate=False)
    return OPTION + base64.b64encode(signature).decode("ascii")


def with_option(cmdline: str, option: str) -> str:
    words = [w for w in cmdline.split() if not w.startswith("systemd.verity_usr_options=")]
    result = " ".join([*words, option])
    if len(result) >= CMDLINE_LIMIT:
        raise BuildError(f"kernel command line of {len(result)} bytes exceeds {CMDLINE_LIMIT}")
    return result


def _locate(image: Path) -> tuple[bytes, EspFile, bytes]:
    """The signed usr root hash, where the (single) UKI sits in the ESP, and the UKI."""
    with open_disk_image(image, populate=False) as disk:  # a few MiB of a large image
        (sig,) = disk.partitions_of_type("usr-verity-sig")
        root_hash = parse_verity_sig(disk.partition_bytes(sig)).root_hash
        (esp,) = disk.partitions_of_type("esp")
        volume = FatVolume.parse(disk.partition_bytes(esp), base=esp.start)
        ukis = uki_paths(volume)
        if len(ukis) != 1:
            raise BuildError(f"{image}: expected one UKI in {UKI_DIRECTORY}, found {ukis}")
        path = ukis[0]
        return root_hash, EspFile(esp.start, path), volume.read_file(path)


@dataclass(frozen=True)
class ExtraProfile:
    """A UKI profile after the main one: its .profile text and command line additions."""

    id: str
    title: str
    cmdline: tuple[str, ...]


PROFILE_OPTIONS = {
    "ipe-enforce": ExtraProfile("ipe-enforce", "IPE enforcing", ("ultraviolet.ipe=enforce",)),
    "factory-reset": ExtraProfile("factory-reset", "Factory reset", ("systemd.factory_reset=1",)),
}


def _profile_text(profile_id: str, title: str) -> bytes:
    return f"ID={profile_id}\nTITLE={title}\n".encode()


def _section_data(name: str, data: bytes, cmdline: str, initrd_extra: bytes) -> bytes:
    if name == ".cmdline":
        return cmdline.encode()
    if name == ".initrd" and initrd_extra:
        # Archives start 4-byte aligned; the kernel skips the NUL padding between them.
        return data + bytes(-len(data) % 4) + initrd_extra
    return data


def reassemble_uki(
    uki: bytes,
    stub: bytes,
    option: str,
    profiles: Sequence[ExtraProfile] = (),
    initrd_extra: bytes = b"",
    cmdline_extra: Sequence[str] = (),
) -> bytes:
    """The UKI's base sections again, on the bare stub, with `cmdline_extra` and `option` added
    to .cmdline and `initrd_extra` (a cpio) appended to .initrd; with `profiles`, a main profile
    (twice, see below) and one profile per entry whose .cmdline adds its options."""
    parsed = parse_uki(uki)
    if parsed.profiles:
        raise BuildError("the UKI already has profiles; expected mkosi's single-profile UKI")
    cmdline = parsed.cmdline
    if cmdline is None:
        raise BuildError("the UKI has no .cmdline to add the root-hash signature to")
    cmdline = with_option(" ".join([cmdline, *cmdline_extra]), option)
    if initrd_extra and parsed.section(".initrd") is None:
        raise BuildError("the UKI has no .initrd to extend")
    sections = [
        (s.name, _section_data(s.name, s.data, cmdline, initrd_extra)) for s in parsed.sections
    ]
    if profiles:
        main = _profile_text("main", "Main")
        # Profile 1 is a byte-identical twin of main (same .profile, the base .cmdline, so the
        # same PCR 11): systemd-boot 257 gives every profile of a UKI that still carries boot
        # counters the ID of profile 0 and sorts the secondary profiles first, so the loader's
        # default starts profile 1 on a trial boot after an update (fixed upstream after 257).
        sections += [(".profile", main), (".profile", main)]
        for profile in profiles:
            extended = " ".join((cmdline, *profile.cmdline))
            if len(extended) >= CMDLINE_LIMIT:
                raise BuildError(f"profile {profile.id}: command line exceeds {CMDLINE_LIMIT}")
            sections.append((".profile", _profile_text(profile.id, profile.title)))
            sections.append((".cmdline", extended.encode()))
    return build_uki(stub, sections)


def finalize_uki(
    image: Path,
    uki_out: Path,
    *,
    name: str,
    profiles: Sequence[ExtraProfile],
    initrd_extra: bytes,
    cmdline_extra: Sequence[str],
    verity: Signer,
    secure_boot: Signer,
    chroot: ToolsChroot,
) -> Path:
    """Rewrite the UKI inside `image` as EFI/Linux/`name` (and write it to `uki_out`): root-hash
    signature option, profiles, root hash signed by `verity`, Authenticode by `secure_boot`."""
    root_hash, where, current = _locate(image)
    stub = (chroot.root / STUB).read_bytes()
    unsigned = uki_out.with_suffix(".unsigned.efi")
    option = root_hash_option(root_hash, verity)
    unsigned.write_bytes(
        reassemble_uki(current, stub, option, profiles, initrd_extra, cmdline_extra)
    )
    key, certificate = secure_boot.tool_arguments()
    chroot.run(
        [
            "/usr/lib/systemd/systemd-sbsign",
            "sign",
            "--private-key",
            key,
            "--certificate",
            certificate,
            "--output",
            str(uki_out),
            str(unsigned),
        ],
        binds=[uki_out.parent, Path(key).parent],
    )
    unsigned.unlink()
    target = f"{UKI_DIRECTORY}/{name}"
    loader_conf = uki_out.with_suffix(".loader.conf")
    loader_conf.write_text(loader_configuration(name))
    # One chroot entry for the four mtools commands (each entry sets up a mount namespace).
    esp = f"{image}@@{where.esp_offset}"
    chroot.run(
        ["sh", "-c", _ESP_UPDATE, "sh", esp, where.path, str(uki_out), target, str(loader_conf)],
        binds=[image.parent, uki_out.parent],
        env={"MTOOLS_SKIP_CHECK": "1"},
    )
    loader_conf.unlink()
    return uki_out


def loader_configuration(uki_name: str) -> str:
    """systemd-boot's loader.conf: the default is the newest version's main profile.

    The UKI profiles are entries of their own (`NAME_VERSION.efi@ipe-enforce`), and without a
    default systemd-boot may start one of them after an update; the glob matches only the main
    entries (IDs carry no boot counter), newest first, and a version whose tries ran out sorts
    last, so a failed update falls back to the previous version's main profile."""
    stem = uki_name.rsplit("_", 1)[0]
    return f"default {stem}_*.efi\ntimeout 0\n"
