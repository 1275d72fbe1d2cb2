"""systemd-style INI: parse, render, drop-ins, and errors with line numbers."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.unitfile import (
    UnitFileError,
    merge_units,
    parse_unit,
    render_unit,
    unit,
)

TEXT = """\
# repart.d definition
[Partition]
Type=usr
  CopyFiles = /usr:/
CopyFiles=/opt:/opt
; a comment
Label=uv_1.2 \\
  continued

[Partition]
Verity=data
"""


def test_parse_keeps_order_and_repeats() -> None:
    parsed = parse_unit(TEXT)
    assert parsed.section_names() == ("Partition",)
    assert parsed.sections[0].entries == (
        ("Type", "usr"),
        ("CopyFiles", "/usr:/"),
        ("CopyFiles", "/opt:/opt"),
        ("Label", "uv_1.2    continued"),
    )
    assert parsed.get("Partition", "Verity") == "data"
    assert parsed.get_all("Partition", "CopyFiles") == ("/usr:/", "/opt:/opt")
    assert parsed.get("Partition", "Missing") is None


def test_dropin_with_empty_assignment_resets_lists() -> None:
    base = parse_unit("[Partition]\nCopyFiles=/usr:/\nType=usr\n")
    dropin = parse_unit("[Partition]\nCopyFiles=\nCopyFiles=/srv:/\nType=root\n")
    merged = merge_units(base, dropin)
    assert merged.get_all("Partition", "CopyFiles") == ("/srv:/",)
    assert merged.get("Partition", "Type") == "root"


def test_render_round_trip() -> None:
    built = unit(("Transfer", [("ProtectVersion", "%A")]), ("Source", [("Type", "url-file")]))
    text = render_unit(built)
    assert text == "[Transfer]\nProtectVersion=%A\n\n[Source]\nType=url-file\n"
    assert parse_unit(text) == built


@pytest.mark.parametrize(
    ("text", "message", "offset"),
    [
        ("Type=usr\n", "line 1: assignment outside of a section", 0),
        ("[Partition]\nno equals sign\n", "line 2: expected Key=Value", 12),
        ("[Partition\n", "line 1: invalid section header", 0),
        ("# c\n[A]\n[B]]\n", "line 3: invalid section header", 8),
    ],
)
def test_errors_name_line_and_offset(text: str, message: str, offset: int) -> None:
    with pytest.raises(UnitFileError, match=message) as caught:
        parse_unit(text, source="10-usr.conf")
    assert caught.value.offset == offset
    assert caught.value.structure == "10-usr.conf"


@pytest.mark.parametrize(
    "entries",
    [[("Key", "two\nlines")], [("Bad Key", "x")], [("Key", " padded")], [("Key", "ends\\")]],
)
def test_render_refuses_what_cannot_round_trip(entries: list[tuple[str, str]]) -> None:
    with pytest.raises(UnitFileError):
        unit(("Section", entries))


KEYS = st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,10}", fullmatch=True)
VALUES = st.from_regex(
    r"([!-\[\]-~]|[!-~][ -~]{0,20}[!-\[\]-~])?", fullmatch=True
)  # no trailing \\


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["Partition", "Source", "Target"]),
            st.lists(st.tuples(KEYS, VALUES), max_size=5),
        ),
        max_size=4,
    )
)
def test_round_trip_property(sections: list[tuple[str, list[tuple[str, str]]]]) -> None:
    built = unit(*sections)
    assert parse_unit(render_unit(built)) == built


@given(st.text(max_size=300))
def test_random_text(text: str) -> None:
    with contextlib.suppress(UnitFileError):
        parse_unit(text)
