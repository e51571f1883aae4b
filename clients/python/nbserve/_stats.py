"""Where a trainer's time goes: waiting for batches, or working between them ("data stall")."""

from __future__ import annotations

import bisect
import math
import time
from typing import Any

# Bucket bounds for the wait quantiles of ``stats()``: 10 µs to 100 s, 5% apart, so a quantile is within 5% of
# the exact one while memory and time stay constant however long the loader runs.
_RATIO = 1.05
_BOUNDS = [1e-5 * _RATIO ** k for k in range(int(math.log(1e7) / math.log(_RATIO)) + 2)]


class Timing:
    """One loader's timing, measured where the waiting happens: a batch's wait runs from the moment the
    trainer asks for it (the iterator resumes) until it is handed over; the time from then until the next
    ask is the trainer's own (busy). Waits and busy time are also kept pending for the daemon, which gets
    them with the next acknowledgement (at least once a second while the trainer iterates)."""

    REPORT_INTERVAL_S = 1.0

    def __init__(self) -> None:
        self.reset()
        self._pending_waits: list[float] = []
        self._pending_busy = 0.0
        self._last_report = time.monotonic()
        self._asked: float | None = None   # when the trainer asked for the batch it waits for
        self._handed: float | None = None  # when the trainer got its last batch (busy since then)

    def reset(self) -> None:
        """Starts a new window for ``stats()``."""
        self.batches = 0
        self.frames = 0
        self.bytes = 0
        self.wait_s = 0.0
        self.busy_s = 0.0
        self._counts = [0] * (len(_BOUNDS) + 1)
        self._max_wait: float | None = None
        self._last_wait: float | None = None  # the last batch's wait (counted once the trainer asks again)
        self._since = time.monotonic()

    def _count(self) -> None:
        """The last batch's wait is final: into the histogram."""
        if self._last_wait is None:
            return
        wait, self._last_wait = self._last_wait, None
        self._counts[bisect.bisect_left(_BOUNDS, wait)] += 1
        self._max_wait = wait if self._max_wait is None else max(self._max_wait, wait)

    def asked(self) -> None:
        """The trainer asks for the next batch."""
        self._count()
        now = time.monotonic()
        if self._handed is not None:
            busy = now - self._handed
            self.busy_s += busy
            self._pending_busy += busy
            self._handed = None
        if self._asked is None:
            self._asked = now

    def handed(self, frames: int, nbytes: int) -> None:
        """A batch is handed to the trainer."""
        now = time.monotonic()
        wait = now - (self._asked if self._asked is not None else now)
        self._asked = None
        self._handed = now
        self.batches += 1
        self.frames += frames
        self.bytes += nbytes
        self.wait_s += wait
        self._last_wait = wait
        self._pending_waits.append(wait)

    def extend_wait(self) -> None:
        """The time since the last hand-over was still the loader's (a wrapper converting or copying the
        batch before its trainer gets it): it counts as that batch's wait, not as the trainer's."""
        if self._handed is None:
            return
        now = time.monotonic()
        extra = now - self._handed
        self._handed = now
        self.wait_s += extra
        if self._last_wait is not None:
            self._last_wait += extra
        if self._pending_waits:
            self._pending_waits[-1] += extra

    def idle(self) -> None:
        """The epoch ended: nothing is asked for or worked on until the next one."""
        self._count()
        self._asked = self._handed = None

    def has_pending(self) -> bool:
        return bool(self._pending_waits) or self._pending_busy > 0

    def report_due(self) -> bool:
        return bool(self._pending_waits) and time.monotonic() - self._last_report >= self.REPORT_INTERVAL_S

    def pending(self) -> dict[str, Any]:
        """The `wait_s` and `busy_s` of the next ack (docs/protocol.md section 5)."""
        return {"wait_s": [round(wait, 6) for wait in self._pending_waits], "busy_s": round(self._pending_busy, 6)}

    def reported(self) -> None:
        """The daemon took what ``pending()`` gave."""
        self._pending_waits.clear()
        self._pending_busy = 0.0
        self._last_report = time.monotonic()

    def stats(self) -> dict[str, Any]:
        counts = list(self._counts)
        top = self._max_wait
        if self._last_wait is not None:  # the batch in the trainer's hands
            counts[bisect.bisect_left(_BOUNDS, self._last_wait)] += 1
            top = self._last_wait if top is None else max(top, self._last_wait)
        total_count = sum(counts)

        def quantile(q: float) -> float | None:
            """The upper bound of the bucket holding the q-th wait (never above the longest wait)."""
            if not total_count or top is None:
                return None
            rank, seen = max(1, math.ceil(q * total_count)), 0
            for index, count in enumerate(counts):
                seen += count
                if seen >= rank:
                    return min(_BOUNDS[index], top) if index < len(_BOUNDS) else top
            return top

        total = self.wait_s + self.busy_s
        return {
            "batches": self.batches, "frames": self.frames, "bytes": self.bytes,
            "wait_s": self.wait_s, "busy_s": self.busy_s, "stall": self.wait_s / total if total > 0 else None,
            "wait_p50_s": quantile(0.5), "wait_p90_s": quantile(0.9), "wait_p99_s": quantile(0.99),
            "wait_max_s": top, "interval_s": time.monotonic() - self._since,
        }
