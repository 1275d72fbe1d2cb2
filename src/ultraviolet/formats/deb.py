"""Debian binary packages (.deb): the ar archive, its control fields and its data.tar members.

A .deb is an ar archive of `debian-binary` ("2.0\\n"), `control.tar[.gz|.xz]` and
`data.tar[.gz|.xz|.bz2]`. What the build needs from it is what dpkg will put on disk: every
data.tar member with its type and mode bits (set-uid/set-gid files are found before anything is
installed), and the control fields (the package's name, version and dependencies).

The tar members are read from the compressed stream as it is decompressed, file contents are
skipped, so a 100 MB kernel package is never held decompressed in memory. Supported tar
dialects are what dpkg-deb writes (GNU long names and links) and POSIX ustar/pax.
"""

from __future__ import annotations

import bz2
import lzma
import re
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes

AR_MAGIC = b"!<arch>\n"
AR_HEADER = 60
TAR_BLOCK = 512
SET_ID_BITS = 0o6000
_CHUNK = 1 << 16  # compressed bytes fed to a decompressor at a time
_MAX_OUT = 1 << 20  # decompressed bytes produced at a time (bounds memory on zip bombs)
_TAR_KINDS = {
    b"0": "file",
    b"\0": "file",
    b"7": "file",
    b"1": "hardlink",
    b"2": "symlink",
    b"3": "char",
    b"4": "block",
    b"5": "directory",
    b"6": "fifo",
}
_RELATION_NAME = re.compile(r"\s*([a-z0-9][a-z0-9+.-]*)")


class DebError(FormatError):
    pass


@dataclass(frozen=True)
class TarMember:
    """One member of a tar archive: `path` as stored (dpkg-deb writes "./usr/bin/su"), `kind`
    one of file, hardlink, symlink, char, block, directory, fifo; `mode` the permission bits
    with set-uid/set-gid/sticky (0o7777); `link` the target of links ("" otherwise)."""

    path: str
    kind: str
    mode: int
    size: int
    link: str = ""


@dataclass(frozen=True)
class DebPackage:
    control: tuple[tuple[str, str], ...]  # the control file's fields, in order
    members: tuple[TarMember, ...]  # data.tar, in archive order

    def field(self, name: str) -> str | None:
        wanted = name.lower()
        return next((value for key, value in self.control if key.lower() == wanted), None)

    @property
    def name(self) -> str:
        return self.field("Package") or ""

    @property
    def version(self) -> str:
        return self.field("Version") or ""

    @property
    def architecture(self) -> str:
        return self.field("Architecture") or ""

    def relation_names(self, name: str) -> tuple[str, ...]:
        """The package names a relation field mentions (every alternative, versions and
        architecture qualifiers dropped): Depends "libc6 (>= 2.34), a | b:any" -> libc6, a, b."""
        return relation_names(self.field(name) or "")

    def set_id_members(self) -> tuple[TarMember, ...]:
        """Regular files dpkg installs with a set-uid or set-gid bit, and hard links to them
        (a hard link shares its target's inode, hence its mode)."""
        set_id = {m.path for m in self.members if m.kind == "file" and m.mode & SET_ID_BITS}
        return tuple(
            m
            for m in self.members
            if m.path in set_id or (m.kind == "hardlink" and _link_path(m.link) in set_id)
        )


def relation_names(text: str) -> tuple[str, ...]:
    names = []
    for alternative in re.split(r"[,|]", text):
        match = _RELATION_NAME.match(alternative)
        if match:
            names.append(match.group(1))
    return tuple(dict.fromkeys(names))


def _link_path(link: str) -> str:
    # Hard link targets are stored like member names, with or without the leading "./".
    return link if link.startswith("./") else "./" + link.lstrip("/")


