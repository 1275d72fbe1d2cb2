"""OpenPGP against gpg: gpg reads our keys and accepts our signatures the way systemd-sysupdate
asks it to, and our verifier accepts what gpg makes."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from ultraviolet.formats.openpgp import (
    PrivateKey,
    armor,
    parse_keyring,
    parse_packets,
    parse_signature,
    public_key,
    public_key_block,
    sign_detached,
    verify_detached,
    verify_self_certification,
)
from ultraviolet.tools import Result, ToolsChroot

pytestmark = pytest.mark.oracle

KEY_CREATED = 1_700_000_000
SIGNED = 1_700_000_100
USER_ID = "Ultraviolet updates <updates@example.org>"
SUMS = (
    b"0e9a00811725c6c46aac24ab5213399559914437a433128614f3f234ff02ddb5  usr_1.2.3.raw\n"
    b"9d4e1e23bd5b727046a9e3b4b7db57bd8d6ee684a5c6d2d3c9c1f0d1e6c5b4a3  usr_1.2.3.verity\n"
)


def _systemd_gpg(homedir: Path, keyring: Path, signature: Path) -> list[str]:
    """The gpg command line of systemd-pull, which systemd-sysupdate runs for Verify=yes
    (verify_gpg() in src/import/pull-common.c; SHA256SUMS comes on stdin)."""
    return [
        "gpg",
        "--no-options",
        "--no-default-keyring",
        "--no-auto-key-locate",
        "--no-auto-check-trustdb",
        "--batch",
        "--trust-model=always",
        f"--homedir={homedir}",
        f"--keyring={keyring}",
        "--verify",
        str(signature),
        "-",
    ]


def _fresh_home(tmp_path: Path, name: str) -> Path:
    home = tmp_path / name
    home.mkdir(mode=0o700)
    return home


def _make_key(kind: str) -> PrivateKey:
    if kind == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ed25519.Ed25519PrivateKey.generate()


def _gpg(tools: ToolsChroot, tmp_path: Path, script: str, *args: str) -> Result:
    """Run a shell script with a fresh GNUPGHOME under tmp_path; gpg's agent is stopped after."""
    preamble = 'set -eu\nexport GNUPGHOME="$1"\ntrap "gpgconf --kill all" EXIT\nshift\n'
    home = _fresh_home(tmp_path, f"gnupg{len(list(tmp_path.glob('gnupg*')))}")
    return tools.run(["sh", "-c", preamble + script, "sh", str(home), *args], binds=[tmp_path])


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_gpg_reads_our_key_block(tools_chroot: ToolsChroot, tmp_path: Path, kind: str) -> None:
    key = _make_key(kind)
    block = tmp_path / "key.gpg"
    block.write_bytes(public_key_block(key, USER_ID, KEY_CREATED))
    published = public_key(key, KEY_CREATED)
    shown = _gpg(
        tools_chroot,
        tmp_path,
        'gpg --batch --with-colons --import-options show-only --import "$1"',
        str(block),
    )
    records = [line.split(":") for line in shown.text.splitlines()]
    (pub,) = [r for r in records if r[0] == "pub"]
    assert (pub[3], pub[4], pub[5]) == (
        str(published.algorithm),
        published.key_id.hex().upper(),
        str(KEY_CREATED),
    )
    assert "s" in pub[11] and "c" in pub[11]  # usable for signing and certification
    assert [r[9] for r in records if r[0] == "fpr"] == [published.fingerprint.hex().upper()]
    assert [r[9] for r in records if r[0] == "uid"] == [USER_ID]
    # gpg checks our self-certification itself: "!" is a good signature.
    checked = _gpg(
        tools_chroot,
        tmp_path,
        'gpg --batch --import "$1"\ngpg --batch --with-colons --check-sigs',
        str(block),
    )
    sigs = [line.split(":") for line in checked.text.splitlines() if line.startswith("sig:")]
    assert [(s[1], s[4], s[10]) for s in sigs] == [("!", published.key_id.hex().upper(), "13x")]


