"""Progress for long loops: a tqdm bar on a terminal, a few plain lines in a log.

Under `dvc repro`, CI or `> log`, stderr is not a TTY and tqdm's carriage-return updates pile up
into thousands of log lines. There, `progress_bar` prints one line per `LOG_PERCENT_STEP` percent
of the total (or every `LOG_SECONDS` when the total is unknown), plus a final line.

The object supports the tqdm subset qsens uses: iteration, `update(n)`, `set_postfix(**kw)`,
`close()` and `with`.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO

LOG_PERCENT_STEP = 10
LOG_SECONDS = 60.0


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class LogProgress:
    """Line-per-step progress for non-terminal streams (the tqdm-compatible subset)."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 disable: bool = False, unit: str = "it", file: TextIO | None = None,
                 initial: int = 0, percent_step: int = LOG_PERCENT_STEP, seconds: float = LOG_SECONDS):
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.disable, self.file = disable, file
        self.percent_step, self.seconds = max(1, int(percent_step)), float(seconds)
        self.n = int(initial)
        self.postfix = ""
        self._start = self._last_time = time.monotonic()
        self._last_step = int(100 * self.n / total) // self.percent_step if total else 0
        self._closed = False

    def __iter__(self) -> Iterator:
        for item in self.iterable if self.iterable is not None else ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> "LogProgress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Set the `k=v, ...` text shown after the count (tqdm's signature)."""
        items = dict(ordered_dict or {}, **kwargs)
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        """Set the text shown before the count (tqdm's signature)."""
        self.desc = desc or ""

    def update(self, n: int = 1) -> None:
        """Advance by `n` steps; writes a line when the next percent step or interval is reached."""
        self.n += n
        self._maybe_write()

    def refresh(self) -> None:
        """Write a line if one is due."""
        self._maybe_write()

    def _maybe_write(self) -> None:
        now = time.monotonic()
        if self.total:
            step = int(100 * self.n / self.total) // self.percent_step
            due = step > self._last_step and self.n < self.total
            if due:
                self._last_step = step
        else:
            due = now - self._last_time >= self.seconds
        if due:
            self._last_time = now
            self._write()

    def close(self) -> None:
        """Write the final line (when any step was made); idempotent."""
        if self._closed:
            return
        self._closed = True
        if self.n:
            self._write()

    def _write(self) -> None:
        if self.disable:
            return
        elapsed = time.monotonic() - self._start
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        pct = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        tail = f", {self.postfix}" if self.postfix else ""
        prefix = f"{self.desc}: " if self.desc else ""
        stream = self.file if self.file is not None else sys.stderr
        print(f"{prefix}{done} {self.unit}{pct} in {elapsed:.0f}s{tail}", file=stream, flush=True)


def progress_bar(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 disable: bool = False, unit: str = "it", file: TextIO | None = None, initial: int = 0,
                 **tqdm_kwargs: Any):
    """A tqdm bar when `file` (default stderr) is a terminal, else a `LogProgress`.

    Same call as `tqdm(iterable, total=, desc=, disable=, unit=, initial=)`; extra keyword
    arguments go to tqdm only (e.g. `leave=False`, `smoothing=`).
    """
    stream = file if file is not None else sys.stderr
    if _is_tty(stream):
        from tqdm.auto import tqdm

        return tqdm(iterable, total=total, desc=desc, disable=disable, unit=unit, file=stream,
                    initial=initial, **tqdm_kwargs)
    return LogProgress(iterable, total=total, desc=desc, disable=disable, unit=unit, file=stream,
                       initial=initial)
