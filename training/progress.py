"""Progress lines of a long loop (SFT and training steps, evaluation prompts), printed by whichever process runs it.

A line is printed at the start, at every tenth of the way and at least every 30 s, and at the end, so a log piped to
a file shows how far a stage has come without one line per step. The console (``jobs/console.py``) shows lines
that start with ``[job] [bar]`` in place on a terminal."""

from __future__ import annotations

import resource
import time
from pathlib import Path

BAR_WIDTH = 20


def bar(fraction: float) -> str:
    filled = round(max(0.0, min(1.0, fraction)) * BAR_WIDTH)
    return "[" + "#" * filled + "." * (BAR_WIDTH - filled) + "]"


def clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


class Progress:
    """``Progress("train", total=200, unit="steps")``; ``update(done, loss="0.41")`` prints when a line is due."""

    def __init__(
        self, tag: str, total: int, unit: str, every_fraction: float = 0.1, every_seconds: float = 30.0, start: int = 0
    ):
        self.tag, self.total, self.unit = tag, max(1, total), unit
        self.every_fraction, self.every_seconds = every_fraction, every_seconds
        self.started = time.perf_counter()
        self.start = start  # a resumed loop: the rate counts only this run's work
        self._last_time = self.started
        self._last_fraction = -1.0

    def line(self, done: int, figures: dict) -> str:
        elapsed = time.perf_counter() - self.started
        fraction = done / self.total
        rate = (done - self.start) / elapsed if elapsed > 0 else 0.0
        left = f", ~{clock((self.total - done) / rate)} left" if rate > 0 and done < self.total else ""
        shown = "".join(f" · {k} {v}" for k, v in figures.items())
        return (
            f"[{self.tag}] {bar(fraction)} {fraction:4.0%} {done}/{self.total} {self.unit}{shown} "
            f"({clock(elapsed)}{left})"
        )

    def due(self, done: int) -> bool:
        now = time.perf_counter()
        fraction = done / self.total
        milestone = int(fraction / self.every_fraction + 1e-9)
        return (
            done >= self.total
            or self._last_fraction < 0
            or now - self._last_time >= self.every_seconds
            or milestone > int(self._last_fraction / self.every_fraction + 1e-9)
        )

    def update(self, done: int, **figures) -> bool:
        """Print the line if it is due; returns whether it printed."""
        if not self.due(done):
            return False
        self._last_time, self._last_fraction = time.perf_counter(), done / self.total
        print(self.line(done, figures), flush=True)
        return True


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def resident_mb(field: str = "VmRSS") -> float:
    """This process's resident memory now (``VmRSS``) or at its peak since :func:`restart_peak` (``VmHWM``), from
    /proc; off Linux, the peak of the whole process (``ru_maxrss``) for both."""
    try:
        line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    except (OSError, StopIteration):
        return peak_rss_mb()
    return int(line.split()[1]) / 1024


def restart_peak() -> None:
    """Start this process's peak resident memory (``VmHWM``) afresh from its present size, where Linux allows it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