@pytest.mark.parametrize("kind", ["rsa", "ed25519"])
def test_systemd_gpg_invocation_accepts_our_signature(
    tools_chroot: ToolsChroot, tmp_path: Path, kind: str
) -> None:
    key = _make_key(kind)
    keyring = tmp_path / "import-pubring.gpg"
    other = _make_key("ed25519")
    keyring.write_bytes(
        public_key_block(other, "Someone else", KEY_CREATED)
        + public_key_block(key, USER_ID, KEY_CREATED)
    )
    signature = tmp_path / "SHA256SUMS.gpg"
    signature.write_bytes(sign_detached(SUMS, key, SIGNED, public_key(key, KEY_CREATED)))
    armored = tmp_path / "SHA256SUMS.asc"
    armored.write_bytes(armor(signature.read_bytes()))

    homes = itertools.count()

    def verify(data: bytes, keyring: Path, signature: Path) -> Result:
        """A fresh --homedir each time, like systemd-pull's mkdtemp /tmp/gpghomeXXXXXX."""
        home = _fresh_home(tmp_path, f"gpghome{next(homes)}")
        argv = _systemd_gpg(home, keyring, signature)
        return tools_chroot.run(argv, binds=[tmp_path], input=data, check=False)

    good = verify(SUMS, keyring, signature)
    assert good.returncode == 0, good.stderr.decode()
    fingerprint = public_key(key, KEY_CREATED).fingerprint.hex().upper()
    assert b"Good signature" in good.stderr and fingerprint.encode() in good.stderr
    assert verify(SUMS, keyring, armored).returncode == 0
    assert verify(SUMS.replace(b"0e9a", b"0e9b"), keyring, signature).returncode != 0
    assert verify(SUMS + b"\n", keyring, signature).returncode != 0
    only_other = tmp_path / "other.gpg"
    only_other.write_bytes(public_key_block(other, "Someone else", KEY_CREATED))
    assert verify(SUMS, only_other, signature).returncode != 0
    corrupt = tmp_path / "corrupt.gpg"
    data = bytearray(signature.read_bytes())
    data[-3] ^= 0x01
    corrupt.write_bytes(bytes(data))
    assert verify(SUMS, keyring, corrupt).returncode != 0
    # Our verifier agrees with every verdict above.
    assert verify_detached(signature.read_bytes(), SUMS, keyring.read_bytes()).ok
    assert not verify_detached(signature.read_bytes(), SUMS + b"\n", keyring.read_bytes()).ok
    assert not verify_detached(signature.read_bytes(), SUMS, only_other.read_bytes()).ok
    assert not verify_detached(bytes(data), SUMS, keyring.read_bytes()).ok


GENERATE = """
gpg --batch --passphrase '' --quick-gen-key 'Test <t@e>' "$1" sign never
gpg --batch --export > "$2/key.gpg"
gpg --batch --with-colons --list-keys
gpg --batch --detach-sign --digest-algo SHA256 -o "$2/SHA256SUMS.gpg" "$2/SHA256SUMS"
gpg --batch --detach-sign -o "$2/SHA256SUMS.default.gpg" "$2/SHA256SUMS"
"""


@pytest.mark.parametrize("algorithm", ["rsa2048", "ed25519"])
def test_gpg_signatures_verify_with_ours(
    tools_chroot: ToolsChroot, tmp_path: Path, algorithm: str
) -> None:
    (tmp_path / "SHA256SUMS").write_bytes(SUMS)
    listing = _gpg(tools_chroot, tmp_path, GENERATE, algorithm, str(tmp_path))
    gpg_fingerprints = [
        line.split(":")[9] for line in listing.text.splitlines() if line.startswith("fpr:")
    ]
    keyring = (tmp_path / "key.gpg").read_bytes()
    (block,) = parse_keyring(keyring)
    assert [block.key.fingerprint.hex().upper()] == gpg_fingerprints
    assert block.key.crypto_key() is not None
    assert block.user_ids == (b"Test <t@e>",)
    assert verify_self_certification(block, b"Test <t@e>").ok  # gpg's 0x13 hash input = ours
    for name in ("SHA256SUMS.gpg", "SHA256SUMS.default.gpg"):
        signature = (tmp_path / name).read_bytes()
        (packet,) = parse_packets(signature)
        parsed = parse_signature(packet)
        assert parsed.issuer_fingerprint == block.key.fingerprint
        result = verify_detached(signature, SUMS, keyring)
        assert result.ok, (name, result.reason)
        assert result.fingerprint == block.key.fingerprint
        modified = verify_detached(signature, SUMS.replace(b"usr_", b"usr-"), keyring)
        assert not modified.ok
    signature = (tmp_path / "SHA256SUMS.gpg").read_bytes()
    assert parse_signature(parse_packets(signature)[0]).hash_algorithm == 8  # SHA-256
    other = public_key_block(ed25519.Ed25519PrivateKey.generate(), "Other", KEY_CREATED)
    result = verify_detached(signature, SUMS, other)
    assert not result.ok and "in keyring" in result.reason
