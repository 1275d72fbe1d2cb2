"""Keylime's side of benchmarks/keylime_compare.py: runs under the Python of Keylime's own venv
(never imports ultraviolet), started by keylime_compare.py with a job on stdin; answers JSON on
stdout.

It drives Keylime's verifier code path as the verifier runs it for one attestation:
`keylime.tpm.tpm_main.Tpm().check_quote` (quote signature, nonce, pcrDigest over the PCR blob,
PCR allowlist, measured boot: `tpm2_eventlog` parses the boot log, its replayed PCRs are compared
with the quote, and the parsed log is evaluated against a measured-boot policy and its refstate).

Keylime's bundled "example" policy describes a shim + GRUB boot; our nodes boot systemd-boot and
a UKI. So a policy for that boot is registered here, written with Keylime's own policy test
combinators (keylime.mba.elchecking.tests), exactly as a site would add one through the
verifier's `measured_boot_imports`: Secure Boot on, PK/KEK/db only the refstate's certificates,
the image that verified the boot loader a db entry of ours, PCR 4 = exactly [accepted
systemd-boot, accepted UKI of the same release], the spec's EV_EFI_ACTION and EV_SEPARATOR
events, everything else of PCR 0-7 accepted if it replays. The final PCR 11 value goes through
Keylime's PCR allowlist (tpm_policy), since the boot log does not hold systemd's userspace
extensions of it.
"""

from __future__ import annotations

import json
import logging
import resource
import sys
import time
import types
from typing import Any

POLICY_NAME = "ultraviolet-uki"
EFI_GLOBAL = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
IMAGE_SECURITY = "d719b2cb-3d3a-4596-a3bc-dad00e67656f"
X509_TYPE = "a5c059a1-94e4-4aa7-87b5-ab155c2bf072"


def _gpg_placeholder() -> None:
    """keylime.signing imports the GPGME bindings at module level (for signed runtime policies,
    not used here); they are no PyPI wheel. A module that has nothing stands in, so any use of
    it would fail loudly rather than pass."""
    try:
        import gpg  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        sys.modules["gpg"] = types.ModuleType("gpg")


def _uki_policy() -> Any:
    from keylime.mba.elchecking import policies, tests  # type: ignore[import-not-found]

    class UkiPolicy(policies.Policy):  # type: ignore[misc]
        def get_relevant_pcrs(self) -> frozenset[int]:
            return frozenset(range(8))

        def refstate_to_test(self, refstate: Any) -> Any:
            chains = tests.Or(
                *(
                    tests.FieldsTest(
                        applications=tests.TupleTest(
                            tests.DigestTest({"sha256": chain["boot_loader"]}),
                            tests.DigestTest({"sha256": chain["uki"]}),
                        )
                    )
                    for chain in refstate["boot_chains"]
                )
            )
            delayed = tests.DelayToFields(chains, "applications")
            dispatcher = tests.Dispatcher(("PCRIndex", "EventType"))
            _firmware_events(tests, dispatcher)
            _secure_boot_events(tests, dispatcher, refstate)
            dispatcher.set((4, "EV_EFI_BOOT_SERVICES_APPLICATION"), delayed.get("applications"))
            events = tests.And(
                delayed.get_initializer(), tests.IterateTest(dispatcher, show_elt=True), delayed
            )
            return tests.FieldTest("events", events, show_name=False)

    policies.register(POLICY_NAME, UkiPolicy())


def _firmware_events(tests: Any, dispatcher: Any) -> None:
    """What PCR 0-2 and 5 hold: accepted as long as they replay (as our appraisal does)."""
    dispatcher.set((0, "EV_NO_ACTION"), tests.AcceptAll())
    for pcr, kind in (
        (0, "EV_S_CRTM_VERSION"),
        (0, "EV_EFI_PLATFORM_FIRMWARE_BLOB"),
        (0, "EV_POST_CODE"),
        (1, "EV_EFI_HANDOFF_TABLES2"),
        (1, "EV_EFI_PLATFORM_FIRMWARE_BLOB2"),
        (1, "EV_EFI_VARIABLE_BOOT"),
        (2, "EV_EFI_BOOT_SERVICES_DRIVER"),
        (5, "EV_EFI_GPT_EVENT"),
        (5, "EV_EVENT_TAG"),
        (11, "EV_IPL"),
    ):
        dispatcher.set((pcr, kind), tests.AcceptAll())
    for pcr in (4, 5):
        dispatcher.set((pcr, "EV_EFI_ACTION"), tests.EvEfiActionTest(pcr))
    for pcr in range(8):
        dispatcher.set((pcr, "EV_SEPARATOR"), tests.EvSeperatorTest())


