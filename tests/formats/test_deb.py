""".deb parsing: members and control fields of packages written by tarfile (GNU and pax) with
every compression dpkg-deb writes; damaged packages -> DebError; dpkg-deb as the oracle."""

from __future__ import annotations

import bz2
import contextlib
import gzip
import io
import lzma
import re
import tarfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ultraviolet.formats.deb import DebError, TarMember, read_deb, read_tar, relation_names
from ultraviolet.tools import ToolsChroot

CONTROL = (
    "Package: demo\nVersion: 1:2.0-1\nArchitecture: amd64\nEssential: yes\n"
    "Pre-Depends: libc6 (>= 2.36)\nDepends: passwd, default-mta | mail-transport-agent:any\n"
    "Description: a demo\n two lines\n"
)


def _uncompressed(data: bytes) -> bytes:
    return data


COMPRESSORS: dict[str, Callable[[bytes], bytes]] = {
    "": _uncompressed,
    ".gz": gzip.compress,
    ".xz": lzma.compress,
    ".bz2": bz2.compress,
}


def _tar(members: list[TarMember], tar_format: int = tarfile.GNU_FORMAT) -> bytes:
    out = io.BytesIO()
    types = {"file": tarfile.REGTYPE, "directory": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE}
    types["hardlink"] = tarfile.LNKTYPE
    with tarfile.open(fileobj=out, mode="w", format=tar_format) as archive:
        for member in members:
            info = tarfile.TarInfo(member.path)
            info.type = types[member.kind]
            info.mode = member.mode
            info.linkname = member.link
            info.size = member.size
            archive.addfile(info, io.BytesIO(b"x" * member.size) if member.kind == "file" else None)
    return out.getvalue()


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    out = bytearray(b"!<arch>\n")
    for name, data in members:
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}`\n"
        out += header.encode() + data + (b"\n" if len(data) % 2 else b"")
    return bytes(out)


def make_deb(
    members: list[TarMember],
    *,
    compression: str = ".xz",
    control: str = CONTROL,
    tar_format: int = tarfile.GNU_FORMAT,
) -> bytes:
    control_info = tarfile.TarInfo("./control")
    control_info.size = len(control.encode())
    control_tar = io.BytesIO()
    with tarfile.open(fileobj=control_tar, mode="w") as archive:
        archive.addfile(control_info, io.BytesIO(control.encode()))
    compress = COMPRESSORS[compression]
    return _ar(
        [
            ("debian-binary", b"2.0\n"),
            ("control.tar.gz", gzip.compress(control_tar.getvalue())),
            (f"data.tar{compression}", compress(_tar(members, tar_format))),
        ]
    )


SAMPLE = [
    TarMember("./", "directory", 0o755, 0),
    TarMember("./usr/bin/", "directory", 0o755, 0),
    TarMember("./usr/bin/passwd", "file", 0o4755, 5),
    TarMember("./usr/bin/chage", "file", 0o2755, 3),
    TarMember("./usr/bin/plain", "file", 0o755, 0),
    TarMember("./usr/bin/again", "hardlink", 0o4755, 0, "./usr/bin/passwd"),
    TarMember("./usr/bin/sym", "symlink", 0o777, 0, "passwd"),
    TarMember("./usr/share/" + "long-name/" * 20 + "file", "file", 0o644, 1),
]


@pytest.mark.parametrize("compression", list(COMPRESSORS))
@pytest.mark.parametrize("tar_format", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_members_control_and_set_id(compression: str, tar_format: int) -> None:
    deb = read_deb(make_deb(SAMPLE, compression=compression, tar_format=tar_format))
    assert deb.members == tuple(SAMPLE)
    assert (deb.name, deb.version, deb.architecture) == ("demo", "1:2.0-1", "amd64")
    assert deb.field("essential") == "yes"
    assert deb.field("Description") == "a demo\ntwo lines"
    assert deb.relation_names("Depends") == ("passwd", "default-mta", "mail-transport-agent")
    assert deb.relation_names("Pre-Depends") == ("libc6",)
    assert [m.path for m in deb.set_id_members()] == [
        "./usr/bin/passwd",
        "./usr/bin/chage",
        "./usr/bin/again",
    ]


def test_relation_names() -> None:
    assert relation_names("") == ()
    assert relation_names("a (>= 1) | b [amd64], c:any, a") == ("a", "b", "c")


def test_unsupported_compression_is_named() -> None:
    good = make_deb(SAMPLE, compression="")
    damaged = good.replace(b"data.tar        ", b"data.tar.zst    ")
    with pytest.raises(DebError, match="unsupported compression 'zst'"):
        read_deb(damaged)


def test_not_a_deb() -> None:
    with pytest.raises(DebError, match="not an ar archive"):
        read_deb(b"PK\x03\x04")
    with pytest.raises(DebError, match="debian-binary"):
        read_deb(_ar([("control.tar", b"")]))


def test_checksum_mismatch_names_the_offset() -> None:
    tar = bytearray(_tar(SAMPLE))
    tar[512 * 1 + 10] ^= 0x01  # a byte of the second member's name
    with pytest.raises(DebError, match="checksum") as failure:
        read_tar(bytes(tar))
    assert failure.value.offset == 512


member_strategy = st.builds(
    TarMember,
    path=st.from_regex(r"\./usr/[a-z0-9._-]{1,150}", fullmatch=True),
    kind=st.just("file"),
    mode=st.integers(0, 0o7777),
    size=st.integers(0, 2000),
)


@given(
    members=st.lists(member_strategy, max_size=6), compression=st.sampled_from(list(COMPRESSORS))
)
def test_round_trip(members: list[TarMember], compression: str) -> None:
    deb = read_deb(make_deb(members, compression=compression))
    assert deb.members == tuple(members)
    assert {m.path for m in deb.set_id_members()} == {m.path for m in members if m.mode & 0o6000}


@given(data=st.data(), compression=st.sampled_from(list(COMPRESSORS)))
def test_damage_gives_deb_error_only(data: st.DataObject, compression: str) -> None:
    deb = bytearray(make_deb(SAMPLE, compression=compression))
    # (the last byte may be the ar padding byte, which dpkg does not need either)
    cut = data.draw(st.integers(0, len(deb) - 2))
    with pytest.raises(DebError):
        read_deb(bytes(deb[:cut]))
    flips = data.draw(st.lists(st.integers(0, len(deb) - 1), min_size=1, max_size=4))
    for at in flips:
        deb[at] ^= 0xFF
    with contextlib.suppress(DebError):  # a flip may land in a name or file content
        read_deb(bytes(deb))


# dpkg-deb --contents: "-rwsr-xr-x root/root  118168 2025-01-01 00:00 ./usr/bin/passwd"
_CONTENTS = re.compile(r"^(\S{10}) \S+\s+(\d+) \S+ \S+ (.*?)(?: (?:->|link to) .*)?$")
_TYPES = {"-": "file", "d": "directory", "l": "symlink", "h": "hardlink", "c": "char"}


def _permissions(text: str) -> int:
    mode = 0
    for index, (char, bits) in enumerate(zip(text[1:], "rwxrwxrwx", strict=True)):
        bit = 1 << (8 - index)
        if char in (bits, "s", "t"):
            mode |= bit
        if char in "sS" and index in (2, 5):
            mode |= 0o4000 if index == 2 else 0o2000
        if char in "tT" and index == 8:
            mode |= 0o1000
    return mode


def _dpkg_contents(chroot: ToolsChroot, path: Path) -> list[tuple[str, str, int]]:
    listing = chroot.run(["dpkg-deb", "--contents", str(path)], binds=[path.parent]).text
    rows = []
    for line in listing.splitlines():
        match = _CONTENTS.match(line)
        assert match, line
        rows.append((match.group(3), _TYPES[match.group(1)[0]], _permissions(match.group(1))))
    return rows


def _members(deb: bytes) -> list[tuple[str, str, int]]:
    return [(m.path, m.kind, m.mode) for m in read_deb(deb).members]


@pytest.mark.oracle
@pytest.mark.parametrize("compression", ["xz", "gzip", "none"])
def test_dpkg_deb_build_agrees(tools_chroot: ToolsChroot, tmp_path: Path, compression: str) -> None:
    """A package built by dpkg-deb (set-uid, set-gid, long names, symlinks, a hard link to a
    set-uid file) reads as dpkg-deb lists it."""
    root = tmp_path / "pkg"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "DEBIAN" / "control").write_text(
        "Package: uv-demo\nVersion: 1.0\nArchitecture: all\nMaintainer: x <x@example.org>\n"
        "Depends: passwd\nDescription: demo\n"
    )
    tool = root / "usr" / "bin" / "tool"
    tool.parent.mkdir(parents=True)
    tool.write_bytes(b"\x7fELF")
    tool.chmod(0o4755)
    (root / "usr" / "bin" / "group-tool").write_bytes(b"")
    (root / "usr" / "bin" / "group-tool").chmod(0o2711)
    deep = root / "usr" / "share" / ("a-long-directory-name" * 6) / ("b" * 120)
    deep.parent.mkdir(parents=True)
    deep.write_text("x")
    (root / "usr" / "bin" / "link").symlink_to("tool")
    (root / "usr" / "bin" / "tool-again").hardlink_to(tool)
    deb = tmp_path / "demo.deb"
    build = ["dpkg-deb", "--root-owner-group", f"-Z{compression}", "--build", str(root), str(deb)]
    tools_chroot.run(build, binds=[tmp_path])
    assert _members(deb.read_bytes()) == _dpkg_contents(tools_chroot, deb)
    parsed = read_deb(deb.read_bytes())
    assert parsed.name == "uv-demo" and parsed.relation_names("Depends") == ("passwd",)
    assert {m.path for m in parsed.set_id_members()} == {
        "./usr/bin/tool",
        "./usr/bin/tool-again",
        "./usr/bin/group-tool",
    }
