"""Our evidence in Keylime's input forms (benchmarks/keylime_compare.py) is accepted by Keylime
7.14.3's verifier code (Tpm.check_quote, run in its own venv with its measured-boot parsing
through tpm2_eventlog), and every forgery is refused, each for its own reason: the
comparison of the two verifiers means something only if both decide the same.

Skips only when Keylime cannot be installed for lack of network (PyPI unreachable).
"""

from __future__ import annotations

import importlib.util
import struct
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCHMARK = Path(__file__).resolve().parents[2] / "benchmarks" / "keylime_compare.py"


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("keylime_compare", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being created
    spec.loader.exec_module(module)
    return module


compare = _load_benchmark()

# What refuses each forgery in Keylime (event ids as Keylime spells them).
EXPECTED_REFUSALS = {
    "flipped PCR 7 value": "qoute_validation.quote_validation",  # pcrDigest mismatch
    "bad signature": "pcr_validation.missing_pcrs",  # see test_bad_signature_...
    "foreign UKI": "measured_boot.policy_ultraviolet-uki",
    "Secure Boot off": "measured_boot.policy_ultraviolet-uki",
    "another node's firmware log": "measured_boot.invalid_pcr_1",
}


@pytest.fixture(scope="module")
def fleet() -> Any:
    return compare.simulated_fleet(2)


@pytest.fixture(scope="module")
def keylime(fleet: Any) -> dict[str, Any]:
    try:
        python = compare.keylime_python()
    except compare.KeylimeUnavailable as error:
        if error.offline:
            pytest.skip(f"Keylime cannot be installed without PyPI: {error}")
        raise
    checks = {"genuine": fleet.nodes[0], **fleet.forgeries}
    result: dict[str, Any] = compare.run_keylime(python, fleet, checks, 1, 1)
    return result


def test_pcr_blob_is_tpm2_tools_layout(fleet: Any) -> None:
    evidence = fleet.nodes[0].evidence
    blob = compare.pcr_blob(evidence)
    quoted = sorted(evidence.pcrs["sha256"])
    chunks = (len(quoted) + 7) // 8
    assert len(blob) == 4 + 16 * 8 + 4 + chunks * (4 + 8 * 66)
    count, algorithm, size = struct.unpack_from("<IHB", blob)
    assert (count, algorithm, size) == (1, 0x000B, 3)
    bitmap = int.from_bytes(blob[7:10], "little")
    assert [pcr for pcr in range(24) if bitmap >> pcr & 1] == quoted
    first = 4 + 16 * 8 + 4 + 4  # the first TPM2B_DIGEST of the first TPML_DIGEST
    assert blob[first : first + 2] == struct.pack("<H", 32)
    assert blob[first + 2 : first + 34] == evidence.pcrs["sha256"][quoted[0]]


@pytest.mark.oracle
def test_keylime_accepts_genuine_evidence(keylime: dict[str, Any]) -> None:
    assert keylime["verdicts"]["genuine"]["failures"] == []
    assert keylime["bare"]["genuine"]["failures"] == []


@pytest.mark.oracle
@pytest.mark.parametrize("forgery", sorted(EXPECTED_REFUSALS))
def test_keylime_refuses_forgery(keylime: dict[str, Any], forgery: str) -> None:
    assert EXPECTED_REFUSALS[forgery] in keylime["verdicts"][forgery]["failures"]


@pytest.mark.oracle
def test_flipped_pcr_refused_by_the_quote_check_alone(keylime: dict[str, Any]) -> None:
    failures = keylime["bare"]["flipped PCR 7 value"]["failures"]
    assert failures == ["qoute_validation.quote_validation"]


@pytest.mark.oracle
def test_bad_signature_leaves_keylime_no_pcrs(keylime: dict[str, Any]) -> None:
    """Keylime 7.14.3 turns the failed signature check into an error string, str() of
    InvalidSignature, which is empty: check_quote goes on with no PCRs at all. With an
    allowlist or a boot policy the missing PCRs refuse the quote; with neither it passes. The
    benchmark prints this beside its verdicts; here it documents why the refusal above is
    missing_pcrs rather than a signature failure."""
    assert keylime["bare"]["bad signature"]["failures"] == []
    assert "measured_boot.missing_pcrs" in keylime["verdicts"]["bad signature"]["failures"]


@pytest.mark.oracle
def test_timings_reported(keylime: dict[str, Any]) -> None:
    full = keylime["timings"]["full"]
    assert full["python"] > 0 and full["tpm2_eventlog"] > 0  # the boot log was parsed
