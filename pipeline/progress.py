"""One line per finished stage of a scan on stderr, so that a long scan shows where it is:

    poisonguard: validated            1,000,000 rows    14.2 s      70,400 rows/s   peak 1.21 GiB

The scan flow reports the stage boundaries it passes, which are also its crash points
(``pipeline.faults``); the time is since the previous boundary, the peak is the process's largest
resident set so far (so the stage that raises it is the one to look at). The CLI turns this on when stderr
is a terminal (``--progress`` / ``--no-progress`` choose); the library default is silent.
"""

from __future__ import annotations

import resource
import sys
import time
from typing import TextIO

from pipeline.faults import checkpoint


class StageProgress:
    def __init__(self, rows: int, *, enabled: bool, stream: TextIO | None = None) -> None:
        self.rows = rows
        self.enabled = enabled
        self.stream = stream
        self._last = time.perf_counter()

    def reached(self, point: str) -> None:
        """The stage that ends at crash point ``point`` (e.g. "scan.validated") is done."""
        checkpoint(point)
        self.passed(point)

    def passed(self, point: str) -> None:
        """Report the stage ending at ``point`` without being that crash point: for a point a task
        has passed already (each crash point is placed once in the scan code)."""
        now = time.perf_counter()
        seconds, self._last = now - self._last, now
        if self.enabled:
            stage = point.split(".", 1)[-1].replace("_", " ")
            rate = f"{self.rows / seconds:>12,.0f} rows/s" if seconds > 0 else ""
            print(
                f"poisonguard: {stage:<20}{self.rows:>12,} rows {seconds:>8.1f} s{rate}   peak {peak_gib():.2f} GiB",
                file=self.stream or sys.stderr,
                flush=True,
            )


def peak_gib() -> float:
    """The process's peak resident set so far (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
