"""The node's IPE policy derived from [integrity]."""

from __future__ import annotations

import pytest

from ultraviolet.errors import PolicyError
from ultraviolet.formats.ipe import parse_ipe, render_ipe
from ultraviolet.policy import parse_policy
from ultraviolet.policy.ipe import build_ipe_policy, ipe_version

BASE = '[image]\nname = "host"\nversion = "2.5.1"\n'


def test_default_policy_enforces_signed_code_only() -> None:
    ipe = build_ipe_policy(parse_policy(BASE))
    assert ipe is not None
    text = render_ipe(ipe)
    assert text.splitlines()[0] == "policy_name=host policy_version=2.5.1"
    assert "DEFAULT op=EXECUTE action=DENY" in text
    assert "op=EXECUTE boot_verified=TRUE action=ALLOW" in text
    assert "op=EXECUTE dmverity_signature=TRUE action=ALLOW" in text
    assert "op=KMODULE dmverity_signature=TRUE action=ALLOW" in text
    assert parse_ipe(text) == ipe
    assert ipe.default_for("POLICY") == "ALLOW"


def test_pinned_hashes_and_relaxed_modules() -> None:
    policy = parse_policy(
        BASE + '[integrity]\nkernel_modules = "any"\npinned_root_hashes = ["' + "c" * 64 + '"]\n'
    )
    ipe = build_ipe_policy(policy)
    assert ipe is not None
    text = render_ipe(ipe)
    assert f"op=EXECUTE dmverity_roothash=sha256:{'c' * 64} action=ALLOW" in text
    assert "KMODULE" not in text


def test_off_and_impossible() -> None:
    assert build_ipe_policy(parse_policy(BASE + '[integrity]\nipe_mode = "off"\n')) is None
    deny_all = BASE + "[integrity]\nallow_boot_verified = false\nallow_signed_verity = false\n"
    with pytest.raises(PolicyError, match="deny all execution"):
        build_ipe_policy(parse_policy(deny_all))


@pytest.mark.parametrize(
    ("version", "expected"),
    [("1", (1, 0, 0)), ("3.2~rc1", (3, 2, 0)), ("2024.11.5-2", (2024, 11, 5))],
)
def test_versions(version: str, expected: tuple[int, int, int]) -> None:
    assert ipe_version(version) == expected


def test_version_errors() -> None:
    with pytest.raises(PolicyError, match="must start with a number"):
        ipe_version("v1")
    with pytest.raises(PolicyError, match="65535"):
        ipe_version("70000.1")
