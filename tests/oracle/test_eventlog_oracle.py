"""Event logs against tpm2_eventlog, and systemd's userspace log against a software TPM.

tpm2_eventlog (tpm2-tools) reads every test log: its final "pcrs:" section must equal our
replay for every bank, and its event list our events. systemd-pcrextend measures into swtpm and
writes /run/log/systemd/tpm2-measure.log: replaying that log must give what tpm2_pcrread reads.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest

from ultraviolet.formats.eventlog import (
    EventLog,
    UefiVariable,
    parse_event_log,
    parse_userspace_log,
    replay,
    replay_userspace,
)
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

LOGS = Path("/work/shared/testdata/eventlogs")
BINARY_LOGS = sorted(p.name for p in LOGS.glob("*_eventlog"))

_BANK = re.compile(r"^  (\w+):$")
_PCR = re.compile(r"^    (\d+)\s*: 0x([0-9a-fA-F]+)$")


def _pcr_sections(text: str) -> dict[str, dict[int, str]]:
    """The PCR listings of tpm2_eventlog's "pcrs:" (or tpm2_pcrread's) YAML: bank -> values."""
    banks: dict[str, dict[int, str]] = {}
    current: dict[int, str] | None = None
    for line in text.splitlines():
        if bank := _BANK.match(line):
            current = banks.setdefault(bank.group(1), {})
        elif (pcr := _PCR.match(line)) and current is not None:
            current[int(pcr.group(1))] = pcr.group(2).lower()
        elif not line.startswith("    "):
            current = None
    return banks


def _tpm2_eventlog(tools: ToolsChroot, path: Path) -> str:
    return tools.run(["tpm2_eventlog", str(path)], binds=[path.parent]).text


def _compare(log: EventLog, text: str) -> None:
    final = text[text.rindex("\npcrs:\n") :]
    theirs = _pcr_sections(final)
    assert sorted(theirs) == sorted(log.banks)
    for bank in log.banks:
        ours = {pcr: value.hex() for pcr, value in replay(log, bank).items()}
        assert ours == theirs[bank], bank
    events = text[: text.rindex("\npcrs:\n")]
    # tpm2_eventlog prints the PCR index as signed: Windows' 0xffffffff record shows as -1.
    listed = [
        (int(pcr) & 0xFFFFFFFF, kind)
        for pcr, kind in re.findall(r"PCRIndex: (-?\d+)\n\s+EventType: (\S+)", events)
    ]
    assert listed == [(event.pcr, event.type_name) for event in log.events]
    names = re.findall(r"^\s+UnicodeName: (.*)$", events, re.MULTILINE)
    decoded = [c.name for e in log.events if isinstance(c := e.content(), UefiVariable)]
    assert names == decoded


@pytest.mark.parametrize("name", BINARY_LOGS)
def test_replay_and_events_equal_tpm2_eventlog(tools_chroot: ToolsChroot, name: str) -> None:
    path = LOGS / name
    _compare(parse_event_log(path.read_bytes()), _tpm2_eventlog(tools_chroot, path))


def test_windows_log_equals_tpm2_eventlog(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    vector = json.loads((LOGS / "windows_gcp_shielded_vm.json").read_text())
    path = tmp_path / "windows_eventlog"
    path.write_bytes(base64.b64decode(vector["Log"]["Raw"]))
    _compare(parse_event_log(path.read_bytes()), _tpm2_eventlog(tools_chroot, path))


# systemd-pcrextend writes its log under /run, which is private to each chroot command: start
# swtpm, measure, and copy the log and the TPM's PCRs out in one script.
USERSPACE_SCRIPT = r"""
set -eu
out=$1
state=$(mktemp -d)
swtpm socket --tpm2 --tpmstate dir=$state --server type=unixio,path=$state/s \
    --ctrl type=unixio,path=$state/s.ctrl --flags not-need-init,startup-clear 2>/dev/null &
swtpm_pid=$!
trap 'kill $swtpm_pid' EXIT
for _ in $(seq 100); do [ -S $state/s ] && break; sleep 0.1; done
export SYSTEMD_FORCE_MEASURE=1 TPM2TOOLS_TCTI=swtpm:path=$state/s
device="--tpm2-device=swtpm:path=$state/s"
extend=/usr/lib/systemd/systemd-pcrextend
$extend $device enter-initrd
$extend $device leave-initrd
$extend $device --pcr=15 --bank=sha256 "machine-id:0123456789abcdef0123456789abcdef"
$extend $device --pcr=12 --bank=sha1 --bank=sha256 "kernel-config"
cp /run/log/systemd/tpm2-measure.log $out/tpm2-measure.log
tpm2_pcrread sha1:11,12,15+sha256:11,12,15 > $out/pcrs.yaml
"""


def test_userspace_log_replays_to_the_tpms_pcrs(tools_chroot: ToolsChroot, tmp_path: Path) -> None:
    script = tmp_path / "measure.sh"
    script.write_text(USERSPACE_SCRIPT)
    tools_chroot.run(["sh", str(script), str(tmp_path)], binds=[tmp_path], timeout=120)
    events = parse_userspace_log((tmp_path / "tpm2-measure.log").read_bytes())
    assert [(e.pcr, e.string, e.content_type) for e in events] == [
        (11, "enter-initrd", "systemd"),
        (11, "leave-initrd", "systemd"),
        (15, "machine-id:0123456789abcdef0123456789abcdef", "systemd"),
        (12, "kernel-config", "systemd"),
    ]
    tpm = _pcr_sections((tmp_path / "pcrs.yaml").read_text())
    zeros = {"sha1": "00" * 20, "sha256": "00" * 32}
    for bank in ("sha1", "sha256"):
        ours = {pcr: value.hex() for pcr, value in replay_userspace(events, bank).items()}
        for pcr, value in tpm[bank].items():
            assert ours.get(pcr, zeros[bank]) == value, (bank, pcr)
    assert tpm["sha1"][15] == zeros["sha1"]  # only the sha256 bank saw PCR 15's measurement
