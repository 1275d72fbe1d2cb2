"""The in-guest checker: one boot, every check, machine-readable lines on the serial console.

The image under test stays the product image: nothing test-only is built into it. The checker
arrives as SMBIOS type 11 system credentials (honoured by systemd in VMs): a shell script, a
unit that runs it (`systemd.extra-unit.*`, written by systemd-debug-generator) and a drop-in
that makes multi-user.target want it (`systemd.unit-dropin.*`). The unit runs `sh` from the
signed /usr on the script file (reading a script is not an exec, so IPE lets it be; the
copies it tries to execute are what IPE must deny). Each fact is one line

    UVCHECK <key> <value>

written straight to the serial port, then `UVCHECK-END`, then the VM powers off. The host
decides what the facts mean (tests/vm): the guest only reports.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from ultraviolet.errors import UltravioletError

UNIT = "ultraviolet-check.service"
SCRIPT_CREDENTIAL = "ultraviolet-check.sh"
# what to do after reporting: report | update | bench | oneshot:ENTRY-ID | attest:SECONDS
ACTION_CREDENTIAL = "ultraviolet-check.action"
END_MARKER = "UVCHECK-END"
# Not anchored: a getty prompt or a terminal reset may share the line with a fact.
_LINE = re.compile(r"UVCHECK (\S+) ?(.*)$", re.MULTILINE)

EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
LOADER_GUID = "4a67b082-0a4c-41cf-b6c7-440b29bb8c4f"

CHECK_SCRIPT = f"""
# Ultraviolet in-guest checker (passed as a credential; see testbed/checker.py).
out=/dev/ttyS0
say() {{ printf 'UVCHECK %s %s\\n' "$1" "$2" > "$out"; }}
efivar() {{ base64 -w0 "/sys/firmware/efi/efivars/$1" 2>/dev/null; }}
oneline() {{ tr '\\n' '|' | sed 's/|$//'; }}

secureboot=/sys/firmware/efi/efivars/SecureBoot-{EFI_GLOBAL}
say secureboot "$(od -An -tu1 "$secureboot" | awk '{{print $NF}}')"
say lockdown "$(cat /sys/kernel/security/lockdown 2>/dev/null)"
say loader-entry "$(efivar LoaderEntrySelected-{LOADER_GUID})"
say stub-info "$(efivar StubInfo-{LOADER_GUID})"
say cmdline "$(cat /proc/cmdline)"
say usr-mount "$(findmnt -no SOURCE,FSTYPE,OPTIONS /usr)"
say root-mount "$(findmnt -no SOURCE,FSTYPE,OPTIONS /)"
for dm in /sys/block/dm-*; do
    [ -d "$dm/dm" ] && say dm "$(cat "$dm/dm/name") $(cat "$dm/dm/uuid")"
done
say partitions "$(lsblk -rno NAME,PARTLABEL,FSTYPE,SIZE | oneline)"
say ipe-enforce "$(cat /sys/kernel/security/ipe/enforce 2>/dev/null)"
for policy in /sys/kernel/security/ipe/policies/*; do
    [ -d "$policy" ] && say ipe-policy "$(basename "$policy") active=$(cat "$policy/active")"
done
# attest:SECONDS: the node agent's reports come before the IPE denials below, so that the
# verifier sees the node trusted, then the denials (see the case at the end). Two reports: the
# first also carries whatever IPE denied during boot, the second only what came after it.
agent_report=/var/lib/ultraviolet/agent/last-report.json
agent_reports() {{ sed -n 's/.*"reports": \\([0-9]*\\).*/\\1/p' "$agent_report" 2>/dev/null; }}
wait_reports() {{  # until the agent has made $1 accepted reports, at most $2 seconds
    i=0
    while [ "$i" -lt "$2" ]; do
        [ "$(agent_reports)" -ge "$1" ] 2>/dev/null && return 0
        sleep 1; i=$((i + 1))
    done
    return 1
}}
early=$(cat /run/credentials/@system/{ACTION_CREDENTIAL} 2>/dev/null)
case "$early" in
attest:*)
    # (The verifier keeps every report: the first one, which also carries what IPE denied
    # while the node booted, is read from its store, not raced for here.)
    wait_reports 2 "${{early#attest:}}"
    say attest-before-denials "$(cat "$agent_report" 2>/dev/null)"
    say attest-uptime "$(cut -d' ' -f1 /proc/uptime)"
    say agent-unit-first "$(systemctl show -p ActiveState -p SubState -p NRestarts \
        -p ConditionResult -p UnitFileState ultraviolet-agent.service | oneline)"
    say agent-log-first "$(journalctl -b -q -u ultraviolet-agent.service -o cat | tail -n 15 \
        | oneline)"
    say network "$(networkctl --no-legend --no-pager 2>&1 | oneline)"
    say tpm-device "$(ls -ln /dev/tpmrm0 2>&1)"
    ;;
esac
# What IPE denied while the node booted, before this checker provokes denials of its own.
say ipe-audit-boot "$( (journalctl -b -q _TRANSPORT=audit -o cat; dmesg) 2>/dev/null \
    | grep -e 'ipe_op=' | oneline)"
