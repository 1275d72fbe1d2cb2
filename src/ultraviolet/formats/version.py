"""UAPI version format: validation and comparison (systemd's strverscmp_improved).

The spec's examples are ambiguous in places (e.g. `1_2_3` vs `1.3.3`), so the oracle is systemd
itself: `systemd-analyze compare-versions`, which the tests run side by side with this code.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable

from ultraviolet.errors import FormatError

_SPECIAL = "~-^."
# Versions we produce or accept in policies: characters the spec gives a meaning, starting with
# a letter or digit. Underscore and plus are left out on purpose: `_` separates name and version
# in image file names (DDI) and `+` introduces boot counters in UKI file names.
_STRICT = re.compile(r"[A-Za-z0-9][A-Za-z0-9.~^-]*")


class VersionError(FormatError):
    pass


def _is_version_char(char: str) -> bool:
    return char.isascii() and (char.isalnum() or char in _SPECIAL)


def _is_digit(char: str) -> bool:
    return "0" <= char <= "9"


def _is_alpha(char: str) -> bool:
    return char.isascii() and char.isalpha()


def _sign(value: int) -> int:
    return (value > 0) - (value < 0)


def _cmp_str(a: str, b: str) -> int:
    """strcmp() sign over the byte values of the remaining strings."""
    return _sign((a > b) - (a < b)) if a != b else 0


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as `a` is older than, equal to or newer than `b`."""
    i = j = 0
    while True:
        while i < len(a) and not _is_version_char(a[i]):
            i += 1
        while j < len(b) and not _is_version_char(b[j]):
            j += 1
        result, i, j = _compare_separators(a, b, i, j)
        if result is not None:
            return result
        result, i, j = _compare_segment(a, b, i, j)
        if result:
            return result


def _prefixed(a: str, i: int, b: str, j: int, char: str) -> tuple[bool, bool]:
    return a[i : i + 1] == char, b[j : j + 1] == char


def _compare_separators(a: str, b: str, i: int, j: int) -> tuple[int | None, int, int]:
    """End of string, '~', '-', '^', '.'; None means the segments decide."""
    in_a, in_b = _prefixed(a, i, b, j, "~")
    if in_a or in_b:
        if in_a != in_b:
            return (-1 if in_a else 1), i, j  # '~' sorts lower
        i, j = i + 1, j + 1
    if i >= len(a) or j >= len(b):
        return _cmp_str(a[i:], b[j:]), i, j
    # systemd (the oracle) sorts a segment prefixed by '-', '^' or '.' before an unprefixed one,
    # checked in this order; the spec text says '^' sorts higher, systemd 257 does not.
    for char in "-^.":
        in_a, in_b = _prefixed(a, i, b, j, char)
        if in_a or in_b:
            if in_a != in_b:
                return (-1 if in_a else 1), i, j
            i, j = i + 1, j + 1
    return None, i, j


def _compare_segment(a: str, b: str, i: int, j: int) -> tuple[int, int, int]:
    """Step 7/8: the numeric or alphabetical segment at i/j; 0 means equal so far."""
    if (i < len(a) and _is_digit(a[i])) or (j < len(b) and _is_digit(b[j])):
        end_a, end_b = _span(a, i, _is_digit), _span(b, j, _is_digit)
        if (end_a > i) != (end_b > j):
            return (1 if end_a > i else -1), end_a, end_b  # numbers are newer than letters
        number_a, number_b = a[i:end_a].lstrip("0"), b[j:end_b].lstrip("0")
        if len(number_a) != len(number_b):
            return _sign(len(number_a) - len(number_b)), end_a, end_b
        return _cmp_str(number_a, number_b), end_a, end_b
    end_a, end_b = _span(a, i, _is_alpha), _span(b, j, _is_alpha)
    word_a, word_b = a[i:end_a], b[j:end_b]
    common = min(len(word_a), len(word_b))
    result = _cmp_str(word_a[:common], word_b[:common])
    if result == 0:
        result = _sign(len(word_a) - len(word_b))
    return result, end_a, end_b


def _span(text: str, start: int, accept: Callable[[str], bool]) -> int:
    end = start
    while end < len(text) and accept(text[end]):
        end += 1
    return end


@functools.total_ordering
class VersionKey:
    """Sort key: sorted(versions, key=VersionKey) orders oldest first."""

    __slots__ = ("version",)

    def __init__(self, version: str) -> None:
        self.version = version

    def __eq__(self, other: object) -> bool:
        return isinstance(other, VersionKey) and compare_versions(self.version, other.version) == 0

    def __lt__(self, other: VersionKey) -> bool:
        return compare_versions(self.version, other.version) < 0

    def __hash__(self) -> int:
        raise TypeError("VersionKey is a sort key, not a hashable value")


def is_valid_version(version: str) -> bool:
    """A version we accept for images: [A-Za-z0-9] then [A-Za-z0-9.~^-]*, at most 128 chars."""
    return len(version) <= 128 and _STRICT.fullmatch(version) is not None


def validate_version(version: str) -> str:
    if not is_valid_version(version):
        raise VersionError(
            "version",
            f"{version!r} is not a valid version: use letters, digits and . ~ ^ - "
            "(starting with a letter or digit, at most 128 characters)",
        )
    return version
