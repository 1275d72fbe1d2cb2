"""The node's TPM, driven through tpm2-tools (on the node itself, or in the tools chroot in tests).

Keys:
- the endorsement key (EK) is the TCG default RSA-2048 (or ECC P-256) template, recreated with
  tpm2_createek whenever needed: a primary key is a function of the TPM's endorsement seed, so
  it is the same key every time and nothing about it needs keeping;
- the attestation key (AK) is a restricted signing key made under the EK (as tpm2_createak
  makes it, plus noda: see ensure_ak). Its public and (TPM-wrapped) private blobs are kept in
  the state directory, so the same AK is loaded again after every reboot and the verifier's
  enrolment stays valid.
Loaded objects live as saved contexts in state/run; a TPM reset (reboot, swtpm restart)
invalidates them, and the driver then loads the AK again from its blobs.

Without a kernel resource manager (swtpm in tests, /dev/tpm0) every tool leaves its objects
loaded and the TPM has three slots: the driver flushes transient objects and sessions after
each command. With /dev/tpmrm0 the kernel does it.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ultraviolet.errors import AttestationError, ToolError
from ultraviolet.formats import tpm
from ultraviolet.formats.tpmcredential import credential_file
from ultraviolet.tools import Result, ToolsChroot, run_host

log = logging.getLogger("ultraviolet.node.tpm")

DEFAULT_TCTI = "device:/dev/tpmrm0"
# TCG EK Credential Profile: where the manufacturer stores the EK certificate, per EK type.
EK_CERTIFICATE_NV = {"rsa": "0x01c00002", "ecc": "0x01c0000a"}
AK_TEMPLATES = {"rsa": "rsa2048:rsassa-sha256:null", "ecc": "ecc256:ecdsa-sha256:null"}
AK_OBJECT_ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign|noda"
TPM_TIMEOUT = 120.0  # a real TPM may take seconds to make an RSA primary
QUOTE_ATTEMPTS = 3


class TpmDriverError(AttestationError):
    """The TPM refused or could not do what the node needs."""


@dataclass(frozen=True)
class QuoteResult:
    """A quote as the verifier wants it: the signed TPMS_ATTEST, its TPMT_SIGNATURE and the
    PCR values it covers (bank -> index -> value), checked against its pcrDigest."""

    message: bytes
    signature: bytes
    pcrs: Mapping[str, Mapping[int, bytes]]


def selection_argument(selection: Mapping[str, Sequence[int]]) -> str:
    """tpm2-tools' PCR selection: sha256:0,1,7+sha1:0."""
    if not selection or any(not pcrs for pcrs in selection.values()):
        raise TpmDriverError("an empty PCR selection")
    for bank, pcrs in selection.items():
        tpm.hash_id(bank)
        if any(not 0 <= pcr < 24 for pcr in pcrs):
            raise TpmDriverError(f"PCR index out of 0-23 in {bank}: {list(pcrs)}")
    return "+".join(
        f"{bank}:{','.join(map(str, sorted(set(pcrs))))}" for bank, pcrs in selection.items()
    )


