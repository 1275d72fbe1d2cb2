"""Integrity Policy Enforcement (IPE) policies, kernel 6.12 (Documentation/admin-guide/LSM/ipe.rst).

Text format: a header line `policy_name=NAME policy_version=X.Y.Z`, then `DEFAULT action=...`
and/or `DEFAULT op=OP action=...`, then rules `op=OP [property=value ...] action=ALLOW|DENY`;
the first matching rule wins. `#` starts a comment. The kernel takes the policy PKCS#7-signed
with the text embedded and without signed attributes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs7

from ultraviolet.errors import FormatError

OPERATIONS = (
    "EXECUTE",
    "FIRMWARE",
    "KMODULE",
    "KEXEC_IMAGE",
    "KEXEC_INITRAMFS",
    "POLICY",
    "X509_CERT",
)
ACTIONS = ("ALLOW", "DENY")
_BOOLEAN = re.compile(r"TRUE|FALSE")
_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})")
PROPERTIES = {
    "boot_verified": _BOOLEAN,
    "dmverity_signature": _BOOLEAN,
    "dmverity_roothash": _DIGEST,
    "fsverity_signature": _BOOLEAN,
    "fsverity_digest": _DIGEST,
}
_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_VERSION = re.compile(r"(\d{1,5})\.(\d{1,5})\.(\d{1,5})")


class IpeError(FormatError):
    pass


@dataclass(frozen=True)
class IpeRule:
    op: str
    properties: tuple[tuple[str, str], ...]
    action: str

    def render(self) -> str:
        props = "".join(f" {key}={value}" for key, value in self.properties)
        return f"op={self.op}{props} action={self.action}"


@dataclass(frozen=True)
class IpePolicy:
    name: str
    version: tuple[int, int, int]
    default_action: str | None  # the global DEFAULT, if any
    op_defaults: tuple[tuple[str, str], ...]  # (op, action)
    rules: tuple[IpeRule, ...]

    def default_for(self, op: str) -> str | None:
        return dict(self.op_defaults).get(op, self.default_action)


def _check(policy: IpePolicy) -> None:
    if not _NAME.fullmatch(policy.name):
        raise IpeError("IPE policy", f"invalid policy name {policy.name!r}")
    if any(not 0 <= part <= 0xFFFF for part in policy.version):
        raise IpeError("IPE policy", f"version parts must be 0..65535, got {policy.version}")
    if policy.default_action not in (None, *ACTIONS):
        raise IpeError("IPE policy", f"invalid DEFAULT action={policy.default_action}")
    for op, action in policy.op_defaults:
        if op not in OPERATIONS or action not in ACTIONS:
            raise IpeError("IPE policy", f"invalid default op={op} action={action}")
    for rule in policy.rules:
        _check_rule(rule, "IPE policy")
    if policy.default_action is None:
        missing = [op for op in OPERATIONS if policy.default_for(op) is None]
        if missing:
            raise IpeError(
                "IPE policy", "no global DEFAULT and no default for " + ", ".join(missing)
            )


def _check_rule(rule: IpeRule, where: str, offset: int | None = None) -> None:
    if rule.op not in OPERATIONS:
        raise IpeError(where, f"unknown operation {rule.op!r}", offset)
    if rule.action not in ACTIONS:
        raise IpeError(where, f"unknown action {rule.action!r}", offset)
    for key, value in rule.properties:
        pattern = PROPERTIES.get(key)
        if pattern is None:
            raise IpeError(where, f"unknown property {key!r}", offset)
        if not pattern.fullmatch(value):
            raise IpeError(where, f"invalid value {value!r} for {key}", offset)


def render_ipe(policy: IpePolicy) -> str:
    _check(policy)
    lines = [f"policy_name={policy.name} policy_version={'.'.join(map(str, policy.version))}"]
    if policy.default_action:
        lines.append(f"DEFAULT action={policy.default_action}")
    lines += [f"DEFAULT op={op} action={action}" for op, action in policy.op_defaults]
    lines += [rule.render() for rule in policy.rules]
    return "\n".join(lines) + "\n"


def _tokens(line: str, number: int, offset: int) -> list[tuple[str, str]]:
    pairs = []
    for index, token in enumerate(line.split()):
        if index == 0 and token == "DEFAULT":
            pairs.append(("DEFAULT", ""))
            continue
        key, sep, value = token.partition("=")
        if not sep or not key or not value:
            raise IpeError(
                "IPE policy", f"line {number}: expected key=value, got {token!r}", offset
            )
        pairs.append((key, value))
    return pairs


def _header(pairs: list[tuple[str, str]], offset: int) -> tuple[str, tuple[int, int, int]]:
    keys = dict(pairs)
    version = _VERSION.fullmatch(keys.get("policy_version", ""))
    if [k for k, _ in pairs] != ["policy_name", "policy_version"] or not version:
        raise IpeError(
            "IPE policy", "line 1: expected policy_name=NAME policy_version=X.Y.Z", offset
        )
    major, minor, patch = (int(part) for part in version.groups())
    return keys["policy_name"], (major, minor, patch)


def parse_ipe(text: str) -> IpePolicy:
    header: tuple[str, tuple[int, int, int]] | None = None
    default: str | None = None
    op_defaults: list[tuple[str, str]] = []
    rules: list[IpeRule] = []
    offset = 0
    for number, raw in enumerate(text.splitlines(keepends=True), start=1):
        line, at = raw.split("#", 1)[0].strip(), offset
        offset += len(raw.encode())
        if not line:
            continue
        pairs = _tokens(line, number, at)
        if header is None:
            header = _header(pairs, at)
        elif pairs[0][0] == "DEFAULT":
            fields = dict(pairs[1:])
            if set(fields) == {"action"}:
                default = fields["action"]
            elif set(fields) == {"op", "action"}:
                op_defaults.append((fields["op"], fields["action"]))
            else:
                raise IpeError("IPE policy", f"line {number}: malformed DEFAULT", at)
        else:
            rules.append(_rule(pairs, number, at))
    if header is None:
        raise IpeError("IPE policy", "empty policy: no policy_name line", 0)
    policy = IpePolicy(header[0], header[1], default, tuple(op_defaults), tuple(rules))
    _check(policy)
    return policy


def _rule(pairs: list[tuple[str, str]], number: int, offset: int) -> IpeRule:
    if pairs[0][0] != "op" or pairs[-1][0] != "action" or len(pairs) < 2:
        raise IpeError("IPE policy", f"line {number}: a rule is op=OP ... action=ACTION", offset)
    rule = IpeRule(pairs[0][1], tuple(pairs[1:-1]), pairs[-1][1])
    _check_rule(rule, "IPE policy", offset)
    return rule


def sign_ipe(policy_text: str, key: rsa.RSAPrivateKey, certificate: x509.Certificate) -> bytes:
    """PKCS#7 with the policy embedded and no signed attributes (what the kernel accepts)."""
    options = [pkcs7.PKCS7Options.Binary, pkcs7.PKCS7Options.NoAttributes]
    builder = (
        pkcs7.PKCS7SignatureBuilder()
        .set_data(policy_text.encode("ascii"))
        .add_signer(certificate, key, hashes.SHA256())
    )
    return builder.sign(serialization.Encoding.DER, options)
