"""The appraisal on genuine TPM quotes: swtpm + tpm2-tools in the tools chroot.

Our writer produces the logs of simulated boots (attest/simulate.py); a chroot script extends
swtpm's PCRs with every logged event (tpm2_pcrextend), quotes them with an AK made by
tpm2_createak under the EK, and reads the firmware log back with tpm2_eventlog (the oracle of
our writer: its replay and event list must equal ours, and the TPM's PCRs). Each boot runs on a
copy of one TPM state: fresh PCRs, the same EK and AKs. The genuine boot is trusted; each
forgery is untrusted with the finding id that names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path

import pytest

from ultraviolet.attest.appraise import appraise
from ultraviolet.attest.model import Appraisal, FindingId, NodeState
from ultraviolet.attest.references import AcceptedReleases, accept_references
from ultraviolet.attest.simulate import (
    Boot,
    SecureBootKeys,
    boot_measurements,
    synthetic_release,
)
from ultraviolet.formats import eventlog as ev
from ultraviolet.formats.evidence import Evidence, IpeEvent
from ultraviolet.formats.tpm import parse_public_2b
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

PCRS = (0, 2, 4, 7, 11, 12, 13, 15)
SELECTION = "sha256:" + ",".join(map(str, PCRS))
NONCE = "0123456789abcdef0123456789abcdef"
AK_HANDLES = {"ak": "0x81010002", "other-ak": "0x81010003"}

# Without a resource manager every tool leaves its transient objects loaded: flush after each.
SCRIPT = r"""
set -eu
out=$1; shift
start() {
    swtpm socket --tpm2 --tpmstate dir=$1 --server type=unixio,path=$1/s \
        --ctrl type=unixio,path=$1/s.ctrl --flags not-need-init,startup-clear 2>/dev/null &
    swtpm_pid=$!
    for _ in $(seq 100); do [ -S $1/s ] && break; sleep 0.1; done
    export TPM2TOOLS_TCTI=swtpm:path=$1/s
}
stop() { kill $swtpm_pid; wait $swtpm_pid || true; }
trap 'kill $swtpm_pid 2>/dev/null || true' EXIT
state=$(mktemp -d)
start $state
cd $out
tpm2_createek -c ek.ctx -G rsa -u ek.pub > /dev/null
tpm2_flushcontext -t
for key in ak:$AK other-ak:$OTHER; do
    name=${key%%:*} handle=${key#*:}
    tpm2_createak -C ek.ctx -c $name.ctx -G rsa -g sha256 -s rsassa -u $name.pub -r $name.priv \
        -f tss > /dev/null
    tpm2_flushcontext -t; tpm2_flushcontext -s
    tpm2_evictcontrol -C o -c $name.ctx $handle > /dev/null
    tpm2_flushcontext -t
    tpm2_readpublic -c $handle -o $name.tpm2b -f tss > /dev/null
done
stop
for boot in "$@"; do
    copy=$(mktemp -d)
    cp -a $state/. $copy/
    rm -f $copy/s $copy/s.ctrl
    start $copy
    xargs tpm2_pcrextend < $boot/extends
    tpm2_quote -c $(cat $boot/key) -l $SELECTION -q $NONCE -m $boot/quote.msg -s $boot/quote.sig \
        -o $boot/quote.pcrs -g sha256 --pcrs_format values > /dev/null
    tpm2_flushcontext -t
    tpm2_pcrread sha256 > $boot/pcrread.yaml
    tpm2_eventlog $boot/firmware.log > $boot/eventlog.yaml
    stop
done
"""

BOOTS = ("genuine", "other-ak", "rogue-loader", "other-uki", "secure-boot-off")


@dataclasses.dataclass(frozen=True)
class Quoted:
    boot: Boot
    directory: Path


@dataclasses.dataclass(frozen=True)
class Run:
    accepted: AcceptedReleases
    ak: Path
    boots: dict[str, Quoted]
    logged: dict[str, Boot]  # what each node sends as its logs


def _extends(boot: Boot) -> str:
    return "".join(
        f"{pcr}:" + ",".join(f"{bank}={digest.hex()}" for bank, digest in digests.items()) + "\n"
        for pcr, digests in boot.extends()
    )


@pytest.fixture(scope="module")
def run(tools_chroot: ToolsChroot, tmp_path_factory: pytest.TempPathFactory) -> Run:
    keys = SecureBootKeys.generate()
    release = synthetic_release("host", "1.0", keys)
    other = synthetic_release("host", "2.0", keys)
    genuine = boot_measurements(release)
    rogue = boot_measurements(release, boot_loader=hashlib.sha256(b"rogue loader").digest())
    boots = {
        "genuine": (genuine, "ak"),
        "other-ak": (genuine, "other-ak"),
        "rogue-loader": (rogue, "ak"),
        "other-uki": (boot_measurements(other), "ak"),
        "secure-boot-off": (boot_measurements(release, secure_boot=False), "ak"),
    }
    out = tmp_path_factory.mktemp("attest")
    quoted = {}
    for name, (boot, key) in boots.items():
        directory = out / name
        directory.mkdir()
        (directory / "extends").write_text(_extends(boot))
        (directory / "key").write_text(AK_HANDLES[key])
        (directory / "firmware.log").write_bytes(boot.firmware_log)
        quoted[name] = Quoted(boot, directory)
    (out / "run.sh").write_text(SCRIPT)
    env = {"SELECTION": SELECTION, "NONCE": NONCE, "AK": AK_HANDLES["ak"]}
    env["OTHER"] = AK_HANDLES["other-ak"]
    tools_chroot.run(
        ["sh", str(out / "run.sh"), str(out), *(str(out / name) for name in boots)],
        binds=[out],
        env=env,
        timeout=600,
    )
    logged = {name: boot for name, (boot, _) in boots.items()}
    logged["rogue-loader"] = genuine  # the node hides the rogue loader behind ours
    accepted = accept_references([release.reference], PCRS)
    return Run(accepted, out / "ak.tpm2b", quoted, logged)


def _evidence(run: Run, name: str, ipe: tuple[IpeEvent, ...] = ()) -> Evidence:
    directory = run.boots[name].directory
    values = (directory / "quote.pcrs").read_bytes()
    assert len(values) == 32 * len(PCRS)
    pcrs = {"sha256": {pcr: values[32 * i : 32 * i + 32] for i, pcr in enumerate(PCRS)}}
    logged = run.logged[name]
    return Evidence(
        quote=(directory / "quote.msg").read_bytes(),
        signature=(directory / "quote.sig").read_bytes(),
        pcrs=pcrs,
        firmware_log=logged.firmware_log,
        userspace_log=logged.userspace,
        ipe_events=ipe,
    )


def _appraise(run: Run, evidence: Evidence, nonce: str = NONCE) -> Appraisal:
    ak = parse_public_2b(run.ak.read_bytes())
    return appraise(evidence, ak=ak, nonce=bytes.fromhex(nonce), accepted=run.accepted)


def _failed(appraisal: Appraisal) -> set[FindingId]:
    assert appraisal.state is NodeState.UNTRUSTED
    return {finding.id for finding in appraisal.failures}


_PCR_LINE = re.compile(r"^\s+(\d+)\s*: 0x([0-9A-Fa-f]+)$", re.MULTILINE)


def _sha256_section(text: str) -> dict[int, bytes]:
    section = text[text.index("sha256:") :]
    section = re.split(r"\n\s*sha384:|\n\s*sha512:|\n\s*sha1:", section)[0]
    return {int(pcr): bytes.fromhex(value) for pcr, value in _PCR_LINE.findall(section)}


@pytest.mark.parametrize("name", BOOTS)
def test_written_log_equals_tpm2_eventlog_and_the_tpm(run: Run, name: str) -> None:
    """Our writer's log, read by tpm2_eventlog and by our parser, replays to what swtpm holds
    after extending every event."""
    directory, boot = run.boots[name].directory, run.boots[name].boot
    log = ev.parse_event_log(boot.firmware_log)
    assert log.to_bytes() == boot.firmware_log
    text = (directory / "eventlog.yaml").read_text()
    listed = re.findall(r"PCRIndex: (\d+)\n\s+EventType: (\S+)", text)
    assert [(int(pcr), kind) for pcr, kind in listed] == [(e.pcr, e.type_name) for e in log.events]
    theirs = _sha256_section(text[text.rindex("\npcrs:\n") :])
    firmware = ev.replay(log, "sha256")
    assert theirs == firmware
    tpm = _sha256_section((directory / "pcrread.yaml").read_text())
    combined = ev.replay_userspace(ev.parse_userspace_log(boot.userspace), "sha256", firmware)
    for pcr in range(24):
        assert tpm[pcr] == combined.get(pcr, bytes(32) if not 17 <= pcr <= 22 else b"\xff" * 32)


def test_genuine_quote_is_trusted(run: Run) -> None:
    appraisal = _appraise(run, _evidence(run, "genuine"))
    assert appraisal.state is NodeState.TRUSTED, appraisal.failures
    assert appraisal.release == "host 1.0"


def test_reused_or_wrong_nonce_is_untrusted(run: Run) -> None:
    appraisal = _appraise(run, _evidence(run, "genuine"), nonce="ff" + NONCE[2:])
    assert _failed(appraisal) == {FindingId.NONCE_FRESH}


def test_quote_by_another_ak_is_untrusted(run: Run) -> None:
    assert _failed(_appraise(run, _evidence(run, "other-ak"))) == {FindingId.AK_KNOWN}


def test_quote_altered_after_signing_is_untrusted(run: Run) -> None:
    evidence = _evidence(run, "genuine")
    altered = bytearray(evidence.quote)
    altered[-1] ^= 1
    appraisal = _appraise(run, dataclasses.replace(evidence, quote=bytes(altered)))
    assert _failed(appraisal) == {FindingId.QUOTE_SIGNATURE}


def test_forged_log_entry_is_untrusted(run: Run) -> None:
    appraisal = _appraise(run, _evidence(run, "rogue-loader"))
    assert _failed(appraisal) == {FindingId.EVENTLOG_REPLAY}
    finding = appraisal.finding(FindingId.EVENTLOG_REPLAY)
    assert finding is not None and "sha256 PCR 4:" in finding.message


def test_pcr11_of_a_different_uki_is_untrusted(run: Run) -> None:
    failed = _failed(_appraise(run, _evidence(run, "other-uki")))
    assert failed == {FindingId.PCR11_REFERENCE, FindingId.PCR4_BOOT_CHAIN}


def test_secure_boot_off_is_untrusted(run: Run) -> None:
    appraisal = _appraise(run, _evidence(run, "secure-boot-off"))
    assert _failed(appraisal) == {FindingId.PCR7_SECURE_BOOT}


def test_ipe_denial_is_untrusted(run: Run) -> None:
    denial = IpeEvent(
        "audit(1700000000.123:42)",
        'ipe_op=EXECUTE ipe_hook=BPRM_CHECK enforcing=1 pid=7 comm="sh" path="/tmp/a" '
        'dev="tmpfs" ino=3 rule="DEFAULT action=DENY"',
    )
    appraisal = _appraise(run, _evidence(run, "genuine", (denial,)))
    assert _failed(appraisal) == {FindingId.IPE_DENIALS}
