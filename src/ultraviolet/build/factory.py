"""Hermetic /usr: everything a node needs to come up lives in the signed /usr.

The image ships no /etc (root is created empty at first boot and again after a factory reset),
so the /etc the packages installed during the build is kept as /usr/share/factory/etc, and a
tmpfiles.d file copies each of its entries into /etc when it is missing (`C`: copy if absent,
so the node's own changes survive reboots). What must differ per node or is made by systemd
itself is left out. Units the policy wants running are enabled through a preset file, which
systemd applies on first boot (the unit enablement symlinks of the build's /etc would come too
late: PID 1 has loaded its units before tmpfiles runs).
"""

from __future__ import annotations

from collections.abc import Iterable

FACTORY_ETC = "usr/share/factory/etc"
TMPFILES = "usr/lib/tmpfiles.d/20-ultraviolet-factory-etc.conf"
PRESET = "usr/lib/systemd/system-preset/20-ultraviolet.preset"

# Per node, or systemd's own (tmpfiles.d/etc.conf links os-release and mtab; first boot makes
# machine-id; resolv.conf belongs to the resolver) or stale caches of the build host.
NOT_FROM_FACTORY = (
    "machine-id",
    "mtab",
    "os-release",
    "resolv.conf",
    "ld.so.cache",
    ".pwd.lock",
    "adjtime",
)


# Presets are first-match: these win over systemd's own 90-systemd.preset.
# systemd-pcrlock-make-policy keeps a TPM NV policy for pcrlock-bound secrets; nodes bind root
# with systemd-repart's TPM2 enrollment instead, and after an A/B update the service failed
# (seen in the VM), so it is off.
DISABLED_UNITS = ("systemd-pcrlock-make-policy.service",)


def preset_file(enabled_units: Iterable[str]) -> str:
    lines = ["# Rendered by Ultraviolet from the node policy: applied on first boot."]
    lines += [f"enable {unit}" for unit in enabled_units]
    lines += [f"disable {unit}" for unit in DISABLED_UNITS]
    return "\n".join(lines) + "\n"


def factory_etc_script() -> str:
    """Python appended to the mkosi finalize script (runs with $BUILDROOT set)."""
    return f"""
# Rendered by Ultraviolet: hermetic /usr (the built /etc becomes /usr/share/factory/etc).
import shutil
etc = os.path.join(root, "etc")
factory = os.path.join(root, {FACTORY_ETC!r})
skip = set({list(NOT_FROM_FACTORY)!r})
if os.path.isdir(factory):
    shutil.rmtree(factory)
os.makedirs(factory)
lines = []
for name in sorted(os.listdir(etc)):
    if name in skip:
        continue
    if any(c.isspace() for c in name):
        print("ultraviolet: not keeping /etc/%r (white space in the name)" % name, file=sys.stderr)
        continue
    source = os.path.join(etc, name)
    target = os.path.join(factory, name)
    if os.path.isdir(source) and not os.path.islink(source):
        shutil.copytree(source, target, symlinks=True)
    else:
        shutil.copy2(source, target, follow_symlinks=False)
    quoted = name.replace("%", "%%")  # tmpfiles expands %-specifiers in paths
    lines.append("C /etc/%s - - - - /{FACTORY_ETC}/%s" % (quoted, quoted))
tmpfiles = os.path.join(root, {TMPFILES!r})
os.makedirs(os.path.dirname(tmpfiles), exist_ok=True)
with open(tmpfiles, "w") as handle:
    handle.write("# Rendered by Ultraviolet: /etc from /usr/share/factory/etc.\\n")
    handle.write("\\n".join(lines) + "\\n")
print("ultraviolet: /etc kept as /%s (%d entries)" % ({FACTORY_ETC!r}, len(lines)), file=sys.stderr)
"""


def firmware_links_script() -> str:
    """Python appended to the mkosi finalize script: firmware links that go through
    /etc/alternatives (wireless-regdb's regulatory.db) point at their file in /usr instead.
    A node's /etc is filled from the factory copy by tmpfiles, which can run after the
    firmware is asked for (systemd-networkd starts early), and /etc is not what decides which
    firmware the kernel loads: the signed /usr is."""
    return """
# Rendered by Ultraviolet: /usr/lib/firmware needs no /etc.
firmware = os.path.join(root, "usr/lib/firmware")
for directory, _, names in os.walk(firmware):
    for name in names:
        link = os.path.join(directory, name)
        target = os.readlink(link) if os.path.islink(link) else ""
        if not target.startswith("/etc/alternatives/"):
            continue
        chosen = os.readlink(os.path.join(root, target.lstrip("/")))
        relative = chosen.lstrip("/")
        if relative.startswith("lib/"):  # merged /usr: /lib is usr/lib
            relative = "usr/" + relative
        resolved = os.path.join(root, relative)
        if not chosen.startswith("/") or not os.path.isfile(resolved):
            sys.exit("ultraviolet: cannot pin firmware link %s -> %s" % (link, chosen))
        os.unlink(link)
        os.symlink(os.path.relpath(resolved, directory), link)
        print("ultraviolet: firmware", name, "->", chosen, file=sys.stderr)
"""
