"""Pure format code: bytes in, frozen dataclasses out. No I/O, no subprocess."""