class TpmDriver:
    """One TPM, reached through `tcti`, with the AK kept in `state_dir`.

    `chroot`: run tpm2-tools in the tools chroot (tests; `binds` must then hold the TCTI's
    socket directory) instead of the host's (a node)."""

    def __init__(
        self,
        state_dir: Path,
        *,
        tcti: str = DEFAULT_TCTI,
        ek_algorithm: str = "rsa",
        ak_algorithm: str = "rsa",
        chroot: ToolsChroot | None = None,
        binds: Iterable[Path] = (),
    ) -> None:
        if ek_algorithm not in EK_CERTIFICATE_NV or ak_algorithm not in AK_TEMPLATES:
            raise TpmDriverError(
                f"key algorithms are rsa or ecc, not {ek_algorithm}/{ak_algorithm}"
            )
        self.state_dir = state_dir
        self.run_dir = state_dir / "run"
        self.tcti = tcti
        self.ek_algorithm = ek_algorithm
        self.ak_algorithm = ak_algorithm
        self.chroot = chroot
        self.binds = (state_dir, *binds)
        # The kernel's resource manager flushes for us; anything else needs explicit flushes.
        self.flushes = not tcti.startswith("device:/dev/tpmrm")
        self.run_dir.mkdir(parents=True, exist_ok=True)

    # Running tools.

    def _run(self, argv: Sequence[str], *, check: bool = True) -> Result:
        env = {"TPM2TOOLS_TCTI": self.tcti}
        if self.chroot is not None:
            return self.chroot.run(
                argv, binds=self.binds, env=env, timeout=TPM_TIMEOUT, check=check
            )
        return run_host(argv, env=env, timeout=TPM_TIMEOUT, check=check)

    def _tpm(self, argv: Sequence[str], *, check: bool = True) -> Result:
        """A command that may load objects: flush what it left behind, also when it failed."""
        try:
            return self._run(argv, check=check)
        finally:
            if self.flushes:
                self._run(["tpm2_flushcontext", "--transient-object"], check=False)

    def _with_endorsement_session(self, argv: Sequence[str]) -> Result:
        """Run `argv` (with "session:SESSION" as the EK's auth) in a policy session satisfying
        the EK's policy (PolicySecret on the endorsement hierarchy)."""
        session = self.run_dir / "session.ctx"
        self._tpm(["tpm2_startauthsession", "--policy-session", "-S", str(session)])
        try:
            self._tpm(["tpm2_policysecret", "-S", str(session), "-c", "e"])
            return self._tpm([part.replace("SESSION", str(session)) for part in argv])
        finally:
            self._run(["tpm2_flushcontext", str(session)], check=False)
            session.unlink(missing_ok=True)

    # Keys.

    @property
    def ak_public_path(self) -> Path:
        return self.state_dir / "ak.pub"

    def _ek_context(self) -> Path:
        context = self.run_dir / "ek.ctx"
        ek_public = self.run_dir / "ek.pub"
        self._tpm(
            ["tpm2_createek", "-c", str(context), "-G", self.ek_algorithm, "-u", str(ek_public)]
        )
        return context

    def ek_public(self) -> bytes:
        """The EK's TPM2B_PUBLIC."""
        self._ek_context()
        return (self.run_dir / "ek.pub").read_bytes()

    def ek_certificate(self) -> bytes | None:
        """The manufacturer's EK certificate (DER) from its NV index, None if there is none
        (swtpm without swtpm_setup --create-ek-cert, many VMs)."""
        index = EK_CERTIFICATE_NV[self.ek_algorithm]
        listed = self._run(["tpm2_getcap", "handles-nv-index"]).text  # "- 0x1C00002" lines
        if int(index, 16) not in {int(h, 16) for h in re.findall(r"0x[0-9a-fA-F]+", listed)}:
            return None
        out = self.run_dir / "ek-cert.der"
        self._run(["tpm2_nvread", "-C", "o", "-o", str(out), index])
        return out.read_bytes()

    def ensure_ak(self) -> bytes:
        """The AK's TPM2B_PUBLIC, creating the AK under the EK on first use.

        The AK is what tpm2_createak makes (a restricted signing key, fixed to the TPM, with an
        empty authValue) plus `noda`: with no secret to guess, dictionary-attack protection
        guards nothing, while a TPM in lockout (power losses count as failed tries) would
        refuse every quote until its recovery time passed."""
        if self.ak_public_path.exists() and (self.state_dir / "ak.priv").exists():
            return self.ak_public_path.read_bytes()
        ek = self._ek_context()
        staged = {name: self.run_dir / f"new-{name}" for name in ("ak.pub", "ak.priv")}
        self._with_endorsement_session(
            [
                "tpm2_create", "-C", str(ek), "-P", "session:SESSION",
                "-G", AK_TEMPLATES[self.ak_algorithm], "-g", "sha256", "-a", AK_OBJECT_ATTRIBUTES,
                "-u", str(staged["ak.pub"]), "-r", str(staged["ak.priv"]),
            ]
        )  # fmt: skip
        public = tpm.parse_public_2b(staged["ak.pub"].read_bytes())
        (self.state_dir / "ak.name").write_bytes(public.name())
        # The private blob last: ensure_ak takes its presence to mean the AK is complete.
        for name in ("ak.pub", "ak.priv"):
            shutil.move(staged[name], self.state_dir / name)
        log.info("created an attestation key in %s", self.state_dir)
        return self.ak_public_path.read_bytes()

    def ak_public(self) -> tpm.PublicArea:
        return tpm.parse_public_2b(self.ensure_ak())

    def _load_ak(self) -> Path:
        """Load the AK from its blobs under a fresh EK; the saved context it leaves."""
        self.ensure_ak()
        ek = self._ek_context()
        context = self.run_dir / "ak.ctx"
        self._with_endorsement_session(
            [
                "tpm2_load", "-C", str(ek), "-u", str(self.ak_public_path),
                "-r", str(self.state_dir / "ak.priv"), "-c", str(context), "-P", "session:SESSION",
            ]
        )  # fmt: skip
        return context

    def _with_ak(self, argv: Sequence[str], *, ek: bool = False) -> Result:
        """Run a command using the loaded AK ("AK" in argv), loading it again if its saved
        context is gone or stale (the TPM was reset since)."""
        context = self.run_dir / "ak.ctx"
        for attempt in (1, 2):
            if attempt == 2 or not context.exists():
                context = self._load_ak()
            command = [str(context) if part == "AK" else part for part in argv]
            try:
                if ek:
                    command = [str(self._ek_context()) if p == "EK" else p for p in command]
                    return self._with_endorsement_session(command)
                return self._tpm(command)
            except ToolError:
                if attempt == 2:
                    raise
                log.info("reloading the AK (its saved context did not load)")
        raise AssertionError("unreachable")

    # Operations.

    def activate_credential(self, credential_blob: bytes, encrypted_secret: bytes) -> bytes:
        """TPM2_ActivateCredential with the AK and EK: the verifier's secret, which the TPM
        only gives out if the AK it named is loaded under this EK."""
        wrapped = self.run_dir / "credential.in"
        wrapped.write_bytes(credential_file(credential_blob, encrypted_secret))
        out = self.run_dir / "credential.out"
        out.unlink(missing_ok=True)
        self._with_ak(
            [
                "tpm2_activatecredential", "-c", "AK", "-C", "EK", "-i", str(wrapped),
                "-o", str(out), "-P", "session:SESSION",
            ],
            ek=True,
        )  # fmt: skip
        return out.read_bytes()

    def quote(self, selection: Mapping[str, Sequence[int]], nonce: bytes) -> QuoteResult:
        """A quote by the AK over `selection` with `nonce` as qualifying data, with the PCR
        values read alongside. tpm2_quote reads the values after quoting: if a PCR moved in
        between they no longer hash to pcrDigest and the quote is taken again."""
        files = {name: self.run_dir / f"quote.{name}" for name in ("msg", "sig", "pcrs")}
        for _ in range(QUOTE_ATTEMPTS):
            self._with_ak(
                [
                    "tpm2_quote", "-c", "AK", "-l", selection_argument(selection),
                    "-q", nonce.hex(), "-g", "sha256", "-m", str(files["msg"]),
                    "-s", str(files["sig"]), "-o", str(files["pcrs"]), "--pcrs_format", "values",
                ]
            )  # fmt: skip
            message, values = files["msg"].read_bytes(), files["pcrs"].read_bytes()
            quote = tpm.parse_quote(message)
            pcrs = _split_values(quote.selections, values)
            if tpm.quote_pcr_digest(quote.selections, pcrs, "sha256") == quote.pcr_digest:
                return QuoteResult(message, files["sig"].read_bytes(), pcrs)
            log.info("PCRs changed while quoting; quoting again")
        raise TpmDriverError(f"PCR values kept changing over {QUOTE_ATTEMPTS} quotes")

    def read_pcrs(self, selection: Mapping[str, Sequence[int]]) -> dict[str, dict[int, bytes]]:
        out = self.run_dir / "pcrread.bin"
        values: dict[str, dict[int, bytes]] = {}
        for bank, pcrs in selection.items():
            self._run(["tpm2_pcrread", selection_argument({bank: pcrs}), "-o", str(out)])
            selected = (tpm.PcrSelection(bank, tuple(sorted(set(pcrs)))),)
            values.update(_split_values(selected, out.read_bytes()))
        return values

    def extend(self, extends: Sequence[tuple[int, Mapping[str, bytes]]]) -> None:
        """TPM2_PCR_Extend of each (PCR, bank -> digest) in order (the simulated node's boot)."""
        specs = [
            f"{pcr}:" + ",".join(f"{bank}={value.hex()}" for bank, value in digests.items())
            for pcr, digests in extends
        ]
        for start in range(0, len(specs), 64):  # keep command lines reasonable
            self._run(["tpm2_pcrextend", *specs[start : start + 64]])


def _split_values(
    selections: Sequence[tpm.PcrSelection], data: bytes
) -> dict[str, dict[int, bytes]]:
    """PCR values written back to back in selection order (tpm2-tools' "values" format)."""
    values: dict[str, dict[int, bytes]] = {}
    offset = 0
    for selection in selections:
        size = tpm.HASH_ALGORITHMS[tpm.hash_id(selection.bank)][1]
        bank = values.setdefault(selection.bank, {})
        for pcr in selection.pcrs:
            bank[pcr] = data[offset : offset + size]
            offset += size
    if offset != len(data):
        raise TpmDriverError(f"{len(data)} bytes of PCR values where {offset} were expected")
    return values
