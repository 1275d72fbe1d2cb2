"""The attestation agent in the image, for a policy with `[attestation] verifier_url`.

What goes in:
- Debian's python3, python3-cryptography and tpm2-tools (tpm-udev: the tss group that may open
  /dev/tpmrm0): the agent needs nothing from PyPI;
- the agent's modules of our package (node.service and what it imports, found by reading the
  imports: errors, tools, formats, node; not the build or verifier code) in
  /usr/lib/python3/dist-packages, byte-compiled in the image by a postinst script (/usr is
  read-only on the node, so Python could never cache them there);
- /usr/lib/ultraviolet/agent.json: verifier URL, PCRs, banks and interval from the policy; the
  URL is replaced at boot by the system credential `ultraviolet.verifier-url` if given;
- ultraviolet-agent.service, enabled by the preset, never part of boot-complete.target;
- networking: systemd-networkd with DHCP on every wired interface, systemd-resolved for names.
"""

from __future__ import annotations

import ast
import json
import shutil
from pathlib import Path

from ultraviolet.formats.unitfile import UnitFile, render_unit, unit
from ultraviolet.policy.model import NodePolicy

AGENT_UNIT = "ultraviolet-agent.service"
AGENT_PACKAGES = ("python3", "python3-cryptography", "tpm2-tools", "tpm-udev", "systemd-resolved")
NETWORK_UNITS = ("systemd-networkd.service", "systemd-resolved.service")
CONFIG_PATH = "usr/lib/ultraviolet/agent.json"
UNIT_PATH = f"usr/lib/systemd/system/{AGENT_UNIT}"
NETWORK_PATH = "usr/lib/systemd/network/80-ultraviolet-wired.network"
SYSUSERS_PATH = "usr/lib/sysusers.d/ultraviolet-tss.conf"
# tpm-udev's rules give /dev/tpmrm0 to tss:tss, but its user and group come from a Debian
# postinst (adduser) into the build's /etc, and a node's /etc is made at first boot, where
# systemd-sysusers writes passwd/group before the factory copy could: without this the group
# is unknown on the node and the unit fails with 216/GROUP (seen in the VM).
SYSUSERS = 'u tss - "TPM software stack" /var/lib/tpm\n'
SITE_PACKAGES = "usr/lib/python3/dist-packages"
ENTRY_MODULE = "ultraviolet.node.service"
POSTINST = "mkosi.postinst.chroot"
STATE_DIRECTORY = "ultraviolet/agent"


def agent_wanted(policy: NodePolicy) -> bool:
    return bool(policy.attestation.verifier_url)


def agent_packages(policy: NodePolicy) -> tuple[str, ...]:
    return AGENT_PACKAGES if agent_wanted(policy) else ()


def agent_preset_units(policy: NodePolicy) -> tuple[str, ...]:
    return (*NETWORK_UNITS, AGENT_UNIT) if agent_wanted(policy) else ()


def agent_config(policy: NodePolicy) -> dict[str, object]:
    attestation = policy.attestation
    return {
        "verifier_url": attestation.verifier_url,
        "pcrs": list(attestation.pcrs),
        "banks": list(attestation.banks),
        "interval": attestation.report_interval,
    }


