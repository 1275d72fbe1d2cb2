"""The agent as the image's service runs it: `python3 -m ultraviolet.node.service`.

The image carries only what this needs (errors, tools, formats, node: the standard library and
pyca/cryptography, which Debian packages), not the build or verifier code. Its configuration is
rendered from the node policy into /usr (build/agent.py):

    /usr/lib/ultraviolet/agent.json {"verifier_url", "pcrs", "banks", "interval"}

and the verifier URL can be replaced at boot by the system credential `ultraviolet.verifier-url`
(the unit imports it into $CREDENTIALS_DIRECTORY): one fleet image, each site its verifier. The
credential `ultraviolet.report-interval` (whole seconds, 5 to 86400 as the policy allows) replaces
the report interval; a bad value is logged and the policy's interval kept (the agent still runs:
a wrong interval is no reason to stop attesting).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from ultraviolet.errors import AttestationError, UltravioletError
from ultraviolet.node.agent import Agent, AgentConfig, pcr_selection
from ultraviolet.node.ipe import JournalSource
from ultraviolet.node.tpm import DEFAULT_TCTI, TpmDriver

CONFIG_FILE = Path("/usr/lib/ultraviolet/agent.json")
STATE_DIR = Path("/var/lib/ultraviolet/agent")
MACHINE_ID = Path("/etc/machine-id")
VERIFIER_CREDENTIAL = "ultraviolet.verifier-url"
INTERVAL_CREDENTIAL = "ultraviolet.report-interval"
# The policy's bounds for [attestation] report_interval (policy/schema.py): faster floods the
# verifier, slower than a day is no attestation.
INTERVAL_BOUNDS = (5, 86400)
BANKS = ("sha1", "sha256", "sha384", "sha512")

log = logging.getLogger("ultraviolet.node.service")


@dataclass(frozen=True)
class ServiceConfig:
    verifier_url: str
    pcrs: tuple[int, ...]
    banks: tuple[str, ...]
    interval: float


def parse_config(text: str, where: str = str(CONFIG_FILE)) -> ServiceConfig:
    """The rendered agent.json; AttestationError naming the field that is wrong."""
    try:
        document = json.loads(text)
    except ValueError as exc:
        raise AttestationError(f"{where}: not JSON: {exc}") from None
    if not isinstance(document, dict):
        raise AttestationError(f"{where}: expected a JSON object")
    url = document.get("verifier_url", "")
    pcrs = document.get("pcrs")
    banks = document.get("banks", ["sha256"])
    interval = document.get("interval", 300)
    if not isinstance(url, str):
        raise AttestationError(f"{where}: verifier_url must be a string")
    if not isinstance(pcrs, list) or not pcrs or not all(_is_pcr(p) for p in pcrs):
        raise AttestationError(f"{where}: pcrs must be a non-empty list of integers 0-23")
    if not isinstance(banks, list) or not banks or not all(b in BANKS for b in banks):
        raise AttestationError(f"{where}: banks must be a non-empty list from {BANKS}")
    if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval <= 0:
        raise AttestationError(f"{where}: interval must be a positive number of seconds")
    return ServiceConfig(url, tuple(pcrs), tuple(banks), float(interval))


def _is_pcr(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 23


def _credential(name: str, environ: Mapping[str, str]) -> str:
    """The credential's stripped text; '' if the unit was given none."""
    directory = environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return ""
    try:
        return (Path(directory) / name).read_text().strip()
    except FileNotFoundError:
        return ""
    except (OSError, UnicodeDecodeError) as exc:
        raise AttestationError(f"credential {name}: {exc}") from exc


def verifier_url(config: ServiceConfig, environ: Mapping[str, str]) -> str:
    """The credential's URL if the unit was given one, else the policy's."""
    override = _credential(VERIFIER_CREDENTIAL, environ)
    if override:
        if not override.startswith(("http://", "https://")) or any(c.isspace() for c in override):
            raise AttestationError(
                f"credential {VERIFIER_CREDENTIAL}: {override!r} is not an http(s) URL"
            )
        return override
    if not config.verifier_url:
        raise AttestationError(
            f"no verifier: the policy has no verifier_url and no {VERIFIER_CREDENTIAL} credential"
        )
    return config.verifier_url


def report_interval(config: ServiceConfig, environ: Mapping[str, str]) -> float:
    """The credential's interval if the unit was given a valid one, else the policy's. A bad
    credential is logged and ignored: it must not keep the node from attesting."""
    try:
        text = _credential(INTERVAL_CREDENTIAL, environ)
    except AttestationError as exc:
        log.warning("%s; keeping the policy's report interval %.0f s", exc, config.interval)
        return config.interval
    if not text:
        return config.interval
    low, high = INTERVAL_BOUNDS
    if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
        log.warning(
            "credential %s: %r is not a whole number of seconds from %d to %d; keeping the "
            "policy's report interval %.0f s",
            INTERVAL_CREDENTIAL, text[:40], low, high, config.interval,
        )  # fmt: skip
        return config.interval
    return float(int(text))


def make_agent(
    config: ServiceConfig, url: str, node_id: str, state_dir: Path, tcti: str = DEFAULT_TCTI
) -> Agent:
    state_dir.mkdir(parents=True, exist_ok=True)
    agent_config = AgentConfig(
        node_id=node_id,
        verifier_url=url,
        state_dir=state_dir,
        pcrs=pcr_selection(config.pcrs, config.banks),
        ipe=JournalSource(state_dir),
        interval=config.interval,
    )
    return Agent(agent_config, TpmDriver(state_dir, tcti=tcti))


def agent_from_files(
    config_file: Path,
    state_dir: Path,
    environ: Mapping[str, str],
    *,
    tcti: str = DEFAULT_TCTI,
    machine_id: Path = MACHINE_ID,
) -> Agent:
    """The agent as the unit configures it: the policy's agent.json, then the credentials."""
    try:
        config = parse_config(config_file.read_text(), str(config_file))
        node_id = machine_id.read_text().strip()
    except OSError as exc:
        raise AttestationError(f"cannot read {exc.filename}: {exc.strerror}") from None
    url = verifier_url(config, environ)
    config = replace(config, interval=report_interval(config, environ))
    log.info("reporting to %s as %s every %.0f s", url, node_id, config.interval)
    return make_agent(config, url, node_id, state_dir, tcti)


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    parser = argparse.ArgumentParser(prog="ultraviolet-agent", description=__doc__)
    parser.add_argument("--config", type=Path, default=CONFIG_FILE)
    parser.add_argument("--state-dir", type=Path, default=STATE_DIR)
    parser.add_argument("--tcti", default=DEFAULT_TCTI)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        agent_from_files(args.config, args.state_dir, environ, tcti=args.tcti).run()
    except UltravioletError as exc:
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
