"""A small, strict DER reader (X.690): definite lengths only, bounds-checked, with offsets.

Elements keep their exact encoding, because signatures are computed over encoded bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ultraviolet.errors import FormatError
from ultraviolet.formats._reader import Bytes

UNIVERSAL, APPLICATION, CONTEXT, PRIVATE = 0, 1, 2, 3
INTEGER, OCTET_STRING, NULL, OID, SEQUENCE, SET = 0x02, 0x04, 0x05, 0x06, 0x10, 0x11


class DerError(FormatError):
    pass


@dataclass(frozen=True)
class DerElement:
    tag_class: int
    constructed: bool
    number: int
    encoded: bytes  # identifier + length + contents, exactly as found
    header_length: int
    offset: int  # absolute offset of the identifier in the outermost input

    @property
    def content(self) -> bytes:
        return self.encoded[self.header_length :]

    @property
    def content_offset(self) -> int:
        return self.offset + self.header_length

    def is_universal(self, number: int) -> bool:
        return self.tag_class == UNIVERSAL and self.number == number

    def is_context(self, number: int) -> bool:
        return self.tag_class == CONTEXT and self.number == number

    def children(self) -> tuple[DerElement, ...]:
        if not self.constructed:
            raise DerError("DER", "expected a constructed element", self.offset)
        return tuple(iterate(self.content, base=self.content_offset))

    def expect(self, number: int, what: str, tag_class: int = UNIVERSAL) -> DerElement:
        if self.tag_class != tag_class or self.number != number:
            raise DerError(
                what,
                f"expected tag {tag_class}:{number}, found {self.tag_class}:{self.number}",
                self.offset,
            )
        return self


def _read_identifier(data: Bytes, at: int, base: int) -> tuple[int, bool, int, int]:
    if at >= len(data):
        raise DerError("DER", "truncated: identifier expected", base + at)
    first = data[at]
    tag_class, constructed, number = first >> 6, bool(first & 0x20), first & 0x1F
    at += 1
    if number == 0x1F:  # high tag number form
        number = 0
        while True:
            if at >= len(data):
                raise DerError("DER", "truncated tag number", base + at)
            byte = data[at]
            at += 1
            number = (number << 7) | (byte & 0x7F)
            if number > 1 << 28:
                raise DerError("DER", "tag number too large", base + at)
            if not byte & 0x80:
                break
    return tag_class, constructed, number, at


def _read_length(data: Bytes, at: int, base: int) -> tuple[int, int]:
    if at >= len(data):
        raise DerError("DER", "truncated: length expected", base + at)
    first = data[at]
    at += 1
    if first < 0x80:
        return first, at
    count = first & 0x7F
    if count == 0:
        raise DerError("DER", "indefinite length is not DER", base + at - 1)
    if count > 4 or at + count > len(data):
        raise DerError("DER", f"bad length of {count} bytes", base + at - 1)
    length = int.from_bytes(bytes(data[at : at + count]), "big")
    if length < 0x80 or (count > 1 and data[at] == 0):
        raise DerError("DER", "length not minimally encoded", base + at - 1)
    return length, at + count


def read_element(data: Bytes, at: int = 0, *, base: int = 0) -> tuple[DerElement, int]:
    """The element starting at `at` and the offset just after it."""
    tag_class, constructed, number, after_tag = _read_identifier(data, at, base)
    length, content_at = _read_length(data, after_tag, base)
    end = content_at + length
    if end > len(data):
        raise DerError("DER", f"content of {length} bytes runs past the end", base + content_at)
    element = DerElement(
        tag_class, constructed, number, bytes(data[at:end]), content_at - at, base + at
    )
    return element, end


def iterate(data: Bytes, *, base: int = 0) -> Iterator[DerElement]:
    at = 0
    while at < len(data):
        element, at = read_element(data, at, base=base)
        yield element


def parse(data: Bytes, *, base: int = 0) -> DerElement:
    """Exactly one element spanning all of `data`."""
    element, end = read_element(data, 0, base=base)
    if end != len(data):
        raise DerError("DER", f"{len(data) - end} trailing bytes after the element", base + end)
    return element


def decode_oid(element: DerElement) -> str:
    element.expect(OID, "OBJECT IDENTIFIER")
    content = element.content
    if not content or content[-1] & 0x80:
        raise DerError("OBJECT IDENTIFIER", "empty or truncated", element.offset)
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(a) for a in (first, arcs[0] - 40 * first, *arcs[1:]))


def decode_integer(element: DerElement) -> int:
    element.expect(INTEGER, "INTEGER")
    if not element.content:
        raise DerError("INTEGER", "empty", element.offset)
    return int.from_bytes(element.content, "big", signed=True)


def child_list(element: DerElement, what: str, minimum: int) -> tuple[DerElement, ...]:
    children = element.children()
    if len(children) < minimum:
        raise DerError(
            what, f"expected at least {minimum} fields, found {len(children)}", element.offset
        )
    return children


def only_child(element: DerElement, what: str) -> DerElement:
    """The single element inside an EXPLICIT tag (exactly one, or a DerError)."""
    children = element.children()
    if len(children) != 1:
        raise DerError(what, f"expected exactly one element, found {len(children)}", element.offset)
    return children[0]
