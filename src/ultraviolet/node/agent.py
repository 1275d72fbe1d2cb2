"""The node agent: enrol the node's AK with the verifier, then answer its challenges.

Enrolment (see docs/attest-agent.md for why credential activation):
  POST /v1/enrol {"node_id", "ek_public", "ek_certificate", "ak_public"} (base64 TPM2B_PUBLIC,
    DER or null) -> {"enrolment", "credential_blob", "encrypted_secret"} (MakeCredential to our
    EK for our AK's name);
  the TPM activates the credential (it does so only with that AK loaded under that EK);
  POST /v1/enrol/{enrolment}/activate {"secret"} proves it; the verifier now trusts the AK.
Attestation, every `interval` seconds:
  POST /v1/nodes/{node_id}/nonce -> {"nonce": hex, "expires_at"};
  a quote over the policy's PCRs with that nonce, the firmware event log, systemd's
  measurement log and the IPE audit records since the last accepted report;
  POST /v1/nodes/{node_id}/evidence {"nonce", "evidence"}.
When the verifier cannot be reached (or answers 5xx/408/429) the agent waits with exponential
backoff and full jitter (on top of the answer's Retry-After, if it has one), and keeps trying
forever: it is a plain service that nothing in boot waits for. HTTP is the standard library's
urllib, so the node needs no HTTP package.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import fcntl
import json
import logging
import random
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ultraviolet.errors import AttestationError, ToolError, UltravioletError
from ultraviolet.formats.evidence import Evidence
from ultraviolet.node.ipe import IpeSource
from ultraviolet.node.tpm import TpmDriver

log = logging.getLogger("ultraviolet.node.agent")

FIRMWARE_LOG = Path("/sys/kernel/security/tpm0/binary_bios_measurements")
USERSPACE_LOG = Path("/run/log/systemd/tpm2-measure.log")
RETRIABLE_STATUS = {408, 425, 429, 500, 502, 503, 504}
UNKNOWN_NODE_STATUS = {401, 403, 404}  # the verifier forgot us: enrol again


# A Retry-After beyond this is not followed: a mistaken or forged header must not silence a
# node for longer (the verifier marks it stale long before).
RETRY_AFTER_CAP = 3600.0


class VerifierUnavailable(AttestationError):
    """The verifier could not be reached or asked us to come back later (`retry_after`
    seconds, when it said so)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(message)


def retry_after_seconds(value: str | None, now: dt.datetime | None = None) -> float | None:
    """An HTTP Retry-After (RFC 9110 section 10.2.3: delay-seconds or an HTTP-date) in seconds
    from `now`, at most RETRY_AFTER_CAP; None when absent or unreadable (then the backoff
    alone decides)."""
    if value is None:
        return None
    text = value.strip()
    if text.isascii() and text.isdigit():
        return min(float(text), RETRY_AFTER_CAP)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000": RFC 5322's unknown zone, which HTTP dates are in UTC
        when = when.replace(tzinfo=dt.UTC)
    seconds = (when - (now or dt.datetime.now(dt.UTC))).total_seconds()
    return min(max(seconds, 0.0), RETRY_AFTER_CAP)


class VerifierRefused(AttestationError):
    """The verifier answered with a client error: retrying the same request will not help."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(document: Mapping[str, Any], key: str) -> bytes:
    value = document.get(key)
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        raise AttestationError(f"the verifier's {key!r} is not base64") from None


@dataclass
class VerifierClient:
    """JSON over HTTP(S) to the verifier."""

    base_url: str
    timeout: float = 30.0
    ca_file: Path | None = None  # the verifier's CA (PEM) instead of the system's

    def _tls(self) -> ssl.SSLContext | None:
        if self.ca_file is None:
            return None
        try:
            return ssl.create_default_context(cafile=str(self.ca_file))
        except (OSError, ssl.SSLError) as exc:
            raise AttestationError(f"CA file {self.ca_file}: {exc}") from None

    def post(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        url = self.base_url.rstrip("/") + path
        request = urllib.request.Request(
            url,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(
                request, timeout=self.timeout, context=self._tls()
            ) as response:
                payload = response.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:500].decode("utf-8", "replace")
            message = f"POST {url}: HTTP {exc.code}: {detail}"
            if exc.code in RETRIABLE_STATUS:
                wait = retry_after_seconds(exc.headers.get("Retry-After"))
                raise VerifierUnavailable(message, wait) from None
            raise VerifierRefused(exc.code, message) from None
        except (urllib.error.URLError, OSError) as exc:  # refused, reset, DNS, timeout
            raise VerifierUnavailable(f"POST {url}: {exc}") from None
        try:
            document = json.loads(payload or b"{}")
        except ValueError:
            raise AttestationError(f"POST {url}: the answer is not JSON") from None
        if not isinstance(document, dict):
            raise AttestationError(f"POST {url}: the answer is not a JSON object")
        return document


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with full jitter: attempt n waits uniformly in [0, min(cap,
    base * 2**n)], so a fleet that lost its verifier does not come back in lockstep."""

    base: float = 2.0
    cap: float = 300.0

    def delay(self, attempt: int, draw: Callable[[], float] = random.random) -> float:
        return float(draw() * min(self.cap, self.base * 2.0 ** min(attempt, 32)))


