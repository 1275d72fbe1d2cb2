"""Quotes of a software TPM (swtpm) made with tpm2-tools, checked by us and by tpm2_checkquote.

One chroot script starts swtpm, creates an endorsement primary and three restricted signing keys
(RSASSA, RSAPSS, ECDSA), extends PCRs, quotes sha256:0,1,2,7 with a nonce and exports each key
(TPM2B_PUBLIC, PEM, tpm2_readpublic's YAML with its name and qualified name). We parse and verify
everything; then genuine and forged variants go to tpm2_checkquote, which must agree with us.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from ultraviolet.errors import AttestationError
from ultraviolet.formats.tpm import (
    ALG_ECDSA,
    ALG_RSAPSS,
    ALG_RSASSA,
    RH_ENDORSEMENT,
    PcrSelection,
    QuoteVerificationError,
    TpmError,
    parse_public_2b,
    parse_quote,
    parse_signature,
    pcr_composite_digest,
    qualified_name,
    verify_quote,
)
from ultraviolet.tools import ToolsChroot

pytestmark = pytest.mark.oracle

NONCE = "a1b2c3d4e5f60718"
PCRS = (0, 1, 2, 7)
SELECTION = "sha256:" + ",".join(map(str, PCRS))
KEYS = {  # name: (tpm2_create -G, tpm2_quote --scheme, TPM_ALG_ID of the signature)
    "rsa": ("rsa2048:rsassa-sha256:null", "rsassa", ALG_RSASSA),
    "pss": ("rsa2048:rsapss-sha256:null", "rsapss", ALG_RSAPSS),
    "ecc": ("ecc256:ecdsa-sha256:null", "ecdsa", ALG_ECDSA),
}
ATTRIBUTES = "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|restricted|sign"

# Without a resource manager every tool leaves its transient objects loaded: flush after each.
QUOTE_SCRIPT = r"""
set -eu
out=$1; shift
state=$(mktemp -d)
swtpm socket --tpm2 --tpmstate dir=$state --server type=unixio,path=$state/s \
    --ctrl type=unixio,path=$state/s.ctrl --flags not-need-init,startup-clear 2>/dev/null &