def read_deb(data: Bytes, *, contents: bool = True) -> DebPackage:
    """Parse a .deb; DebError (with the offset in the .deb, or in the named decompressed
    member) on anything damaged or unsupported. Without `contents` data.tar is only located,
    not decompressed (members is then empty): the control file alone costs almost nothing."""
    members = _ar_members(data)
    names = [name for name, _, _ in members]
    if not names or names[0] != "debian-binary":
        raise DebError(".deb", f"first ar member must be debian-binary, got {names[:1]}", 8)
    _, start, size = members[0]
    if not bytes(data[start : start + size]).startswith(b"2."):
        raise DebError(".deb", "unsupported debian-binary version (expected 2.x)", start)
    control_tar = _find_member(members, "control.tar")
    data_tar = _find_member(members, "data.tar")
    control_text = _control_file(data, control_tar)
    return DebPackage(
        control=parse_control(control_text),
        members=tuple(_tar_members_of(data, data_tar)) if contents else (),
    )


def _ar_members(data: Bytes) -> list[tuple[str, int, int]]:
    """(name, data offset, size) of each ar member."""
    if bytes(data[: len(AR_MAGIC)]) != AR_MAGIC:
        raise DebError(".deb", "not an ar archive (bad magic)", 0)
    members = []
    at = len(AR_MAGIC)
    while at < len(data):
        header = bytes(data[at : at + AR_HEADER])
        if len(header) < AR_HEADER:
            raise DebError(".deb", "truncated ar member header", at)
        if header[58:60] != b"`\n":
            raise DebError(".deb", "bad ar member header terminator", at + 58)
        name = header[:16].decode("ascii", errors="replace").rstrip().removesuffix("/")
        size_text = header[48:58].decode("ascii", errors="replace").strip()
        if not size_text.isdigit():
            raise DebError(".deb", f"ar member {name!r}: bad size {size_text!r}", at + 48)
        size = int(size_text)
        start = at + AR_HEADER
        if start + size > len(data):
            raise DebError(".deb", f"ar member {name!r} truncated: {size} bytes declared", at)
        members.append((name, start, size))
        at = start + size + (size & 1)  # members are padded to even offsets
    return members


def _find_member(members: list[tuple[str, int, int]], stem: str) -> tuple[str, int, int]:
    found = [m for m in members if m[0] == stem or m[0].startswith(stem + ".")]
    if len(found) != 1:
        raise DebError(".deb", f"expected one {stem} member, found {[m[0] for m in found]}")
    return found[0]


def _control_file(data: Bytes, member: tuple[str, int, int]) -> str:
    name, start, _ = member
    for entry, content in _tar_walk(_decompressed(data, member), name, want_content="./control"):
        if entry.path in ("./control", "control") and content is not None:
            try:
                return content.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DebError(name, "control file is not UTF-8", start) from exc
    raise DebError(name, "no ./control file", start)


def _tar_members_of(data: Bytes, member: tuple[str, int, int]) -> Iterator[TarMember]:
    for entry, _ in _tar_walk(_decompressed(data, member), member[0]):
        yield entry


def read_tar(data: Bytes) -> list[TarMember]:
    """The members of an uncompressed tar archive (e.g. `dpkg-deb --fsys-tarfile` output)."""
    view = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    return [entry for entry, _ in _tar_walk(_Stream.plain(view), "tar")]


def parse_control(text: str) -> tuple[tuple[str, str], ...]:
    """The first paragraph of a deb822 control file; continuation lines are kept joined with
    newlines, as dpkg keeps them."""
    fields: list[tuple[str, str]] = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            if fields:
                break
            continue
        if line[0] in " \t":
            if not fields:
                raise DebError("control", f"line {number}: continuation before any field")
            key, value = fields[-1]
            fields[-1] = (key, value + "\n" + line.strip())
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or " " in key:
            raise DebError("control", f"line {number}: expected 'Field: value', got {line!r}")
        fields.append((key, value.strip()))
    if not fields:
        raise DebError("control", "empty control file")
    return tuple(fields)


