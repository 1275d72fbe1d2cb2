"""The TPM driver and the simulated node on swtpm: real event logs booted into the TPM quote to
exactly the values our replay computes from the same logs; quotes verify with the AK (RSA and
ECC), carry the nonce and name the AK under the EK; TPM resets are survived with the same AK,
power losses too (the AK is not subject to dictionary-attack lockout)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from ultraviolet.attest.simulate import SecureBootKeys, boot_measurements, synthetic_release
from ultraviolet.errors import UltravioletError
from ultraviolet.formats.eventlog import (
    parse_event_log,
    parse_userspace_log,
    replay,
    replay_userspace,
)
from ultraviolet.formats.eventlog_write import startup_locality
from ultraviolet.formats.tpm import (
    RH_ENDORSEMENT,
    parse_public_2b,
    parse_signature,
    qualified_name,
    verify_quote,
)
from ultraviolet.node.tpm import TpmDriver, TpmDriverError, selection_argument
from ultraviolet.testbed.simnode import boot_extends, simulated_node
from ultraviolet.testbed.swtpm import Swtpm, running_swtpm
from ultraviolet.tools import ToolsChroot

EVENTLOGS = Path("/work/shared/testdata/eventlogs")
NONCE = bytes.fromhex("00112233445566778899aabbccddeeff")


def _driver_for(chroot: ToolsChroot, **options: Any) -> Any:
    def make(swtpm: Swtpm, state: Path) -> TpmDriver:
        return TpmDriver(state, tcti=swtpm.tcti, chroot=chroot, binds=[swtpm.directory], **options)

    return make


def test_selection_argument() -> None:
    assert selection_argument({"sha256": [7, 0, 7], "sha1": [0]}) == "sha256:0,7+sha1:0"
    for bad in ({}, {"sha256": []}, {"sha256": [24]}, {"md5": [0]}):
        with pytest.raises(UltravioletError, match=r"PCR|empty|hash"):
            selection_argument(bad)


def test_boot_extends_match_the_simulation() -> None:
    release = synthetic_release("uv", "1", SecureBootKeys.generate())
    boot = boot_measurements(release)
    assert boot_extends(boot.firmware_log, boot.userspace) == boot.extends()


@pytest.mark.oracle
@pytest.mark.parametrize(
    "name", ["ubuntu_2104_shielded_vm_no_secure_boot_eventlog", "option_rom_eventlog"]
)
def test_real_event_log_booted_into_swtpm_quotes_its_replay(
    tools_chroot: ToolsChroot, tmp_path: Path, name: str
) -> None:
    log_bytes = (EVENTLOGS / name).read_bytes()
    log = parse_event_log(log_bytes)
    with simulated_node(tools_chroot, tmp_path, _driver_for(tools_chroot), log_bytes) as node:
        for bank in log.banks:
            expected = {pcr: v for pcr, v in replay(log, bank).items() if pcr < 24}
            quote = node.tpm.quote({bank: sorted(expected)}, NONCE)
            assert quote.pcrs == {bank: expected}
            public = node.tpm.ak_public()
            checked = verify_quote(
                quote.message, parse_signature(quote.signature), public, nonce=NONCE
            )
            assert checked.selections[0].bank == bank
            assert node.tpm.read_pcrs({bank: sorted(expected)}) == {bank: expected}


@pytest.mark.oracle
@pytest.mark.parametrize("ak_algorithm", ["rsa", "ecc"])
def test_quotes_of_both_ak_kinds_survive_a_tpm_reset(
    tools_chroot: ToolsChroot, tmp_path: Path, ak_algorithm: str
) -> None:
    release = synthetic_release("uv", "1", SecureBootKeys.generate())
    boot = boot_measurements(release)
    make = _driver_for(tools_chroot, ak_algorithm=ak_algorithm)
    with simulated_node(tools_chroot, tmp_path, make, boot.firmware_log, boot.userspace) as node:
        selection = {"sha256": [0, 4, 7, 11], "sha1": [4, 7]}
        first = node.tpm.quote(selection, NONCE)
        public = node.tpm.ak_public()
        assert public.type == (0x0001 if ak_algorithm == "rsa" else 0x0023)
        quote = verify_quote(first.message, parse_signature(first.signature), public, nonce=NONCE)
        assert [s.bank for s in quote.selections] == ["sha256", "sha1"]
        # The quote names the AK by its qualified name under the EK (endorsement hierarchy).
        ek = parse_public_2b(node.tpm.ek_public())
        ek_qn = qualified_name(RH_ENDORSEMENT, ek.name())
        assert quote.attest.qualified_signer == qualified_name(ek_qn, public.name())
        # PCR 11 after the userspace phases, as replayed from both logs.
        firmware = replay(parse_event_log(boot.firmware_log), "sha256")
        full = replay_userspace(parse_userspace_log(boot.userspace), "sha256", firmware)
        assert first.pcrs["sha256"][11] == full[11]

        assert "noda" in public.attribute_names  # no lockout after power losses, below
        for _ in range(3):  # TPM resets: the saved AK context no longer loads, the blobs do
            node.reboot(orderly=False)
        second = node.tpm.quote(selection, NONCE[::-1])
        assert node.tpm.ak_public() == public
        verify_quote(second.message, parse_signature(second.signature), public, nonce=NONCE[::-1])
        assert second.pcrs == first.pcrs  # the same boot measured again
        assert parse_public_2b(node.tpm.ek_public()) == ek  # the EK is a function of the seed
        # Nothing stays loaded in a TPM without a resource manager (it has three slots).
        for handles in ("handles-transient", "handles-loaded-session", "handles-saved-session"):
            assert node.tpm._run(["tpm2_getcap", handles]).text.strip() == "", handles


@pytest.mark.oracle
def test_a_fresh_tpm_has_no_ek_certificate_and_refuses_a_bad_selection(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    with running_swtpm(tools_chroot, tmp_path / "tpm") as swtpm:
        driver = _driver_for(tools_chroot)(swtpm, tmp_path / "state")
        assert driver.ek_certificate() is None
        with pytest.raises(TpmDriverError, match="PCR index"):
            driver.quote({"sha256": [30]}, NONCE)
    assert not swtpm.running()


@pytest.mark.oracle
def test_a_startup_locality_3_log_starts_pcr0_there(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    boot = boot_measurements(synthetic_release("uv", "1", SecureBootKeys.generate()))
    located = replace(boot, firmware=(startup_locality(3, boot.banks), *boot.firmware))
    log = parse_event_log(located.firmware_log)
    expected = replay(log, "sha256")[0]
    assert expected != replay(parse_event_log(boot.firmware_log), "sha256")[0]
    with simulated_node(
        tools_chroot, tmp_path, _driver_for(tools_chroot), located.firmware_log
    ) as node:
        assert node.tpm.quote({"sha256": [0]}, NONCE).pcrs == {"sha256": {0: expected}}
        node.reboot(firmware_log=boot.firmware_log)  # and a plain startup again
        assert node.tpm.read_pcrs({"sha256": [0]}) == {
            "sha256": {0: replay(parse_event_log(boot.firmware_log), "sha256")[0]}
        }


@pytest.mark.oracle
def test_a_manufactured_tpm_has_a_certificate_for_the_ek_we_recreate(
    tools_chroot: ToolsChroot, tmp_path: Path
) -> None:
    """swtpm_setup plays the vendor: its EK certificate (NV 0x01c00002, issued by a local CA)
    certifies exactly the key tpm2_createek makes from the default template."""
    log = (EVENTLOGS / "crypto_agile_eventlog").read_bytes()
    make = _driver_for(tools_chroot)
    with simulated_node(tools_chroot, tmp_path, make, log, manufactured=True) as node:
        der = node.tpm.ek_certificate()
        assert der is not None
        certificate = x509.load_der_x509_certificate(der)
        ek = parse_public_2b(node.tpm.ek_public())
        spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        assert certificate.public_key().public_bytes(*spki) == ek.public_key().public_bytes(*spki)
        issuer = x509.load_pem_x509_certificate((tmp_path / "tpm/ca/issuercert.pem").read_bytes())
        certificate.verify_directly_issued_by(issuer)
        # The manufactured TPM still boots the log and quotes it (all banks active).
        values = replay(parse_event_log(log), "sha256")
        assert node.tpm.quote({"sha256": sorted(values)}, NONCE).pcrs == {"sha256": values}
