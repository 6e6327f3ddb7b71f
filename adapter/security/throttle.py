"""Counting refused attempts at the token endpoint, per client and per address: past the limit
within a minute, the caller is told to wait (429 with Retry-After)."""

import math
import threading
import time
from collections import deque
from collections.abc import Callable

from adapter.errors import TooManyRequests

WINDOW_SECONDS = 60.0


class FailureThrottle:
    """In memory, per process: a service run as several processes counts in each."""

    def __init__(self, limit: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.clock = clock
        self.failures: dict[str, deque[float]] = {}
        self.lock = threading.Lock()

    def _recent(self, key: str, now: float) -> deque[float]:
        """The key's failures within the window (an empty one is not kept)."""
        found = self.failures.get(key, deque())
        while found and found[0] <= now - WINDOW_SECONDS:
            found.popleft()
        if not found:
            self.failures.pop(key, None)
        return found

    def check(self, *keys: str) -> None:
        """Raise TooManyRequests when any key has failed `limit` times within the window."""
        now = self.clock()
        with self.lock:
            for key in keys:
                recent = self._recent(key, now)
                if len(recent) >= self.limit:
                    wait = max(1, math.ceil(recent[0] + WINDOW_SECONDS - now))
                    raise TooManyRequests(
                        "too many refused client assertions; wait before trying again",
                        retry_after=wait,
                    )

    def failed(self, *keys: str) -> None:
        now = self.clock()
        with self.lock:
            if len(self.failures) > 100_000:
                self.failures.clear()
            for key in keys:
                recent = self._recent(key, now)
                recent.append(now)
                self.failures[key] = recent
