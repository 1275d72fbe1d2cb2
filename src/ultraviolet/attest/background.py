"""The maintenance loops every worker runs: mark silent nodes stale and prune old nonces; deliver
due alerts. Two threads, so that a slow alert sink never delays stale detection.

Both are safe to run in several workers at once (conditional updates and leases in the store),
so there is no leader to elect.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from ultraviolet.attest.alerts import Dispatcher
from ultraviolet.attest.metrics import Metrics
from ultraviolet.attest.service import Verifier

log = logging.getLogger("ultraviolet.attest.background")


def state_step(verifier: Verifier, metrics: Metrics) -> None:
    metrics.stale.inc(len(verifier.mark_stale()))
    verifier.prune_nonces()


def delivery_step(dispatcher: Dispatcher, metrics: Metrics) -> None:
    delivered, failed = dispatcher.run_once()
    metrics.alerts.labels("delivered").inc(delivered)
    metrics.alerts.labels("failed").inc(failed)


def _loop(name: str, step: Callable[[], None], interval: float, stopping: threading.Event) -> None:
    while not stopping.is_set():
        try:
            step()
        except Exception:  # the database may be away for a while: log, try again
            log.exception("%s step failed", name)
        stopping.wait(interval)


def start_maintenance(
    verifier: Verifier, metrics: Metrics, *, interval: float = 1.0
) -> Callable[[], None]:
    """Run both steps every `interval` seconds in background threads; returns `stop`."""
    stopping = threading.Event()
    dispatcher = Dispatcher(verifier.store)
    steps: dict[str, Callable[[], None]] = {
        "state": lambda: state_step(verifier, metrics),
        "delivery": lambda: delivery_step(dispatcher, metrics),
    }
    threads = [
        threading.Thread(
            target=_loop, args=(name, step, interval, stopping), name=f"attest-{name}", daemon=True
        )
        for name, step in steps.items()
    ]
    for thread in threads:
        thread.start()

    def stop() -> None:
        stopping.set()
        for thread in threads:
            thread.join(timeout=10)
        dispatcher.close()

    return stop
