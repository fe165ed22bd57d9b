"""The training log's progress bar.

- :class:`Progress` -- an in-place bar of an epoch's frames on a TTY, silent elsewhere.
"""
from __future__ import annotations

import time


class Progress:
    """An in-place progress bar on a TTY (redrawn at most 5 times a second); silent otherwise."""

    def __init__(self, stream, label: str, total: int):
        self.stream, self.label, self.total = stream, label, total
        self.active = hasattr(stream, "isatty") and stream.isatty()
        self.start = self.last = time.monotonic()

    def update(self, done: int) -> None:
        now = time.monotonic()
        if not self.active or now - self.last < 0.2:
            return
        self.last = now
        filled = int(30 * min(done / self.total, 1.0))
        rate = done / max(now - self.start, 1e-9) / 1000
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] "
                          f"{done}/{self.total} frames  {rate:.1f}k frames/s")
        self.stream.flush()

    def close(self) -> None:
        if self.active:
            self.stream.write("\r\033[K")
            self.stream.flush()
