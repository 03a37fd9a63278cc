"""What a job shows on the console, and where the rest goes.

Everything a job's processes write (ours, Ray's, vLLM's, transformers' weight-loading bars, C++ logs of the
driver) goes to ``<output_dir>/<job>/logs/<job>.log``, complete. The console shows only the lines meant for the
user: those that start with ``[job]`` (from the driver or, through Ray's log forwarding, from any worker), the
tables a job prints with :func:`show`, and errors. ``--verbose`` shows everything on the console too.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import traceback
from pathlib import Path

# Ray prefixes a worker's line with "(ActorName pid=123, ip=...)", coloured, after cursor moves when bars are drawn.
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
RAY_PREFIX = re.compile(r"^\s*\([^)]*\)\s*")
RAY_DATA_COUNT = re.compile(r"^(?P<name>.+): (?P<done>\d+)/(?P<total>\d+|\?)$")
USER_TAG = re.compile(r"^\[(model|sft|prepare|train|evaluate|run|compare|study|bench|gpu-check)\] ")
PROGRESS_BAR = re.compile(r"^\[[\w-]+\] \[[#.]+\] ")
# Ray Data's own progress, logged every RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL s when the output is not a terminal.
RAY_DATA_PROGRESS_LOGGER = "ray.data._internal.progress.logging_progress"
RAY_DATA_PROGRESS_SECONDS = "30"

_active: Console | None = None


def user_text(line: str) -> str | None:
    """The line without Ray's worker prefix if it is meant for the user, else None."""
    text = RAY_PREFIX.sub("", ANSI.sub("", line), count=1)
    return text if USER_TAG.match(text) else None


class _Router:
    """Stands in for sys.stdout/sys.stderr: every line to the log; user lines (or all, verbose) to the console."""

    def __init__(self, console: Console):
        self.console = console
        self._pending = ""

    def write(self, text: str) -> int:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self.console.route(line)
        return len(text)

    def flush(self) -> None:
        self.console.flush()

    def isatty(self) -> bool:
        return False  # Ray Data then logs its progress as lines, which RayDataProgress condenses

    def fileno(self) -> int:
        return self.console.log.fileno()

    @property
    def encoding(self) -> str:
        return "utf-8"


class RayDataProgress(logging.Handler):
    """Condenses each of Ray Data's multi-line progress reports into one ``[prepare]`` line, for datasets that
    run longer than ``quiet_seconds`` (Ray Data reports each one as it starts)."""

    def __init__(self, tag: str, quiet_seconds: float = float(RAY_DATA_PROGRESS_SECONDS)):
        super().__init__(logging.INFO)
        self.tag, self.quiet_seconds = tag, quiet_seconds
        self._parts: list[str] = []
        self._dataset, self._started = "", 0.0

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        if message.startswith("======= Running Dataset"):
            dataset = message.split(":", 1)[-1].strip(" =")
            if dataset != self._dataset:
                self._dataset, self._started = dataset, record.created
            self._parts = []
        elif message.startswith("====="):
            if self._parts and record.created - self._started >= self.quiet_seconds:
                print(f"[{self.tag}] rows: " + " · ".join(self._parts), flush=True)
            self._parts = []
        else:
            count = RAY_DATA_COUNT.match(message)
            if count:
                name = count["name"].strip(" -").replace("Total Progress", "total")
                self._parts.append(f"{name} {count['done']}/{count['total']}")


class Console:
    """``with Console(log_dir, job, verbose):`` routes the process's output as the module docstring says."""

    def __init__(self, log_dir: Path, job: str, verbose: bool = False):
        self.job, self.verbose = job, verbose
        self.log_path = Path(log_dir) / f"{job}.log"
        self._on_bar = False

    def __enter__(self) -> Console:
        global _active
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved_fds = (os.dup(1), os.dup(2))
        self._saved_streams = (sys.stdout, sys.stderr)
        self.terminal = os.fdopen(os.dup(self._saved_fds[0]), "w", buffering=1, encoding="utf-8", errors="replace")
        self.errors = os.fdopen(os.dup(self._saved_fds[1]), "w", buffering=1, encoding="utf-8", errors="replace")
        self._tty = self.terminal.isatty()
        self.log = None
        self.log_to(self.log_path.parent, self.job)
        sys.stdout = sys.stderr = _Router(self)
        os.environ.setdefault("RAY_DATA_NON_TTY_PROGRESS_LOG_INTERVAL", RAY_DATA_PROGRESS_SECONDS)
        self._ray_data = RayDataProgress("prepare")
        self._ray_data_logger = logging.getLogger(RAY_DATA_PROGRESS_LOGGER)
        self._ray_data_logger.addHandler(self._ray_data)
        _active = self
        return self

    def log_to(self, log_dir: Path, job: str) -> Path:
        """Send the complete log to ``log_dir/<job>.log`` from now on (``jobs.run`` gives each stage its own)."""
        self.log_path = Path(log_dir) / f"{job}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        if self.log is not None:
            self.log.flush()
        previous, self.log = self.log, open(self.log_path, "a", buffering=1, encoding="utf-8", errors="replace")
        # Whatever writes to the file descriptors directly (C++ logs, child processes) lands in the log too.
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)
        if previous is not None:
            previous.close()
        return self.log_path

    def route(self, line: str) -> None:
        self.log.write(line + "\n")
        text = user_text(line)
        if text is not None:
            self.to_terminal(text)
        elif self.verbose:
            self.to_terminal(line)

    def to_terminal(self, text: str) -> None:
        # On a terminal, consecutive progress lines redraw one bar; in a file each is its own line.
        if self._tty and PROGRESS_BAR.match(text):
            self.terminal.write("\r\x1b[K" + text)
            self._on_bar = True
        else:
            self.terminal.write(("\n" if self._on_bar else "") + text + "\n")
            self._on_bar = False
        self.terminal.flush()

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()

    def __exit__(self, exc_type, exc, tb) -> None:
        global _active
        if exc is not None and not isinstance(exc, (SystemExit, KeyboardInterrupt)):
            self.log.write("".join(traceback.format_exception(exc_type, exc, tb)))
            if self._on_bar:  # a progress bar drawn in place ends here
                self.terminal.write("\n")
            self.errors.write(
                f"[{self.job}] failed: {type(exc).__name__}: {exc}\n[{self.job}] full log: {self.log_path}\n"
            )
        self._ray_data_logger.removeHandler(self._ray_data)
        sys.stdout, sys.stderr = self._saved_streams
        self.log.flush()
        os.dup2(self._saved_fds[0], 1)
        os.dup2(self._saved_fds[1], 2)
        for fd in self._saved_fds:
            os.close(fd)
        for stream in (self.log, self.terminal, self.errors):
            stream.close()
        _active = None


def active() -> Console | None:
    return _active


def show(text: str) -> None:
    """Print a block meant for the user (a summary table) on the console, and in the log."""
    if _active is None:
        print(text, flush=True)
        return
    for line in text.split("\n"):
        _active.log.write(line + "\n")
        _active.to_terminal(line)
