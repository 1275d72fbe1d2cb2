"""The signing material of a fleet: roles, a key directory, and one signer interface.

Roles:
- pk, kek, db: UEFI Secure Boot (PK/KEK/db); db signs systemd-boot and the UKIs;
- verity: the usr root-hash signature (defaults to db: the kernel trusts the platform keyring,
  i.e. the UEFI db certificates, for dm-verity root-hash signatures);
- ipe: the IPE policy signature (defaults to db for the same reason);
- update: the sysupdate manifest (SHA256SUMS) signature: PKCS#7 (SHA256SUMS.p7s) and OpenPGP
  (SHA256SUMS.gpg, what systemd-sysupdate's Verify=yes checks against import-pubring.gpg).

Everything that signs goes through `Signer`, so that an HSM (PKCS#11) or offline-signing
backend can replace `LocalSigner` without touching the build. Private keys are files of mode
0600 in a 0700 directory described by keys.toml, and are never copied into an image.
"""

from __future__ import annotations

import os
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from ultraviolet.build.keys import KeyPair, generate_signing_key, load_key_pair, write_key_pair
from ultraviolet.errors import BuildError
from ultraviolet.formats import openpgp
from ultraviolet.formats.pkcs7 import sign_detached

OWN_ROLES = ("pk", "kek", "db", "update")
ROLES = ("pk", "kek", "db", "verity", "ipe", "update")
DEFAULT_ALIASES = {"verity": "db", "ipe": "db"}
MANIFEST = "keys.toml"


class Signer(Protocol):
    """What the build needs from a key, whatever holds it."""

    @property
    def certificate(self) -> x509.Certificate: ...

    def sign_pkcs7_detached(self, content: bytes, *, include_certificate: bool) -> bytes:
        """DER PKCS#7, detached, SHA-256, no signed attributes."""
        ...

    def tool_arguments(self) -> tuple[str, str]:
        """(key, certificate) as external tools (mkosi, sbsign, systemd-repart) take them:
        file paths here; a PKCS#11 backend would return a URI with a key source."""
        ...

    def openpgp_public_key(self) -> bytes:
        """The key as an OpenPGP transferable public key (what import-pubring.gpg holds)."""
        ...

    def sign_openpgp_detached(self, content: bytes) -> bytes:
        """A binary OpenPGP detached signature (SHA256SUMS.gpg for systemd-sysupdate)."""
        ...


@dataclass(frozen=True)
class LocalSigner:
    """A key pair in files."""

    pair: KeyPair
    key_path: Path
    certificate_path: Path

    @property
    def certificate(self) -> x509.Certificate:
        return self.pair.certificate

    def sign_pkcs7_detached(self, content: bytes, *, include_certificate: bool) -> bytes:
        return sign_detached(
            content, self.pair.key, self.pair.certificate, include_certificate=include_certificate
        )

    def tool_arguments(self) -> tuple[str, str]:
        return str(self.key_path), str(self.certificate_path)

    @property
    def _openpgp_created(self) -> int:
        # The OpenPGP key is the certificate's key, "created" when the certificate became
        # valid: the same key file always gives the same OpenPGP fingerprint.
        return int(self.pair.certificate.not_valid_before_utc.timestamp())

    def openpgp_public_key(self) -> bytes:
        names = self.pair.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        user_id = str(names[0].value) if names else "Ultraviolet update key"
        return openpgp.public_key_block(self.pair.key, user_id, self._openpgp_created)

    def sign_openpgp_detached(self, content: bytes) -> bytes:
        key = openpgp.public_key(self.pair.key, self._openpgp_created)
        created = max(int(time.time()), self._openpgp_created)
        return openpgp.sign_detached(content, self.pair.key, created, key)


@dataclass(frozen=True)
class KeySet:
    directory: Path
    signers: dict[str, LocalSigner]

    def signer(self, role: str) -> LocalSigner:
        try:
            return self.signers[role]
        except KeyError:
            raise BuildError(f"{self.directory}: no key for role {role!r}") from None

    def certificate_pem(self, role: str) -> bytes:
        return self.signer(role).certificate.public_bytes(serialization.Encoding.PEM)


def _names(role: str) -> tuple[str, str]:
    return f"{role}.key", f"{role}.crt"


def init_keys(directory: Path, *, organisation: str = "Ultraviolet") -> KeySet:
    """Generate a new key set; refuses to overwrite an existing one."""
    if (directory / MANIFEST).exists():
        raise BuildError(f"{directory} already holds a key set ({MANIFEST}); not overwriting")
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    titles = {
        "pk": "Platform Key",
        "kek": "Key Exchange Key",
        "db": "Signature Database key",
        "update": "Update manifest key",
    }
    lines = ["# Ultraviolet key set: role = key file, certificate file", "[roles]"]
    for role in OWN_ROLES:
        key_name, cert_name = _names(role)
        write_key_pair(
            generate_signing_key(f"{organisation} {titles[role]}"),
            directory / key_name,
            directory / cert_name,
        )
        lines.append(f'{role} = ["{key_name}", "{cert_name}"]')
    for role, target in DEFAULT_ALIASES.items():
        lines.append(f'{role} = ["{_names(target)[0]}", "{_names(target)[1]}"]')
    (directory / MANIFEST).write_text("\n".join(lines) + "\n")
    return load_keys(directory)


def load_keys(directory: Path) -> KeySet:
    manifest = directory / MANIFEST
    try:
        roles = tomllib.loads(manifest.read_text())["roles"]
    except (OSError, tomllib.TOMLDecodeError, KeyError) as exc:
        raise BuildError(f"{manifest}: not a key set manifest ({exc})") from exc
    signers: dict[str, LocalSigner] = {}
    for role in ROLES:
        entry = roles.get(role)
        if not (
            isinstance(entry, list) and len(entry) == 2 and all(isinstance(e, str) for e in entry)
        ):
            raise BuildError(f'{manifest}: role {role!r} must be ["KEY", "CERT"]')
        key_path, cert_path = directory / entry[0], directory / entry[1]
        if not key_path.is_file():
            raise BuildError(f"{manifest}: role {role!r}: {key_path} does not exist")
        if key_path.stat().st_mode & 0o077:
            raise BuildError(f"{key_path} is readable by others; chmod 600 it")
        signers[role] = LocalSigner(load_key_pair(key_path, cert_path), key_path, cert_path)
    return KeySet(directory, signers)
