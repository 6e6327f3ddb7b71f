"""Event-driven delivery: a record accepted wakes the mapping, a resource queued wakes the sync,
each a thread that folds the wakes of a burst into one pass."""

import logging
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)
BUSY_RETRY_SECONDS = 1.0
"""How soon a pass that found another process at the work (the sync's lease) is tried again."""


class Wakeup:
    """A thread that runs `work` soon after `pulse()`. Pulses are folded: those that come while
    it gathers (`gather` seconds after the first) or works make one more pass after it, never
    one pass each, and nothing is logged per pulse. `work` answers True when it could not do
    its work now (another process holds the lease): it is tried again shortly."""

    def __init__(self, name: str, work: Callable[[], bool], gather: float) -> None:
        self.name = name
        self.work = work
        self.gather = gather
        self._pulsed = threading.Event()
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def pulse(self) -> None:
        """There is work: a pass follows soon (cheap, and safe from any thread)."""
        self._pulsed.set()

    def stop(self) -> None:
        """Stop after the pass under way, if any."""
        self._stop.set()
        self._pulsed.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while True:
            self._pulsed.wait()
            if self._stop.wait(self.gather):
                return
            self._pulsed.clear()
            if self._stop.is_set():
                # `stop` came between the gather and the clear, which took its pulse back: the
                # wait above would never end.
                return
            if self._pass():
                if self._stop.wait(BUSY_RETRY_SECONDS):
                    return
                self._pulsed.set()

    def _pass(self) -> bool:
        try:
            again = self.work()
        except Exception as exc:  # the store is down, say: the schedule tries again
            if not self._failing:
                log.error("%s failed: %s; the schedule tries again", self.name, type(exc).__name__)
            self._failing = True
            return False
        self._failing = False
        return again