class _Stream:
    """Decompressed bytes pulled on demand; `offset` counts decompressed bytes consumed."""

    def __init__(self, pull: Callable[[], bytes]) -> None:
        self._pull = pull
        self._buffer = bytearray()
        self.offset = 0

    @classmethod
    def plain(cls, data: Bytes) -> _Stream:
        chunks = iter([bytes(data)])
        return cls(lambda: next(chunks, b""))

    def read(self, size: int) -> bytes:
        """Exactly `size` bytes, or fewer at the end of the stream."""
        while len(self._buffer) < size:
            chunk = self._pull()
            if not chunk:
                break
            self._buffer += chunk
        taken = bytes(self._buffer[:size])
        del self._buffer[:size]
        self.offset += len(taken)
        return taken

    def skip(self, size: int) -> int:
        """Drop `size` bytes without keeping them; the number actually dropped."""
        dropped = 0
        while dropped < size:
            piece = self.read(min(size - dropped, _MAX_OUT))
            if not piece:
                break
            dropped += len(piece)
        return dropped


def _decompressed(data: Bytes, member: tuple[str, int, int]) -> _Stream:
    name, start, size = member
    compression = name.rpartition(".tar")[2].lstrip(".")
    source = memoryview(data).cast("B")[start : start + size]
    if compression == "":
        return _Stream.plain(source)
    if compression in ("xz", "lzma"):
        return _Stream(_incremental(source, start, name, lzma.LZMADecompressor(), lzma.LZMAError))
    if compression == "bz2":
        return _Stream(_incremental(source, start, name, bz2.BZ2Decompressor(), OSError))
    if compression == "gz":
        return _Stream(_gzip(source, start, name))
    raise DebError(name, f"unsupported compression {compression!r} (gz, xz, bz2 or none)", start)


def _incremental(
    source: memoryview,
    base: int,
    name: str,
    decompressor: lzma.LZMADecompressor | bz2.BZ2Decompressor,
    error: type[Exception],
) -> Callable[[], bytes]:
    position = 0

    def pull() -> bytes:
        nonlocal position
        while not decompressor.eof:
            chunk = b""
            if decompressor.needs_input:
                chunk = bytes(source[position : position + _CHUNK])
                if not chunk:
                    raise DebError(name, "compressed stream ends early", base + position)
                position += len(chunk)
            try:
                out = decompressor.decompress(chunk, max_length=_MAX_OUT)
            except (error, EOFError) as exc:
                raise DebError(name, f"damaged compressed stream: {exc}", base + position) from exc
            if out:
                return out
        return b""

    return pull


def _gzip(source: memoryview, base: int, name: str) -> Callable[[], bytes]:
    decompressor = zlib.decompressobj(wbits=47)  # gzip or zlib header, detected
    position = 0
    pending = b""

    def pull() -> bytes:
        nonlocal position, pending
        while not decompressor.eof:
            if not pending:
                pending = bytes(source[position : position + _CHUNK])
                if not pending:
                    raise DebError(name, "compressed stream ends early", base + position)
                position += len(pending)
            try:
                out = decompressor.decompress(pending, _MAX_OUT)
            except zlib.error as exc:
                raise DebError(name, f"damaged compressed stream: {exc}", base + position) from exc
            pending = decompressor.unconsumed_tail
            if out:
                return out
        return b""

    return pull


@dataclass
class _PendingNames:
    """Names carried by GNU 'L'/'K' and pax 'x' headers over to the next member."""

    path: str | None = None
    link: str | None = None
    size: int | None = None


