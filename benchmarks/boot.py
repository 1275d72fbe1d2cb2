"""What IPE enforcement and dm-verity cost a booting node, measured in the VM.

    python benchmarks/boot.py [--rounds N]

1. IPE: the example policy (IPE enforcing) against the same policy with `ipe_mode = "off"` (a
   policy-only rebuild: the same /usr, a UKI without the IPE policy). Each gets its own machine;
   its first boot (systemd-repart, LUKS enrolment) is not counted; then the two machines boot
   alternately, N times each. Time per boot phase comes from systemd's own timestamps in the
   guest (systemd-analyze's split: firmware, loader, kernel, initrd, userspace until
   multi-user.target).
2. dm-verity: in each measured boot the guest reads the whole /usr device through dm-verity and
   the same bytes from the raw data partition under it, each from a cold page cache.
Overhead = with / without - 1 (target <= 5 %). Medians are printed; nothing is asserted.
Under TCG (no usable KVM here) every instruction is emulated, SHA-256 included, so the verity
ratio is an upper bound of what hardware shows (where hashing runs at GB/s).
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import statistics
import sys
import tempfile
from pathlib import Path

from ultraviolet.build.keyset import KeySet
from ultraviolet.build.node import build_cached_node, example_policy_path
from ultraviolet.policy import load_policy, parse_policy
from ultraviolet.testbed.accel import choose_accelerator
from ultraviolet.testbed.checker import END_MARKER, GuestReport, checker_smbios, parse_report
from ultraviolet.testbed.vm import OVMF_CODE, OVMF_VARS, VmConfig, boot, boot_again
from ultraviolet.tools import ToolsChroot, tools

DONE = re.compile(END_MARKER)
PHASES = ("firmware", "loader", "kernel", "initrd", "userspace")


def _config(image: Path, keys: KeySet, accelerator: str, action: str) -> VmConfig:
    return VmConfig(
        image=image,
        pk=keys.signer("pk").certificate_path,
        kek=keys.signer("kek").certificate_path,
        db=keys.signer("db").certificate_path,
        accelerator=accelerator,
        smbios=tuple(checker_smbios(action)),
        settle=120,
    )


def _images() -> tuple[dict[str, Path], KeySet]:
    example = example_policy_path()
    enforce, keys = build_cached_node(load_policy(example))
    text = example.read_text().replace('ipe_mode = "enforce"', 'ipe_mode = "off"')
    if 'ipe_mode = "off"' not in text:
        raise SystemExit("benchmark: the example policy no longer sets ipe_mode")
    off, _ = build_cached_node(parse_policy(text, source=str(example)), keys=keys.directory)
    return {"IPE enforce": enforce.image, "IPE off": off.image}, keys


def _boot(config: VmConfig, machine: Path, chroot: ToolsChroot, first: bool) -> GuestReport:
    result = (boot if first else boot_again)(config, DONE, machine, chroot)
    if not result.ok:
        raise SystemExit(f"benchmark: boot failed\n{result.explain()}")
    return parse_report(result.console())


def _read_seconds(report: GuestReport) -> tuple[float, float, int]:
    """(through dm-verity, from the raw data partition, bytes read) of one boot."""
    reads = {key: value.split() for key, value in report.facts if key.startswith("read-ns:")}
    verity = reads.pop("read-ns:/dev/mapper/usr", None)
    if verity is None or len(reads) != 1:
        raise SystemExit(f"benchmark: expected a verity and a raw read, got {sorted(reads)}")
    (raw,) = reads.values()
    return int(verity[0]) / 1e9, int(raw[0]) / 1e9, int(verity[1])


def _print(results: dict[str, list[GuestReport]]) -> None:
    print(f"{'boot phase (median s)':<24}" + "".join(f"{name:>14}" for name in results))
    totals = {}
    for phase in (*PHASES, "total"):
        row = []
        for reports in results.values():
            values = [
                sum(r.boot_phases().values()) if phase == "total" else r.boot_phases()[phase]
                for r in reports
            ]
            row.append(statistics.median(values))
        totals[phase] = row
        print(f"{phase:<24}" + "".join(f"{value:>14.2f}" for value in row))
    with_ipe, without = totals["total"]
    print(f"IPE overhead on the boot: {with_ipe / without - 1:+.1%} (target <= 5 %)")
    kernel_to_target = [
        sum(totals[p][i] for p in ("kernel", "initrd", "userspace")) for i in (0, 1)
    ]
    print(f"  kernel to multi-user.target: {kernel_to_target[0] / kernel_to_target[1] - 1:+.1%}")
    reads = [_read_seconds(r) for reports in results.values() for r in reports]
    verity = statistics.median(v for v, _, _ in reads)
    raw = statistics.median(r for _, r, _ in reads)
    size = reads[0][2] / 2**20
    print(
        f"/usr read, cold cache ({size:.0f} MiB): dm-verity {verity:.2f} s "
        f"({size / verity:.0f} MiB/s), raw partition {raw:.2f} s ({size / raw:.0f} MiB/s): "
        f"verity overhead {verity / raw - 1:+.1%}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2, help="measured boots per variant")
    args = parser.parse_args()
    chroot = tools()
    images, keys = _images()
    with tempfile.TemporaryDirectory(prefix="uv-boot-bench-") as scratch:
        work = Path(scratch)
        probe = choose_accelerator(chroot, work / "accel", OVMF_CODE, OVMF_VARS)
        print(f"accelerator: {probe.accelerator} ({probe.reason})", flush=True)
        configs = {
            name: _config(image, keys, probe.accelerator, "bench") for name, image in images.items()
        }
        results: dict[str, list[GuestReport]] = {name: [] for name in images}
        for name, config in configs.items():  # first boots: repart + enrolment, not counted
            _boot(
                dataclasses.replace(config, smbios=tuple(checker_smbios())),
                work / name,
                chroot,
                True,
            )
        for round_number in range(args.rounds):
            order = list(configs) if round_number % 2 == 0 else list(reversed(configs))
            for name in order:
                report = _boot(configs[name], work / name, chroot, False)
                results[name].append(report)
                print(
                    f"round {round_number + 1} {name}: {sum(report.boot_phases().values()):.1f} s",
                    flush=True,
                )
    _print(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
