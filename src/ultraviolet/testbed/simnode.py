"""A simulated node: swtpm with our TPM driver, "booted" by replaying a given event log.

Booting starts the TPM at the locality of the log's StartupLocality record (PCR 0 starts
there) and extends its PCRs with every measured event of a firmware event log (all banks
the log carries) and then of a systemd userspace measurement log, exactly what firmware,
systemd-stub and systemd-pcrextend do on a real machine. The quotes the node then makes are
genuine TPM quotes over those PCRs, signed by a real AK under a real EK, so a test can produce
true evidence for any log (and false evidence: a log that differs from what was extended).

The TPM state persists in the node's directory: `reboot` restarts swtpm on it (PCRs reset,
same EK and AK) and boots again, maybe with other logs.

The TPM driver (node/tpm.py's TpmDriver) is a layer beside the testbed, so the caller hands in
`make_tpm`, which builds it for the running swtpm and the node's state directory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from ultraviolet.errors import AttestationError
from ultraviolet.formats.eventlog import (
    EV_NO_ACTION,
    parse_event_log,
    parse_userspace_log,
    startup_locality,
)
from ultraviolet.testbed.swtpm import Swtpm, manufacture, start_swtpm
from ultraviolet.tools import ToolsChroot

PCR_COUNT = 24


class PcrExtender(Protocol):
    def extend(self, extends: Sequence[tuple[int, Mapping[str, bytes]]]) -> None: ...


Tpm = TypeVar("Tpm", bound=PcrExtender)


def boot_extends(
    firmware_log: bytes, userspace_log: bytes = b""
) -> list[tuple[int, Mapping[str, bytes]]]:
    """(PCR, bank -> digest) in the order a machine booting with these logs extends them."""
    log = parse_event_log(firmware_log)
    extends: list[tuple[int, Mapping[str, bytes]]] = [
        (event.pcr, dict(event.digests))
        for event in log.events
        if event.event_type != EV_NO_ACTION and event.pcr < PCR_COUNT
    ]
    for record in parse_userspace_log(userspace_log):
        if record.pcr is not None and record.pcr < PCR_COUNT:
            extends.append((record.pcr, dict(record.digests)))
    return extends


@dataclass
class SimulatedNode(Generic[Tpm]):
    directory: Path
    chroot: ToolsChroot
    make_tpm: Callable[[Swtpm, Path], Tpm]  # (running swtpm, state dir) -> driver
    firmware_log: bytes = b""
    userspace_log: bytes = b""
    manufactured: bool = False  # swtpm_setup: persisted EKs and EK certificates (local CA)
    swtpm: Swtpm | None = field(default=None, init=False)
    driver: Tpm | None = field(default=None, init=False)

    @property
    def tpm(self) -> Tpm:
        if self.driver is None:
            raise AttestationError("the simulated node is not running")
        return self.driver

    @property
    def state_dir(self) -> Path:
        return self.directory / "agent"

    @property
    def firmware_log_path(self) -> Path:
        return self.directory / "binary_bios_measurements"

    @property
    def userspace_log_path(self) -> Path:
        return self.directory / "tpm2-measure.log"

    def boot(self) -> None:
        """Start the TPM and measure the logs into it; the logs are left where an agent
        configured for this node reads them."""
        extends = boot_extends(self.firmware_log, self.userspace_log)
        locality = startup_locality(parse_event_log(self.firmware_log)) or 0
        if self.manufactured:
            manufacture(self.chroot, self.directory / "tpm")
        self.swtpm = start_swtpm(self.chroot, self.directory / "tpm", locality=locality)
        self.driver = self.make_tpm(self.swtpm, self.state_dir)
        self.driver.extend(extends)
        self.firmware_log_path.write_bytes(self.firmware_log)
        self.userspace_log_path.write_bytes(self.userspace_log)

    def shutdown(self, *, orderly: bool = True) -> None:
        """Power off. Orderly as the kernel does it (TPM2_Shutdown first), or a power loss,
        which a TPM counts as a failed authorization attempt (dictionary-attack lockout)."""
        if self.swtpm is not None:
            if orderly:
                self.chroot.run(
                    ["tpm2_shutdown", "--clear"],
                    binds=[self.swtpm.directory],
                    env={"TPM2TOOLS_TCTI": self.swtpm.tcti},
                )
            self.swtpm.stop()
        self.swtpm = self.driver = None

    def reboot(
        self,
        firmware_log: bytes | None = None,
        userspace_log: bytes | None = None,
        *,
        orderly: bool = True,
    ) -> None:
        self.shutdown(orderly=orderly)
        if firmware_log is not None:
            self.firmware_log = firmware_log
        if userspace_log is not None:
            self.userspace_log = userspace_log
        self.boot()


@contextmanager
def simulated_node(
    chroot: ToolsChroot,
    directory: Path,
    make_tpm: Callable[[Swtpm, Path], Tpm],
    firmware_log: bytes,
    userspace_log: bytes = b"",
    *,
    manufactured: bool = False,
) -> Iterator[SimulatedNode[Tpm]]:
    """A booted simulated node for the duration of the block."""
    node = SimulatedNode(directory, chroot, make_tpm, firmware_log, userspace_log, manufactured)
    node.boot()
    try:
        yield node
    finally:
        node.shutdown()