def _tar_walk(
    stream: _Stream, structure: str, *, want_content: str | None = None
) -> Iterator[tuple[TarMember, bytes | None]]:
    """Each member, with its content when its path is `want_content` (else None)."""
    pending = _PendingNames()
    while True:
        at = stream.offset
        header = stream.read(TAR_BLOCK)
        if len(header) < TAR_BLOCK:
            raise DebError(structure, "truncated tar header (no end-of-archive blocks)", at)
        if header == bytes(TAR_BLOCK):
            return  # end of archive (the second zero block and padding need not be read)
        _check_checksum(header, structure, at)
        flag = header[156:157]
        size = pending.size if pending.size is not None else _number(header[124:136], at + 124)
        if flag in (b"L", b"K", b"x", b"g"):
            _read_extension(stream, structure, flag, size, pending, at)
            continue
        kind = _TAR_KINDS.get(flag)
        if kind is None:
            raise DebError(structure, f"unsupported tar member type {flag!r}", at + 156)
        path = pending.path if pending.path is not None else _header_path(header)
        link = pending.link if pending.link is not None else _text(header[157:257])
        pending = _PendingNames()
        mode = _number(header[100:108], at + 100) & 0o7777
        # Only regular files carry data in the archive (hard links and devices declare none).
        stored = size if kind == "file" else 0
        content = None
        if want_content is not None and path in (want_content, want_content.lstrip("./")):
            content = stream.read(stored)
            _padding(stream, structure, stored, len(content))
        else:
            _padding(stream, structure, stored, stream.skip(stored))
        yield TarMember(path, kind, mode, size, link), content


def _padding(stream: _Stream, structure: str, size: int, got: int) -> None:
    if got < size:
        raise DebError(structure, f"member data truncated: {got} of {size} bytes", stream.offset)
    stream.skip(-size % TAR_BLOCK)


def _read_extension(
    stream: _Stream, structure: str, flag: bytes, size: int, pending: _PendingNames, at: int
) -> None:
    data = stream.read(size)
    _padding(stream, structure, size, len(data))
    if flag == b"L":
        pending.path = _text(data)
    elif flag == b"K":
        pending.link = _text(data)
    elif flag == b"x":
        for key, value in _pax_records(data, structure, at + TAR_BLOCK):
            if key == "path":
                pending.path = value
            elif key == "linkpath":
                pending.link = value
            elif key == "size":
                if not value.isdigit():
                    raise DebError(structure, f"pax size {value!r} is not a number", at)
                pending.size = int(value)


def _pax_records(data: bytes, structure: str, at: int) -> Iterator[tuple[str, str]]:
    position = 0
    while position < len(data):
        length_text, space, _ = data[position : position + 20].partition(b" ")
        if not space or not length_text.isdigit() or int(length_text) < len(length_text) + 3:
            raise DebError(structure, "bad pax record length", at + position)
        length = int(length_text)
        record = data[position + len(length_text) + 1 : position + length]
        if len(record) != length - len(length_text) - 1 or not record.endswith(b"\n"):
            raise DebError(structure, "truncated pax record", at + position)
        key, equals, value = record[:-1].partition(b"=")
        if not equals:
            raise DebError(structure, "pax record without '='", at + position)
        yield key.decode("utf-8", errors="replace"), value.decode("utf-8", errors="replace")
        position += length


def _check_checksum(header: bytes, structure: str, at: int) -> None:
    stored = _number(header[148:156], at + 148)
    computed = sum(header[:148]) + 8 * 0x20 + sum(header[156:])
    if stored != computed:
        raise DebError(structure, f"tar header checksum {stored} != computed {computed}", at)


def _header_path(header: bytes) -> str:
    name = _text(header[:100])
    # POSIX ustar keeps a prefix; GNU tar ("ustar  \0") uses those bytes for other fields.
    if header[257:263] == b"ustar\0":
        prefix = _text(header[345:500])
        if prefix:
            return prefix + "/" + name
    return name


def _text(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", errors="surrogateescape")


def _number(field: bytes, at: int) -> int:
    """A tar numeric field: octal digits (space/NUL padded), or GNU base-256 (high bit)."""
    if field and field[0] & 0x80:
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    digits = field.split(b"\0", 1)[0].strip(b" ")
    if not digits:
        return 0
    if any(c not in b"01234567" for c in digits):
        raise DebError("tar header", f"bad octal number {field!r}", at)
    return int(digits, 8)
