"""The terminal of a `loopfree` command: one progress bar and a short summary; everything else goes to a log file.

`quiet(log)` points the process's stdout and stderr (file descriptors 1 and 2, so child processes, C++
logs, Ray's forwarded worker output, Ray Train's reports, DeepSpeed, MLflow and Python warnings included) at
the log file for the duration of a run, and keeps the terminal for the command's `Progress` bar (stderr)
and its `say` lines (stdout). ``--verbose`` skips it: the chatter stays on the terminal.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, TextIO

from loopfree_platform import storage

_out: TextIO | None = None  # the terminal's stdout and stderr while `quiet` holds fds 1 and 2
_err: TextIO | None = None
_active: Progress | None = None  # the command's bar, which `task` counts on


def terminal_out() -> TextIO:
    return _out or sys.stdout


def terminal_err() -> TextIO:
    return _err or sys.stderr


@dataclass
class LogFile:
    """Where a run's chatter goes: a local file, copied to ``remote`` (an s3:// run folder) when the run ends."""

    path: Path
    remote: str | None = None
    endpoint_url: str | None = None

    @classmethod
    def under(cls, folder: str, filename: str, endpoint_url: str | None = None, name: str = "run") -> LogFile:
        """``<folder>/<filename>``; for an s3:// folder a local file under the temp dir, uploaded at the end."""
        if storage.is_s3(folder):
            local = Path(tempfile.gettempdir()) / "loopfree-logs" / name / filename
            return cls(local, storage.join(folder, filename), endpoint_url)
        return cls(Path(folder).resolve() / filename)

    def shown(self) -> str:
        return self.remote or str(self.path)

    def upload(self) -> None:
        if self.remote and self.path.is_file():
            storage.write_bytes(self.remote, self.path.read_bytes(), self.endpoint_url)


def _terminal_copy(stream: TextIO, fd: int) -> TextIO:
    """A stream that keeps writing where `stream` writes once fd is redirected: a duplicate of fd when
    `stream` writes to it, else `stream` itself (a test's capture buffer)."""
    try:
        if stream.fileno() == fd:
            return os.fdopen(os.dup(fd), "w", buffering=1, encoding=getattr(stream, "encoding", None) or "utf-8",
                             errors="replace")
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return stream


@contextlib.contextmanager
def quiet(log: LogFile, verbose: bool = False, title: str = "", release: Callable[[], None] | None = None):
    """Within the block, fds 1 and 2 write to the log file (appended: a resumed run keeps its history).

    On the way out `release` runs while the log still listens (`runtime.release_ray`: a Ray instance's last
    words would otherwise reach the terminal), an exception's traceback is written to the log, and the log
    is uploaded when the run folder is remote. Nested or verbose: a plain block (`release` still runs).
    """
    global _out, _err
    if verbose or _err is not None:
        try:
            yield
        finally:
            if release:
                release()
        return
    log.path.parent.mkdir(parents=True, exist_ok=True)
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    _out, _err = _terminal_copy(sys.stdout, 1), _terminal_copy(sys.stderr, 2)
    saved = os.dup(1), os.dup(2)
    fd = os.open(log.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)
    print(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} loopfree {title}".rstrip(), file=sys.stderr, flush=True)
    try:
        yield
    except BaseException:
        traceback.print_exc(file=sys.stderr)
        raise
    finally:
        try:
            if release:
                release()
        finally:
            for stream in (sys.stdout, sys.stderr):
                stream.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            for stream, real in ((_out, sys.stdout), (_err, sys.stderr)):
                if stream is not real:
                    stream.close()
            _out = _err = None
            with contextlib.suppress(Exception):
                log.upload()


def active() -> Progress:
    """The command's bar, or a disabled one when there is none (a library call, a test): drivers call
    ``active().phase("starting Ray")`` without knowing whether a command shows a bar."""
    return _active or Progress("", enabled=False)


def say(message: str) -> None:
    """A line for the user (stdout), above the bar; also in the log while the console is quiet."""
    bar = _active.bar if _active else None
    if bar is not None:
        bar.clear()
    print(message, file=terminal_out(), flush=True)
    if _out is not None:
        print(message, file=sys.stdout, flush=True)
    if bar is not None:
        bar.refresh()