swtpm_pid=$!
trap 'kill $swtpm_pid' EXIT
for _ in $(seq 100); do [ -S $state/s ] && break; sleep 0.1; done
export TPM2TOOLS_TCTI=swtpm:path=$state/s
cd $out
tpm2_pcrextend 0:sha256=$(printf '11%.0s' $(seq 32))
tpm2_pcrextend 7:sha256=$(printf '77%.0s' $(seq 32))
tpm2_pcrextend 7:sha256=$(printf '70%.0s' $(seq 32))
tpm2_createprimary -C e -c primary.ctx > /dev/null
tpm2_flushcontext -t
tpm2_readpublic -c primary.ctx > primary.yaml
tpm2_flushcontext -t
while [ $# -gt 0 ]; do
    name=$1 algorithm=$2 scheme=$3; shift 3
    tpm2_create -C primary.ctx -G $algorithm -a "$ATTRIBUTES" -u $name.pub -r $name.priv > /dev/null
    tpm2_flushcontext -t
    tpm2_load -C primary.ctx -u $name.pub -r $name.priv -c $name.ctx > /dev/null
    tpm2_flushcontext -t
    tpm2_quote -c $name.ctx -l $SELECTION -q $NONCE -m $name.msg -s $name.sig -o $name.pcrs \
        -g sha256 --pcrs_format values --scheme $scheme > /dev/null
    tpm2_flushcontext -t
    tpm2_readpublic -c $name.ctx -o $name.tpm2b -f tss > $name.yaml
    tpm2_flushcontext -t
    tpm2_readpublic -c $name.ctx -o $name.pem -f pem > /dev/null
    tpm2_flushcontext -t
done
"""

CHECK_SCRIPT = r"""
out=$1; shift
while [ $# -gt 0 ]; do
    label=$1 case=$2 key=$3 nonce=$4; shift 4
    tpm2_checkquote -u $out/$key.tpm2b -m $out/$case.msg -s $out/$case.sig -f $out/$case.pcrs \
        -l $SELECTION -g sha256 -q $nonce > $out/$label.check 2>&1
    echo "$label $?"
done
"""


@pytest.fixture(scope="module")
def quotes(tools_chroot: ToolsChroot, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("quotes")
    (out / "quote.sh").write_text(QUOTE_SCRIPT)
    arguments = [part for name, (alg, scheme, _) in KEYS.items() for part in (name, alg, scheme)]
    tools_chroot.run(
        ["sh", str(out / "quote.sh"), str(out), *arguments],
        binds=[out],
        env={"NONCE": NONCE, "SELECTION": SELECTION, "ATTRIBUTES": ATTRIBUTES},
        timeout=300,
    )
    return out


def _yaml_field(path: Path, field: str) -> bytes:
    match = re.search(rf"^{field}: ([0-9a-f]+)$", path.read_text(), re.MULTILINE)
    assert match, f"no {field!r} in {path}"
    return bytes.fromhex(match.group(1))


def _pcr_values(path: Path) -> dict[int, bytes]:
    data = path.read_bytes()  # --pcrs_format values: the values back to back, selection order
    assert len(data) == 32 * len(PCRS)
    return {pcr: data[32 * i : 32 * i + 32] for i, pcr in enumerate(PCRS)}


def _our_verdict(directory: Path, case: str, key: str, nonce: str) -> str:
    """accept, or the first check that fails: the signature by the key, the nonce, or the PCR
    values against pcrDigest (the order tpm2_checkquote reports them in)."""
    public = parse_public_2b((directory / f"{key}.tpm2b").read_bytes())
    message = (directory / f"{case}.msg").read_bytes()
    signature = parse_signature((directory / f"{case}.sig").read_bytes())
    try:
        quote = verify_quote(message, signature, public)
    except (AttestationError, TpmError):
        return "signature"
    try:
        verify_quote(message, signature, public, nonce=bytes.fromhex(nonce))
    except QuoteVerificationError:
        return "nonce"
    values = _pcr_values(directory / f"{case}.pcrs")
    return "accept" if pcr_composite_digest(values, "sha256") == quote.pcr_digest else "pcrs"


def _their_verdict(returncode: str, output: str) -> str:
    if returncode == "0":
        return "accept"
    if "PCR values failed to match" in output:
        return "pcrs"
    if "Error validating nonce" in output:
        return "nonce"
    assert "Verify signature failed" in output, output
    return "signature"


@pytest.mark.parametrize("key", sorted(KEYS))
def test_swtpm_quote_parses_and_verifies(quotes: Path, key: str) -> None:
    public_bytes = (quotes / f"{key}.tpm2b").read_bytes()
    public = parse_public_2b(public_bytes)
    assert public.to_2b() == public_bytes
    assert public.attribute_names == tuple(ATTRIBUTES.split("|"))
    # Our name and the PEM conversion against tpm2_readpublic.
    assert public.name() == _yaml_field(quotes / f"{key}.yaml", "name")
    pem = serialization.load_pem_public_key((quotes / f"{key}.pem").read_bytes())
    spki = serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    assert public.public_key().public_bytes(*spki) == pem.public_bytes(*spki)

    message = (quotes / f"{key}.msg").read_bytes()
    signature_bytes = (quotes / f"{key}.sig").read_bytes()
    signature = parse_signature(signature_bytes)
    assert signature.to_bytes() == signature_bytes
    assert signature.scheme == KEYS[key][2]
    quote = verify_quote(message, signature, public, nonce=bytes.fromhex(NONCE))
    assert quote.to_bytes() == message
    assert quote.selections == (PcrSelection("sha256", PCRS),)
    values = _pcr_values(quotes / f"{key}.pcrs")
    assert quote.pcr_digest == pcr_composite_digest(values, "sha256")
    assert values[1] == bytes(32) and values[7] != bytes(32)  # PCR 7 was extended twice

    # qualifiedSigner is the key's qualified name (endorsement hierarchy -> primary -> key).
    primary_qn = qualified_name(RH_ENDORSEMENT, _yaml_field(quotes / "primary.yaml", "name"))
    assert primary_qn == _yaml_field(quotes / "primary.yaml", "qualified name")
    key_qn = _yaml_field(quotes / f"{key}.yaml", "qualified name")
    assert qualified_name(primary_qn, public.name()) == key_qn
    assert quote.attest.qualified_signer == key_qn != public.name()
    assert quote.attest.clock_info.safe


def _forge(directory: Path, key: str) -> list[tuple[str, str, str, str]]:
    """Variants of the key's quote as (label, case files, key, nonce): the genuine quote, and
    forged ones with the expected verdict in the label."""
    message = (directory / f"{key}.msg").read_bytes()
    quote = parse_quote(message)
    nonce_at = 4 + 2 + 2 + len(quote.attest.qualified_signer) + 2  # magic, type, signer, size
    other_nonce = "00" + NONCE[2:]
    other_key = next(name for name in KEYS if name != key)
    cases = [
        (f"{key}-accept", key, key, NONCE),
        (f"{key}-nonce", key, key, other_nonce),  # a nonce the verifier did not send
        (f"{key}-signature-other-key", key, other_key, NONCE),
    ]
    flips = {"nonce": nonce_at, "clock": nonce_at + 8 + 3, "digest": len(message) - 1}
    for what, offset in flips.items():
        forged = bytearray(message)
        forged[offset] ^= 0x01
        _copy_case(directory, key, f"{key}-{what}-flipped", message=bytes(forged))
        cases.append((f"{key}-signature-{what}-flipped", f"{key}-{what}-flipped", key, NONCE))
    values = bytearray((directory / f"{key}.pcrs").read_bytes())
    values[-1] ^= 0x01  # a PCR 7 value the quote does not cover
    _copy_case(directory, key, f"{key}-values", pcrs=bytes(values))
    cases.append((f"{key}-pcrs", f"{key}-values", key, NONCE))
    return cases


def _copy_case(
    directory: Path, key: str, case: str, *, message: bytes | None = None, pcrs: bytes | None = None
) -> None:
    for suffix, replacement in (("msg", message), ("sig", None), ("pcrs", pcrs)):
        original = (directory / f"{key}.{suffix}").read_bytes()
        (directory / f"{case}.{suffix}").write_bytes(
            original if replacement is None else replacement
        )


def test_forged_quotes_are_rejected_like_tpm2_checkquote(
    tools_chroot: ToolsChroot, quotes: Path
) -> None:
    cases = [case for key in sorted(KEYS) for case in _forge(quotes, key)]
    (quotes / "check.sh").write_text(CHECK_SCRIPT)
    result = tools_chroot.run(
        ["sh", str(quotes / "check.sh"), str(quotes), *(part for case in cases for part in case)],
        binds=[quotes],
        env={"SELECTION": SELECTION},
        timeout=120,
    )
    codes = dict(line.split() for line in result.text.splitlines())
    assert sorted(codes) == sorted(label for label, *_ in cases)
    for label, case, key, nonce in cases:
        theirs = _their_verdict(codes[label], (quotes / f"{label}.check").read_text())
        ours = _our_verdict(quotes, case, key, nonce)
        assert ours == theirs, label
        # The label says what each variant must get: only the genuine quotes pass.
        assert label.split("-")[1] == ours, label