def agent_unit() -> UnitFile:
    return unit(
        (
            "Unit",
            [
                ("Description", "Ultraviolet attestation agent"),
                # Ordering only: nothing in boot (boot-complete.target, the health gate) waits
                # for the agent, the network or the verifier.
                ("Wants", "network-online.target"),
                ("After", "network-online.target tpm2.target systemd-journald.service"),
                ("ConditionPathExists", "/dev/tpmrm0"),
            ],
        ),
        (
            "Service",
            [
                ("Type", "simple"),
                ("ExecStart", f"/usr/bin/python3 -I -B -m {ENTRY_MODULE}"),
                ("ImportCredential", "ultraviolet.*"),
                ("StateDirectory", STATE_DIRECTORY),
                ("StateDirectoryMode", "0700"),
                ("Restart", "on-failure"),
                ("RestartSec", "30s"),
                # root for the event logs (securityfs, root-only) and the journal; the tss
                # group for /dev/tpmrm0 (tss:tss 0660); no capabilities at all.
                ("SupplementaryGroups", "tss"),
                ("CapabilityBoundingSet", ""),
                ("NoNewPrivileges", "yes"),
                ("ProtectSystem", "strict"),
                ("ProtectHome", "yes"),
                ("PrivateTmp", "yes"),
                ("ProtectKernelTunables", "yes"),
                ("ProtectKernelModules", "yes"),
                ("ProtectControlGroups", "yes"),
                ("ProtectClock", "yes"),
                ("ProtectHostname", "yes"),
                ("RestrictNamespaces", "yes"),
                ("RestrictRealtime", "yes"),
                ("RestrictSUIDSGID", "yes"),
                ("LockPersonality", "yes"),
                ("MemoryDenyWriteExecute", "yes"),
                ("SystemCallArchitectures", "native"),
                ("DevicePolicy", "closed"),
                ("DeviceAllow", "/dev/tpmrm0 rw"),
                ("RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"),
            ],
        ),
        ("Install", [("WantedBy", "multi-user.target")]),
    )


def wired_network() -> UnitFile:
    return unit(
        ("Match", [("Type", "ether"), ("Kind", "!*")]),
        ("Network", [("DHCP", "yes")]),
        ("DHCPv4", [("UseDomains", "yes")]),
    )


def postinst_script() -> str:
    # unchecked-hash: the sources never change under /usr, and the build may reset mtimes.
    return f"""#!/bin/sh
# Rendered by Ultraviolet: byte-compile the agent with the image's own Python.
set -eu
python3 -m compileall -q -j 0 --invalidation-mode unchecked-hash /{SITE_PACKAGES}/ultraviolet
"""


def agent_files(policy: NodePolicy) -> dict[str, str]:
    """mkosi.extra paths -> content (empty without a verifier URL)."""
    if not agent_wanted(policy):
        return {}
    return {
        UNIT_PATH: render_unit(agent_unit()),
        NETWORK_PATH: render_unit(wired_network()),
        CONFIG_PATH: json.dumps(agent_config(policy), indent=2) + "\n",
        SYSUSERS_PATH: SYSUSERS,
    }


def agent_modules(entry: str = ENTRY_MODULE) -> list[Path]:
    """Our package's source files that `entry` imports, directly or not (with the __init__ of
    every package on the way), relative to the directory holding `ultraviolet`."""
    root = Path(__file__).resolve().parents[2]
    wanted: set[str] = set()
    pending = [entry]
    while pending:
        module = pending.pop()
        if module in wanted:
            continue
        wanted.add(module)
        source = _module_file(root, module)
        for imported in _imports(source.read_text(), module):
            if _module_exists(root, imported) and imported not in wanted:
                pending.append(imported)
    files: set[Path] = set()
    for module in wanted:
        parts = module.split(".")
        for depth in range(1, len(parts)):
            files.add(Path(*parts[:depth], "__init__.py"))
        files.add(_module_file(root, module).relative_to(root))
    return sorted(files)


def _module_file(root: Path, module: str) -> Path:
    path = root.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _module_exists(root: Path, module: str) -> bool:
    path = root.joinpath(*module.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def _imports(text: str, module: str) -> set[str]:
    """Our modules named by the imports of a module (`from ultraviolet.x import y` names x and,
    if it is a module, x.y)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(text, module)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("ultraviolet"))
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and (node.module or "").startswith("ultraviolet")
        ):
            found.add(str(node.module))
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def write_agent(policy: NodePolicy, directory: Path, extra: Path) -> None:
    """The agent's files into the mkosi tree `directory` (extra: its mkosi.extra)."""
    if not agent_wanted(policy):
        return
    for name, content in agent_files(policy).items():
        (extra / name).parent.mkdir(parents=True, exist_ok=True)
        (extra / name).write_text(content)
    root = Path(__file__).resolve().parents[2]
    for module in agent_modules():
        target = extra / SITE_PACKAGES / module
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / module, target)
    script = directory / POSTINST
    script.write_text(postinst_script())
    script.chmod(0o755)
