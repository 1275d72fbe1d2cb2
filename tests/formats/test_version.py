"""UAPI version comparison: the spec's examples where systemd agrees, systemd as the oracle."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.version import (
    VersionError,
    VersionKey,
    compare_versions,
    is_valid_version,
    validate_version,
)
from ultraviolet.tools import ToolsChroot

# (a, b, expected) from specs/version_format_specification.md, as systemd 257 decides them. The
# spec also lists
# `1_2_3 > 1.3.3` and `1+2+3 > 1.3.3`; systemd 257 agrees, they are in the table too.
SPEC_EXAMPLES = [
    ("11", "11", 0),
    ("systemd-123", "systemd-123", 0),
    ("bar-123", "foo-123", -1),
    ("123a", "123", 1),
    ("123.a", "123", 1),
    ("123.a", "123.b", -1),
    ("123a", "123.a", 1),
    ("11α", "11β", 0),
    ("A", "a", -1),
    ("", "0", -1),
    ("0.", "0", 1),
    ("0.0", "0", 1),
    ("0", "~", 1),
    ("", "~", 1),  # the spec text says '' < '~'; systemd 257 (what sorts at boot) says >
    ("1_", "1", 0),
    ("_1", "1", 0),
    ("1_", "1.2", -1),
    ("1_2_3", "1.3.3", 1),
    ("1+", "1", 0),
    ("+1", "1", 0),
    ("1+", "1.2", -1),
    ("1+2+3", "1.3.3", 1),
]

MORE = [
    ("1~rc1", "1", -1),
    ("1.2", "1.10", -1),
    ("001", "1", 0),
    ("1-2", "1.2", -1),
    ("1^2", "1.2", -1),
    ("1.0", "1^0", 1),
    ("1a", "1^", 1),
    ("2.0.1", "2.0", 1),
]


@pytest.mark.parametrize(("a", "b", "expected"), SPEC_EXAMPLES + MORE)
def test_table(a: str, b: str, expected: int) -> None:
    assert compare_versions(a, b) == expected
    assert compare_versions(b, a) == -expected


def test_sort_key_orders_oldest_first() -> None:
    versions = ["1.10", "1.2", "1.2~rc1", "1.2-1", "0.9", "1.2.1"]
    assert sorted(versions, key=VersionKey) == ["0.9", "1.2~rc1", "1.2", "1.2-1", "1.2.1", "1.10"]


@pytest.mark.parametrize("version", ["1", "1.2.3", "257.13-1~deb13u1", "2024.1^git"])
def test_valid_versions(version: str) -> None:
    assert validate_version(version) == version


@pytest.mark.parametrize("version", ["", "1 2", "1_2", "1+3", ".1", "-1", "1/2", "x" * 129])
def test_invalid_versions(version: str) -> None:
    assert not is_valid_version(version)
    with pytest.raises(VersionError, match="not a valid version"):
        validate_version(version)


VERSION_TEXT = st.text(alphabet="0123456789ab.~^-_+Z", max_size=8)


@given(VERSION_TEXT, VERSION_TEXT, VERSION_TEXT)
def test_total_order_properties(a: str, b: str, c: str) -> None:
    assert compare_versions(a, a) == 0
    assert compare_versions(a, b) == -compare_versions(b, a)
    if compare_versions(a, b) <= 0 and compare_versions(b, c) <= 0:
        assert compare_versions(a, c) <= 0


def _random_pairs(count: int) -> list[tuple[str, str]]:
    rng = random.Random(20261123)
    alphabet = "0123456789ab.~^-_+Z"

    def one() -> str:
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 7)))

    return [(one(), one()) for _ in range(count)]


@pytest.mark.oracle
def test_agrees_with_systemd_analyze(tools_chroot: ToolsChroot) -> None:
    cases = [(a, b) for a, b, _ in SPEC_EXAMPLES + MORE] + _random_pairs(400)
    # One chroot entry for all pairs: systemd-analyze exits 11 (>), 12 (<) or 0 (==).
    script = (
        'while [ $# -gt 0 ]; do systemd-analyze compare-versions -- "$1" "$2" >/dev/null;'
        " echo $?; shift 2; done"
    )
    arguments = [value for pair in cases for value in pair]
    result = tools_chroot.run(["sh", "-c", script, "sh", *arguments])
    codes = {"0": 0, "11": 1, "12": -1}
    for (a, b), code in zip(cases, result.text.split(), strict=True):
        assert compare_versions(a, b) == codes[code], (a, b)