/usr/bin/true; say exec-usr "$?"
mkdir -p /run/uvexec && mount -t tmpfs -o exec,mode=0755 uvexec /run/uvexec
for dir in /tmp /var/tmp /root /run/uvexec; do
    if cp /usr/bin/true "$dir/uvtrue" 2>/dev/null; then
        "$dir/uvtrue" 2>/dev/null; say "exec-copy:$dir" "$?"
    else
        say "exec-copy:$dir" "no-copy"
    fi
done
say writable-exec "$(findmnt -rn -o TARGET,OPTIONS \
    | awk '$2 ~ /(^|,)rw(,|$)/ && $2 !~ /noexec/ {{print $1}}' | oneline)"
say setid-in-usr "$(find /usr -xdev -type f -perm /6000 2>/dev/null | oneline)"
for pcr in 0 1 2 3 4 5 7 9 11 12 13 15; do
    say "pcr-sha256:$pcr" "$(cat /sys/class/tpm/tpm0/pcr-sha256/$pcr 2>/dev/null)"
done
# IPE audit records (type 1420): journald's audit transport keeps them all; the kernel log
# may rate-limit them. Give kauditd a moment to hand over the ones just made.
sleep 2
say ipe-audit "$( (journalctl -b -q _TRANSPORT=audit -o cat; dmesg) 2>/dev/null \
    | grep -e 'type=1420' -e 'ipe_op=' | grep -v '^$' | tail -n 12 | oneline)"
say eventlog "$(base64 -w0 /sys/kernel/security/tpm0/binary_bios_measurements 2>/dev/null)"
say units-failed "$(systemctl --failed --no-legend --plain | awk '{{print $1}}' | oneline)"
say containerd "$(systemctl is-active containerd.service)"
say health "$(systemctl is-active ultraviolet-health.service)"
say system-state "$(systemctl is-system-running)"
say version "$(. /usr/lib/os-release; echo "$IMAGE_VERSION")"
say loader-entries "$(efivar LoaderEntries-{LOADER_GUID})"
say stub-profile "$(cat /run/systemd/stub/profile 2>/dev/null | oneline)"
say esp-ukis "$(ls /boot/EFI/Linux /efi/EFI/Linux 2>/dev/null | grep -v : | oneline)"
# Boot phases in microseconds (firmware+loader before the kernel, then since the kernel started).
say boot-times "$(systemctl show -p FirmwareTimestampMonotonic -p LoaderTimestampMonotonic \
    -p InitRDTimestampMonotonic -p UserspaceTimestampMonotonic | oneline)"
say multi-user-at "$(systemctl show -p ActiveEnterTimestampMonotonic --value multi-user.target)"
action=$(cat /run/credentials/@system/{ACTION_CREDENTIAL} 2>/dev/null || echo report)
say action "$action"
case "$action" in
update)
    # The release directory of the next version arrives as a read-only erofs disk.
    source=$(sed -n '/^\\[Source\\]/,/^\\[/s/^Path=//p' /usr/lib/sysupdate.d/50-usr.transfer)
    mkdir -p "$source" && mount -o ro /dev/vdb "$source"
    say update-started "$(date +%s)"
    /usr/lib/systemd/systemd-sysupdate --no-pager update > /run/uvupdate.log 2>&1
    say update-exit "$?"
    say update-log "$(tail -n 12 /run/uvupdate.log | oneline)"
    say esp-ukis-after "$(ls /boot/EFI/Linux /efi/EFI/Linux 2>/dev/null | grep -v : | oneline)"
    # The kernel's view of the partition table is stale after sysupdate (the disk is busy):
    # send the GPT itself (primary header and entries) for the host to parse.
    say gpt-after "$(head -c 17408 /dev/vda | base64 -w0)"
    ;;
bench)
    # /usr read through dm-verity (every block hashed against the tree) and the same bytes
    # from the raw data partition under it, each from a cold page cache.
    usr=$(basename "$(readlink -f /dev/mapper/usr)")
    size=$(blockdev --getsize64 /dev/mapper/usr)
    data=$(for s in /sys/block/$usr/slaves/*; do
        echo "$(cat "$s/size") ${{s##*/}}"; done | sort -n | tail -n 1 | cut -d' ' -f2)
    for device in /dev/mapper/usr "/dev/$data"; do
        sync; echo 3 > /proc/sys/vm/drop_caches
        start=$(date +%s%N)
        dd if="$device" of=/dev/null bs=1M count="$size" iflag=count_bytes 2>/dev/null
        say "read-ns:$device" "$(( $(date +%s%N) - start )) $size"
    done
    ;;
attest:*)
    # Each report until two more were made (the one under way when the copies were denied may
    # predate them), as the agent records them.
    seen=$(agent_reports); target=$(( ${{seen:-0}} + 2 )); i=0
    while [ "$i" -lt "${{action#attest:}}" ]; do
        now=$(agent_reports)
        if [ "${{now:-0}}" != "${{seen:-0}}" ]; then
            seen=$now; say attest-report "$(cat "$agent_report" 2>/dev/null)"
        fi
        [ "${{now:-0}}" -ge "$target" ] && break
        sleep 1; i=$((i + 1))
    done
    say agent-unit "$(systemctl show -p ActiveState -p SubState -p NRestarts \
        ultraviolet-agent.service | oneline)"
    say agent-log "$(journalctl -b -q -u ultraviolet-agent.service -o cat | tail -n 15 | oneline)"
    ;;
