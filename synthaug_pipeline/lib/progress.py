"""Progress lines a person can plan by: how far, how long left, when it will be done."""

from __future__ import annotations

import time

REPORT_SECONDS = 30.0  # a long loop reports at least this often, whatever its step count


def duration(seconds: float) -> str:
    """``75`` -> ``"1m15s"``, ``4000`` -> ``"1h06m"``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


class Eta:
    """Estimated time left for ``total`` units of work, ``first_done`` of them done now, from the mean pace so far."""

    def __init__(self, total: int, first_done: int = 0, clock=time.monotonic, wall=time.time):
        self.total, self.first_done, self._clock, self._wall = total, first_done, clock, wall
        self.started = clock()
        self._reported = self.started

    def due(self, done: int, every: int) -> bool:
        """Whether to report at ``done``: the first unit, every ``every`` units, the last one, or after REPORT_SECONDS quiet."""
        now = self._clock()
        if done in (1, self.total) or done % max(1, every) == 0 or now - self._reported >= REPORT_SECONDS:
            self._reported = now
            return True
        return False

    def text(self, done: int) -> str:
        """``"2m10s left, done at 14:03:20"`` (``"timing"`` before any unit was timed)."""
        elapsed = self._clock() - self.started
        if done >= self.total:
            return f"took {duration(elapsed)}"
        if done <= self.first_done:
            return "timing"
        left = elapsed / (done - self.first_done) * (self.total - done)
        return f"{duration(left)} left, done at {time.strftime('%H:%M:%S', time.localtime(self._wall() + left))}"
