"""repart.d (first boot) and sysupdate.d (A/B updates) definitions derived from a node policy.

The image ships with the ESP and usr slot A (usr, usr-verity, usr-verity-sig). On first boot
systemd-repart matches those by type, in order, then creates the empty B slots (Label=_empty,
which systemd-sysupdate fills), the TPM2-bound LUKS root and the optional home and swap; root,
home and swap carry FactoryReset=yes. sysupdate.d transfers install a release's split
partitions into the B slots and its UKI into the ESP with boot counting.
"""

from __future__ import annotations

from ultraviolet.formats.unitfile import UnitFile, unit
from ultraviolet.policy.model import NodePolicy

EMPTY_LABEL = "_empty"  # what systemd-sysupdate looks for in an unused slot
VERITY_SIG_SIZE = 16 * 1024
ESP_SIZE = 1024 * 1024 * 1024  # room for the UKIs of two versions (~140 MiB each) and more


def verity_slot_size(usr_size: int) -> int:
    """Room for the hash tree of `usr_size` bytes (sha256, 4 KiB blocks: ~1/127 + levels),
    rounded up to 1 MiB with a 1 MiB margin."""
    mib = 1 << 20
    tree = usr_size // 127 + 4096 * 8
    return (tree // mib + 2) * mib


def _slot(kind: str, label: str, size: int, extra: list[tuple[str, str]]) -> UnitFile:
    return unit(
        (
            "Partition",
            [
                ("Type", kind),
                ("Label", label),
                ("SizeMinBytes", str(size)),
                ("SizeMaxBytes", str(size)),
                *extra,
            ],
        )
    )


def _existing(kind: str, maximum: int) -> UnitFile:
    return unit(
        ("Partition", [("Type", kind), ("SizeMinBytes", "4096"), ("SizeMaxBytes", str(maximum))])
    )


def _data_partition(
    policy: NodePolicy,
    kind: str,
    file_system: str,
    extra: list[tuple[str, str]],
    *,
    encrypt: bool = True,
) -> UnitFile:
    """root/home/swap: formatted at first boot, TPM2-LUKS and factory reset per policy."""
    entries = [("Type", kind), ("Format", file_system), *extra]
    if encrypt and policy.storage.root_encryption == "tpm2":
        entries.append(("Encrypt", "tpm2"))
    if policy.storage.factory_reset:
        entries.append(("FactoryReset", "yes"))
    return unit(("Partition", entries))


def first_boot_repart(policy: NodePolicy) -> dict[str, UnitFile]:
    """/usr/lib/repart.d of the image: file name -> definition."""
    usr = policy.storage.usr_slot_size
    verity = verity_slot_size(usr)
    read_only = [("ReadOnly", "yes")]
    definitions = {
        "00-esp.conf": unit(("Partition", [("Type", "esp")])),
        # Slot A exists already. A small minimum: repart would otherwise want to grow a smaller
        # A slot to its 10 MiB default minimum; a maximum: without one repart grows the last
        # existing partition into all free space (seen in the VM: verity-sig 16K -> 3G).
        "10-usr-a.conf": _existing("usr", usr),
        "11-usr-verity-a.conf": _existing("usr-verity", verity),
        "12-usr-verity-sig-a.conf": _existing("usr-verity-sig", VERITY_SIG_SIZE),
        "20-usr-b.conf": _slot("usr", EMPTY_LABEL, usr, read_only),
        "21-usr-verity-b.conf": _slot("usr-verity", EMPTY_LABEL, verity, read_only),
        # signature partitions have no read-only flag (repart warns and ignores it)
        "22-usr-verity-sig-b.conf": _slot("usr-verity-sig", EMPTY_LABEL, VERITY_SIG_SIZE, []),
    }
    storage = policy.storage
    size = [("SizeMinBytes", str(storage.root_min_size))]
    definitions["50-root.conf"] = _data_partition(policy, "root", storage.root_filesystem, size)
    if storage.home:
        definitions["60-home.conf"] = _data_partition(policy, "home", storage.root_filesystem, [])
    if storage.swap_size:
        exact = [("SizeMinBytes", str(storage.swap_size)), ("SizeMaxBytes", str(storage.swap_size))]
        definitions["70-swap.conf"] = _data_partition(policy, "swap", "swap", exact, encrypt=False)
    return definitions


def _source(policy: NodePolicy, pattern: str) -> tuple[str, list[tuple[str, str]]]:
    source = policy.update.source
    kind = "url-file" if source.startswith(("http://", "https://")) else "regular-file"
    return ("Source", [("Type", kind), ("Path", source), ("MatchPattern", pattern)])


def sysupdate_transfers(policy: NodePolicy) -> dict[str, UnitFile]:
    """/usr/lib/sysupdate.d of the image: file name -> transfer."""
    name = policy.image.name
    transfer = (
        "Transfer",
        [
            ("ProtectVersion", "%A"),
            ("Verify", "yes" if policy.update.verify_manifest else "no"),
        ],
    )
    instances = ("InstancesMax", str(policy.update.instances_max))
    partitions = {
        # @u: the partition UUIDs derived from the root hash travel in the file names
        "50-usr.transfer": ("usr", f"{name}_@v_@u.usr.raw"),
        "51-usr-verity.transfer": ("usr-verity", f"{name}_@v_@u.usr-verity.raw"),
        "52-usr-verity-sig.transfer": ("usr-verity-sig", f"{name}_@v.usr-verity-sig.raw"),
    }
    transfers = {}
    for filename, (kind, pattern) in partitions.items():
        target = (
            "Target",
            [
                ("Type", "partition"),
                ("Path", "auto"),
                ("MatchPattern", f"{name}_@v"),
                ("MatchPartitionType", kind),
                ("PartitionFlags", "0"),
                ("ReadOnly", "1"),
                instances,
            ],
        )
        transfers[filename] = unit(transfer, _source(policy, pattern), target)
    uki_target = (
        "Target",
        [
            ("Type", "regular-file"),
            ("Path", "/EFI/Linux"),
            ("PathRelativeTo", "boot"),
            ("MatchPattern", f"{name}_@v+@l-@d.efi {name}_@v+@l.efi {name}_@v.efi"),
            ("Mode", "0444"),
            ("TriesLeft", str(policy.boot.tries)),
            ("TriesDone", "0"),
            instances,
        ],
    )
    transfers["60-uki.transfer"] = unit(transfer, _source(policy, f"{name}_@v.efi"), uki_target)
    return transfers