def _non_empty(tests: Any) -> Any:
    """An empty key database passes KeySubset (nothing in it is foreign); ours refuses it."""

    class NonEmpty(tests.Test):  # type: ignore[misc]
        def why_not(self, globs: Any, subject: Any) -> str:
            return "" if subject else "is empty"

    return NonEmpty()


def _secure_boot_events(tests: Any, dispatcher: Any, refstate: Any) -> None:
    config = tests.VariableDispatch()
    enabled = tests.FieldTest("Enabled", tests.StringEqual("Yes"))
    config.set(EFI_GLOBAL, "SecureBoot", tests.OnceTest(enabled))
    for owner, name, role in (
        (EFI_GLOBAL, "PK", "pk"),
        (EFI_GLOBAL, "KEK", "kek"),
        (IMAGE_SECURITY, "db", "db"),
    ):
        keys = tests.KeySubset(X509_TYPE, refstate[role])
        config.set(owner, name, tests.OnceTest(tests.And(_non_empty(tests), keys)))
    config.set(IMAGE_SECURITY, "dbx", tests.OnceTest(tests.AcceptAll()))
    dispatcher.set((7, "EV_EFI_VARIABLE_DRIVER_CONFIG"), config)
    authority = tests.VariableDispatch()
    signer = tests.IterateTest(tests.SignatureSetMember(refstate["db"]))
    authority.set(IMAGE_SECURITY, "db", signer)
    dispatcher.set((7, "EV_EFI_VARIABLE_AUTHORITY"), authority)


def _cpu() -> tuple[float, float]:
    """(this process, its waited-for children: tpm2_eventlog) CPU seconds, to the microsecond."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def main() -> int:
    job = json.load(sys.stdin)
    _gpg_placeholder()
    logging.disable(logging.CRITICAL)  # the service logs each check at INFO; spare it that cost
    from keylime.common.algorithms import Hash  # type: ignore[import-not-found]
    from keylime.mba import mba  # type: ignore[import-not-found]
    from keylime.tpm.tpm_main import Tpm  # type: ignore[import-not-found]

    mba.load_imports(skip_custom_policies=True)
    _uki_policy()
    tpm = Tpm()
    refstate = json.dumps(job["refstate"])

    def verify(case: dict[str, Any], with_log: bool = True, allowlist: bool = True) -> Any:
        return tpm.check_quote(
            None,
            case["nonce"],  # base64, as check_quote itself turns bytes nonces into
            None,
            case["quote"],
            case["ak"],
            tpm_policy=job["tpm_policy"] if allowlist else {},
            hash_alg=Hash.SHA256,
            mb_measurement_list=case["boot_log"] if with_log else None,
            mb_policy=refstate if with_log else None,
            mb_policy_name=POLICY_NAME if with_log else "accept-all",
            count=0,
        )

    verdicts = {
        name: {"failures": verify(case).get_event_ids()} for name, case in job["checks"].items()
    }
    # The quote check alone (no allowlist, no boot log): what the signature check decides.
    bare = {
        name: {"failures": verify(case, False, False).get_event_ids()}
        for name, case in job["checks"].items()
    }
    nodes = job["nodes"]
    timings: dict[str, dict[str, float]] = {}
    for _ in range(job["rounds"]):
        for label, with_log in (("full", True), ("no_boot_log", False)):
            own, children = _cpu()
            wall = time.perf_counter()
            for number in range(job["iterations"]):
                verify(nodes[number % len(nodes)], with_log)
            own_after, children_after = _cpu()
            sample = {
                "python": (own_after - own) / job["iterations"],
                "tpm2_eventlog": (children_after - children) / job["iterations"],
                "wall": (time.perf_counter() - wall) / job["iterations"],
            }
            best = timings.get(label)
            total = sample["python"] + sample["tpm2_eventlog"]
            if best is None or total < best["python"] + best["tpm2_eventlog"]:
                timings[label] = sample
    json.dump({"verdicts": verdicts, "bare": bare, "timings": timings}, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