def _fmt(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


class Progress:
    """The command's one progress bar (tqdm, on the terminal's stderr): done / total, rate, ETA, the main
    metrics as its postfix and the current phase in its description. ``enabled=False``: does nothing."""

    PHASE_FORMAT = "{desc} ({elapsed})"

    def __init__(self, desc: str, unit: str = "it", total: int | None = None, enabled: bool = True):
        global _active
        self.desc, self.bar = desc, None
        self._started = self._planned = 0
        self._counting: tuple[float, int] | None = None  # (time, count) when counting started
        self._last: tuple[float, int] | None = None  # (time, count) of the latest advance
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit=unit, file=terminal_err(), mininterval=0.5, smoothing=0.1,
                            dynamic_ncols=True, bar_format=None if total else self.PHASE_FORMAT)
            _active = self

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def phase(self, text: str = "") -> None:
        """What the command is doing before or between counted work, e.g. "preparing corpus"."""
        if self.bar is not None:
            self.bar.bar_format = None if self.bar.total else self.PHASE_FORMAT  # no total yet: no counts to show
            self.bar.set_description_str(f"{self.desc}: {text}" if text else self.desc)

    def start(self, total: int, done: int = 0) -> None:
        """Counting starts now (rate and ETA from here), at `done` of `total`."""
        if self.bar is not None:
            self.bar.bar_format = None
            self.bar.reset(total=total)
            self.bar.n = self.bar.last_print_n = self.bar.initial = done
            self.phase()
        self._counting = self._last = (time.monotonic(), done)

    def plan(self, total: int) -> None:
        """Work still to be started (by `begin`), so that the total and the ETA cover it from the beginning."""
        self._planned = total
        if self.bar is not None:
            self.bar.total = self._started + self._planned
            self.bar.bar_format = None if self.bar.total else self.PHASE_FORMAT
            self.bar.refresh()

    def begin(self, name: str, total: int) -> None:
        """A stage of `total` items starts: counted on the same bar, its name as the phase (timing starts with
        the first stage)."""
        first = self._started == 0
        self._planned = max(0, self._planned - total)
        self._started += total
        if first:
            self.start(self._started + self._planned)
        elif self.bar is not None:
            self.bar.total = self._started + self._planned
        self.phase("" if name == self.desc else name)

    def retotal(self, total: int) -> None:
        """A total learnt after counting started (a sweep's run caps its steps when its corpus is read)."""
        if self.bar is not None and self.bar.total != total:
            self.bar.total = total
            self.bar.refresh()

    def update(self, n: int = 1) -> None:
        if self.bar is not None:
            self.bar.update(n)
            self._last = (time.monotonic(), self.bar.n)

    def to(self, done: int) -> None:
        if self.bar is not None and done > self.bar.n:
            self.update(done - self.bar.n)

    @property
    def throughput(self) -> float | None:
        """Items per second from `start` to the latest advance (the summary's average), None if unknown."""
        if not self._counting or not self._last or self._last[0] <= self._counting[0]:
            return None
        return (self._last[1] - self._counting[1]) / (self._last[0] - self._counting[0])

    @property
    def done(self) -> int:
        return self.bar.n if self.bar is not None else 0

    @property
    def rate(self) -> float | None:
        """Items per second (tqdm's smoothed rate), None before there is one."""
        return self.bar.format_dict.get("rate") if self.bar is not None else None

    def show(self, **metrics: Any) -> None:
        """The postfix: ``loss_vsd=0.0123, samples/s=4.1``; None values are left out."""
        if self.bar is not None:
            self.bar.set_postfix_str(", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if v is not None))

    def close(self) -> None:
        global _active
        if self.bar is not None:
            self.bar.close()
        if _active is self:
            _active = None


@contextlib.contextmanager
def task(total: int, desc: str, unit: str = "it"):
    """A stage of counted work: on the command's bar when one is active, else on its own tqdm bar (stderr).
    Yields an object with ``update(n)``."""
    if _active is not None and _active.bar is not None:
        _active.begin(desc, total)
        yield _active
        return
    from tqdm import tqdm

    with tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, mininterval=1.0) as bar:
        yield bar


def duration(seconds: float) -> str:
    """``42 s``, ``3 min 07 s``, ``1 h 02 min``."""
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
