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
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.build.keyset import Signer
from ultraviolet.diskimage import open_disk_image
from ultraviolet.errors import BuildError
from ultraviolet.formats.fat import FatVolume
from ultraviolet.formats.uki import build_uki, parse_uki
from ultraviolet.formats.veritysig import parse_verity_sig
from ultraviolet.tools import ToolsChroot

STUB = "usr/lib/systemd/boot/efi/linuxx64.efi.stub"
OPTION = "systemd.verity_usr_options=root-hash-signature=base64:"
CMDLINE_LIMIT = 2048  # x86 COMMAND_LINE_SIZE


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
    with open_disk_image(image) as disk:
        (sig,) = disk.partitions_of_type("usr-verity-sig")
        root_hash = parse_verity_sig(disk.partition_bytes(sig)).root_hash
        (esp,) = disk.partitions_of_type("esp")
        volume = FatVolume.parse(disk.partition_bytes(esp), base=esp.start)
        ukis = [e.name for e in volume.listdir("EFI/Linux") if e.name.lower().endswith(".efi")]
        if len(ukis) != 1:
            raise BuildError(f"{image}: expected one UKI in EFI/Linux, found {ukis}")
        path = f"EFI/Linux/{ukis[0]}"
        return root_hash, EspFile(esp.start, path), volume.read_file(path)


def reassemble_uki(uki: bytes, stub: bytes, option: str) -> bytes:
    """The UKI's sections again, on the bare stub, with `option` added to .cmdline."""
    parsed = parse_uki(uki)
    sections = []
    for section in parsed.sections:
        data = section.data
        if section.name == ".cmdline":
            data = with_option(section.text(), option).encode()
        sections.append((section.name, data))
    if ".cmdline" not in {name for name, _ in sections}:
        raise BuildError("the UKI has no .cmdline to add the root-hash signature to")
    return build_uki(stub, sections)


def embed_root_hash_signature(
    image: Path, uki_out: Path, *, verity: Signer, secure_boot: Signer, chroot: ToolsChroot
) -> Path:
    """Rewrite the UKI inside `image` (and write it to `uki_out`) with the signature option:
    the root hash signed by `verity`, the UKI Authenticode-signed by `secure_boot` (db)."""
    root_hash, where, current = _locate(image)
    stub = (chroot.root / STUB).read_bytes()
    unsigned = uki_out.with_suffix(".unsigned.efi")
    unsigned.write_bytes(reassemble_uki(current, stub, root_hash_option(root_hash, verity)))
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
    chroot.run(
        ["mcopy", "-o", "-i", f"{image}@@{where.esp_offset}", str(uki_out), f"::{where.path}"],
        binds=[image.parent, uki_out.parent],
        env={"MTOOLS_SKIP_CHECK": "1"},
    )
    return uki_out
