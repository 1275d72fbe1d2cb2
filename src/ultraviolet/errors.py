"""The one exception hierarchy of Ultraviolet.

Every error the library raises derives from UltravioletError. Families are split by who is at
fault: the input bytes (FormatError), the node policy (PolicyError), an external tool (ToolError),
a build step (BuildError), or a trust check (VerificationError, AttestationError).
"""

from __future__ import annotations

from collections.abc import Sequence


class UltravioletError(Exception):
    """Root of every error Ultraviolet raises on purpose."""


class FormatError(UltravioletError):
    """Bytes that do not parse as the structure they claim to be.

    `structure` names what was being read (e.g. "GPT header"), `offset` is the byte offset in the
    input where the problem was found (None when the input as a whole is wrong).
    """

    def __init__(self, structure: str, message: str, offset: int | None = None) -> None:
        self.structure = structure
        self.offset = offset
        self.detail = message
        where = f" at offset {offset} (0x{offset:x})" if offset is not None else ""
        super().__init__(f"{structure}{where}: {message}")


class PolicyError(UltravioletError):
    """A node policy that is not valid."""


class BuildError(UltravioletError):
    """A build step that could not be completed."""


class VerificationError(UltravioletError):
    """A trust check that could not be carried out (not a failed check: those are results)."""


class AttestationError(UltravioletError):
    """Attestation evidence that could not be processed."""


class ToolError(UltravioletError):
    """An external program that failed or could not be started."""

    def __init__(self, argv: Sequence[str], returncode: int | None, stderr_tail: str) -> None:
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        status = "could not be started" if returncode is None else f"exited with {returncode}"
        message = f"{' '.join(self.argv)} {status}"
        if stderr_tail:
            message += f":\n{stderr_tail}"
        super().__init__(message)
