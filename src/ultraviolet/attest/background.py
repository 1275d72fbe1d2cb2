"""The maintenance loop every worker runs: mark silent nodes stale, deliver due alerts.

Both steps are safe to run in several workers at once (conditional updates and leases in the
store), so there is no leader to elect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ultraviolet.attest.alerts import Dispatcher
from ultraviolet.attest.metrics import Metrics
from ultraviolet.attest.service import Verifier

log = logging.getLogger("ultraviolet.attest.background")


def maintenance_step(verifier: Verifier, dispatcher: Dispatcher, metrics: Metrics) -> None:
    stale = verifier.mark_stale()
    metrics.stale.inc(len(stale))
    verifier.prune_nonces()
    delivered, failed = dispatcher.run_once()
    metrics.alerts.labels("delivered").inc(delivered)
    metrics.alerts.labels("failed").inc(failed)


def start_maintenance(
    verifier: Verifier, metrics: Metrics, *, interval: float = 1.0
) -> Callable[[], None]:
    """Run the maintenance step every `interval` seconds in a thread; returns `stop`."""
    stopping = threading.Event()
    dispatcher = Dispatcher(verifier.store)

    def loop() -> None:
        while not stopping.is_set():
            try:
                maintenance_step(verifier, dispatcher, metrics)
            except Exception:  # the database may be away for a while: log, try again
                log.exception("maintenance step failed")
            stopping.wait(interval)

    thread = threading.Thread(target=loop, name="attest-maintenance", daemon=True)
    thread.start()

    def stop() -> None:
        stopping.set()
        thread.join(timeout=10)
        dispatcher.close()

    return stop
