"""Our MakeCredential against a real TPM implementation and against tpm2-tools' own.

- swtpm (through our driver, i.e. tpm2_activatecredential with the EK's policy session) gives
  back the secret of a credential we made for its EK and AK, for RSA and ECC EKs; a credential
  made for another name is refused by the TPM.
- tpm2_makecredential --tcti none (OpenSSL inside tpm2-tools; -n takes the name in hex) wraps
  a secret to an EK whose private key we hold: we take its seed out with that key and our blob
  for the same seed is byte for byte the tool's (for ECC this also checks KDFe, which derives
  the seed).
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.formats.test_tpmcredential import ek_public_area
from ultraviolet.errors import ToolError
from ultraviolet.formats.tpm import ALG_SHA256, parse_public_2b
from ultraviolet.formats.tpmcredential import (
    activate_credential,
    make_credential,
    parse_credential_file,
    recover_seed,
    wrap_credential,
)
from ultraviolet.node.tpm import TpmDriver
from ultraviolet.testbed.swtpm import running_swtpm
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

SECRET = b"0123456789abcdef0123456789abcdef"


@pytest.mark.parametrize("algorithm", ["rsa", "ecc"])
def test_swtpm_activates_our_credential(
    tools_chroot: ToolsChroot, tmp_path: Path, algorithm: str
) -> None:
    with running_swtpm(tools_chroot, tmp_path / "tpm") as swtpm:
        driver = TpmDriver(
            tmp_path / "state", tcti=swtpm.tcti, ek_algorithm=algorithm,
            chroot=tools_chroot, binds=[swtpm.directory],
        )  # fmt: skip
        ek = parse_public_2b(driver.ek_public())
        assert ek.type == (0x0001 if algorithm == "rsa" else 0x0023)
        ak = driver.ak_public()
        assert (tmp_path / "state" / "ak.name").read_bytes() == ak.name()
        blob, encrypted = make_credential(ek, ak.name(), SECRET)
        assert driver.activate_credential(blob, encrypted) == SECRET
        # A credential for any other key name: the TPM's integrity check fails.
        other = ak.name()[:-1] + bytes([ak.name()[-1] ^ 1])
        blob, encrypted = make_credential(ek, other, SECRET)
        with pytest.raises(ToolError, match="tpm2_activatecredential"):
            driver.activate_credential(blob, encrypted)
        # Failed or not, nothing is left loaded: no objects, no policy sessions.
        for handles in ("handles-transient", "handles-loaded-session", "handles-saved-session"):
            assert driver._run(["tpm2_getcap", handles]).text.strip() == "", handles


@pytest.mark.parametrize("algorithm", ["rsa", "ecc"])
def test_tpm2_makecredential_equals_ours_for_its_seed(
    tools_chroot: ToolsChroot, tmp_path: Path, algorithm: str
) -> None:
    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    if algorithm == "rsa":
        private = rsa.generate_private_key(65537, 2048)
    else:
        private = ec.generate_private_key(ec.SECP256R1())
    ek = ek_public_area(private)
    (tmp_path / "ek.pub").write_bytes(ek.to_2b())
    ak_name = bytes.fromhex("000b") + bytes(range(100, 132))
    (tmp_path / "secret").write_bytes(SECRET)
    tools_chroot.run(
        [
            "tpm2_makecredential", "--tcti", "none", "-u", str(tmp_path / "ek.pub"),
            "-s", str(tmp_path / "secret"), "-n", ak_name.hex(),
            "-o", str(tmp_path / "credential"),
        ],
        binds=[tmp_path],
    )  # fmt: skip
    theirs, encrypted = parse_credential_file((tmp_path / "credential").read_bytes())
    seed = recover_seed(private, ek, encrypted)
    assert len(seed) == 32
    assert wrap_credential(ALG_SHA256, 128, seed, ak_name, SECRET).to_2b() == theirs
    assert activate_credential(private, ek, ak_name, theirs, encrypted) == SECRET
    if algorithm == "rsa":  # the same seed through our whole MakeCredential
        assert make_credential(ek, ak_name, SECRET, seed=seed)[0] == theirs