oneshot:*)
    # The next boot (only) runs this boot loader entry (bootctl set-oneshot).
    bootctl set-oneshot "${{action#oneshot:}}"
    say oneshot-set "$?"
    ;;
esac
printf '%s\\n' {END_MARKER} > "$out"
sync
systemctl poweroff --no-block
"""


def _unit() -> str:
    return f"""[Unit]
Description=Ultraviolet in-guest checker (test credential)
# On a trial boot (boot counting), report once boot assessment is done: the health gate
# has passed and systemd-bless-boot has renamed the UKI (ordering only: no-ops otherwise).
After=multi-user.target systemd-pcrphase.service boot-complete.target systemd-bless-boot.service

[Service]
Type=oneshot
ExecStart=/bin/sh /run/credentials/@system/{SCRIPT_CREDENTIAL}
StandardOutput=journal
StandardError=journal
"""


def _dropin() -> str:
    return f"[Unit]\nWants={UNIT}\n"


def _credential(name: str, value: str) -> str:
    encoded = base64.b64encode(value.encode()).decode("ascii")
    # QEMU -smbios: a comma would end the value; base64 has none.
    return f"type=11,value=io.systemd.credential.binary:{name}={encoded}"


def checker_smbios(action: str = "report") -> list[str]:
    """The values of QEMU `-smbios` options that install and start the checker; `action` is
    what it does after reporting ("update": install the release on the second disk)."""
    return [
        _credential(SCRIPT_CREDENTIAL, CHECK_SCRIPT),
        _credential(ACTION_CREDENTIAL, action),
        _credential(f"systemd.extra-unit.{UNIT}", _unit()),
        _credential("systemd.unit-dropin.multi-user.target~ultraviolet-check", _dropin()),
    ]


class CheckerError(UltravioletError):
    """The guest did not report (no checker output, or it stopped before the end marker)."""


@dataclass(frozen=True)
class GuestReport:
    facts: tuple[tuple[str, str], ...]

    def get(self, key: str) -> str:
        values = self.all(key)
        if not values:
            raise CheckerError(f"the guest reported no {key!r}")
        return values[-1]

    def all(self, key: str) -> list[str]:
        return [value for name, value in self.facts if name == key]

    def listed(self, key: str) -> list[str]:
        """A value the guest joined with '|' (one line per fact), split again."""
        value = self.get(key)
        return value.split("|") if value else []

    def efi_string(self, key: str) -> str:
        """A UTF-16 EFI variable the guest sent as base64 (4 attribute bytes, then the string)."""
        try:
            raw = base64.b64decode(self.get(key), validate=True)
            return raw[4:].decode("utf-16-le").rstrip("\0")
        except (ValueError, UnicodeDecodeError):
            raise CheckerError(f"{key} is not a base64 UTF-16 EFI variable") from None

    def efi_strings(self, key: str) -> list[str]:
        """A UTF-16 EFI variable holding NUL-separated strings (LoaderEntries)."""
        try:
            raw = base64.b64decode(self.get(key), validate=True)
            return [s for s in raw[4:].decode("utf-16-le").split("\0") if s]
        except (ValueError, UnicodeDecodeError):
            raise CheckerError(f"{key} is not a base64 UTF-16 EFI variable") from None

    def boot_phases(self) -> dict[str, float]:
        """Seconds spent in each boot phase, as systemd-analyze splits them (userspace: until
        multi-user.target was reached)."""
        raw = dict(item.split("=", 1) for item in self.listed("boot-times") if "=" in item)
        try:
            stamps = {key.removesuffix("TimestampMonotonic"): int(raw[key]) for key in raw}
            reached = int(self.get("multi-user-at"))
            firmware, loader = stamps["Firmware"], stamps["Loader"]
            initrd, userspace = stamps["InitRD"], stamps["Userspace"]
        except (KeyError, ValueError):
            raise CheckerError(f"boot times incomplete: {raw}") from None
        phases = {
            "firmware": firmware - loader,
            "loader": loader,
            "kernel": initrd,
            "initrd": userspace - initrd,
            "userspace": reached - userspace,
        }
        return {name: microseconds / 1e6 for name, microseconds in phases.items()}

    def pcr(self, index: int, bank: str = "sha256") -> bytes:
        text = self.get(f"pcr-{bank}:{index}")
        try:
            return bytes.fromhex(text)
        except ValueError:
            raise CheckerError(f"PCR {index} reported as {text!r}") from None


def parse_report(console: str) -> GuestReport:
    """The checker's facts from a serial console log (escape sequences already removed)."""
    if END_MARKER not in console:
        seen = len(_LINE.findall(console))
        raise CheckerError(f"the checker did not finish ({seen} facts before the console ended)")
    facts = tuple((key, value.rstrip()) for key, value in _LINE.findall(console))
    return GuestReport(facts)