@dataclass
class AgentConfig:
    node_id: str
    verifier_url: str
    state_dir: Path
    pcrs: Mapping[str, Sequence[int]]  # bank -> PCRs to quote (the node policy's)
    ipe: IpeSource
    interval: float = 300.0
    firmware_log: Path = FIRMWARE_LOG
    userspace_log: Path = USERSPACE_LOG
    backoff: Backoff = field(default_factory=Backoff)
    http_timeout: float = 30.0
    ca_file: Path | None = None


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        tpm: TpmDriver,
        *,
        client: VerifierClient | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config
        self.tpm = tpm
        self.client = client or VerifierClient(
            config.verifier_url, config.http_timeout, config.ca_file
        )
        self.sleep = sleep

    @property
    def enrolment_file(self) -> Path:
        return self.config.state_dir / "enrolment.json"

    def interval_with_jitter(self, draw: Callable[[], float] = random.random) -> float:
        """The report interval +-10%: nodes started together (a fleet after a power cut) drift
        apart instead of challenging the verifier all at the same second."""
        return self.config.interval * (0.9 + 0.2 * draw())

    # Enrolment.

    def enrolled(self) -> bool:
        """Whether this state directory's AK was enrolled with this verifier as this node."""
        try:
            record = json.loads(self.enrolment_file.read_text())
        except (OSError, ValueError):
            return False
        wanted = {
            "node_id": self.config.node_id,
            "verifier_url": self.config.verifier_url,
            "ak_name": self.tpm.ak_public().name().hex(),
        }
        return isinstance(record, dict) and all(record.get(k) == v for k, v in wanted.items())

    def enrol(self) -> str:
        """Enrol (credential activation); the enrolment id."""
        try:
            ek_certificate = self.tpm.ek_certificate()
        except ToolError as exc:  # a certificate we cannot read is one the verifier lacks
            log.warning("cannot read the EK certificate, enrolling without it: %s", exc)
            ek_certificate = None
        request = {
            "node_id": self.config.node_id,
            "ek_public": _b64(self.tpm.ek_public()),
            "ek_certificate": _b64(ek_certificate) if ek_certificate else None,
            "ak_public": _b64(self.tpm.ensure_ak()),
        }
        challenge = self.client.post("/v1/enrol", request)
        enrolment = challenge.get("enrolment")
        if not isinstance(enrolment, str) or not enrolment or "/" in enrolment:
            raise AttestationError(f"the verifier's enrolment id {enrolment!r} is not usable")
        secret = self.tpm.activate_credential(
            _unb64(challenge, "credential_blob"), _unb64(challenge, "encrypted_secret")
        )
        self.client.post(f"/v1/enrol/{enrolment}/activate", {"secret": _b64(secret)})
        record = {
            "node_id": self.config.node_id,
            "verifier_url": self.config.verifier_url,
            "ak_name": self.tpm.ak_public().name().hex(),
            "enrolment": enrolment,
        }
        self.enrolment_file.write_text(json.dumps(record, indent=2) + "\n")
        log.info("enrolled %s as enrolment %s", self.config.node_id, enrolment)
        return enrolment

    # Attestation.

    def collect_evidence(self, nonce: bytes) -> tuple[Evidence, str]:
        """Evidence for `nonce`, and the IPE cursor to commit once the verifier has it."""
        ipe_events, cursor = self.config.ipe.collect()
        quote = self.tpm.quote(self.config.pcrs, nonce)
        evidence = Evidence(
            quote=quote.message,
            signature=quote.signature,
            pcrs=quote.pcrs,
            firmware_log=_read_log(self.config.firmware_log, required=True),
            userspace_log=_read_log(self.config.userspace_log, required=False),
            ipe_events=ipe_events,
        )
        return evidence, cursor

    def attest_once(self) -> dict[str, Any]:
        """One challenge answered; the verifier's answer to the evidence."""
        node = self.config.node_id
        challenge = self.client.post(f"/v1/nodes/{node}/nonce", {})
        try:
            nonce = bytes.fromhex(str(challenge.get("nonce")))
        except ValueError:
            raise AttestationError("the verifier's nonce is not hex") from None
        if not 8 <= len(nonce) <= 32:
            raise AttestationError(f"a {len(nonce)}-byte nonce (8 to 32 expected)")
        evidence, cursor = self.collect_evidence(nonce)
        body = {"nonce": nonce.hex(), "evidence": evidence.to_json()}
        answer = self.client.post(f"/v1/nodes/{node}/evidence", body)
        self.config.ipe.commit(cursor)
        self._record_report(answer)
        log.info("evidence accepted: %s", answer.get("state", answer))
        return answer

    @property
    def report_file(self) -> Path:
        return self.config.state_dir / "last-report.json"

    def _record_report(self, answer: Mapping[str, Any]) -> None:
        """The verifier's last answer and how many reports it took, for the node's operators
        (and the VM test's checker, which waits on it): written whole, then renamed."""
        try:
            previous = json.loads(self.report_file.read_text()).get("reports", 0)
        except (OSError, ValueError, AttributeError):
            previous = 0
        reports = previous + 1 if isinstance(previous, int) else 1
        record = {"reports": reports, "time": time.time(), "answer": dict(answer)}
        staged = self.report_file.with_suffix(".tmp")
        staged.write_text(json.dumps(record, sort_keys=True) + "\n")
        staged.replace(self.report_file)

    def step(self) -> dict[str, Any]:
        """Enrol if needed, then attest; a verifier that forgot the node gets it enrolled again.
        One agent at a time per state directory (`uvctl agent --once` beside the service)."""
        with _exclusive(self.config.state_dir / "agent.lock"):
            if not self.enrolled():
                self.enrol()
            try:
                return self.attest_once()
            except VerifierRefused as exc:
                if exc.status not in UNKNOWN_NODE_STATUS:
                    raise
                log.warning(
                    "the verifier does not know this node (%s): enrolling again", exc.status
                )
                self.enrolment_file.unlink(missing_ok=True)
                self.enrol()
                return self.attest_once()

    def run(self, *, cycles: int | None = None) -> None:
        """Attest every `interval` seconds (forever, or `cycles` successful reports), backing
        off while the verifier is away. Errors never end the loop: a node that cannot attest
        is what the verifier reports as stale, and the agent keeps trying."""
        done = failures = 0
        while cycles is None or done < cycles:
            try:
                self.step()
            except VerifierUnavailable as exc:
                failures += 1
                # What the verifier asked for, plus the jittered backoff: a fleet told the
                # same Retry-After must not come back in the same second.
                wait = (exc.retry_after or 0.0) + self.config.backoff.delay(failures)
                log.warning("verifier unavailable (%s); retrying in %.1f s", exc, wait)
                self.sleep(wait)
                continue
            except UltravioletError as exc:
                failures += 1
                wait = self.config.backoff.delay(failures)
                log.error("attestation failed: %s; retrying in %.1f s", exc, wait)
                self.sleep(wait)
                continue
            done += 1
            failures = 0
            if cycles is None or done < cycles:
                self.sleep(self.interval_with_jitter())


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` for the block; AttestationError if another process has it
    (the caller's loop retries later)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AttestationError(f"another agent is working on {path.parent}") from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_log(path: Path, *, required: bool) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        if required:
            raise AttestationError(f"no firmware event log at {path}") from None
        return b""
    except OSError as exc:
        raise AttestationError(f"cannot read {path}: {exc}") from exc


def pcr_selection(pcrs: Sequence[int], banks: Sequence[str] = ("sha256",)) -> dict[str, list[int]]:
    """The quote selection for the policy's PCRs in each bank."""
    return {bank: sorted(set(pcrs)) for bank in banks}
