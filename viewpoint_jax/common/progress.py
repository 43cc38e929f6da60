"""Progress of long jobs, the same everywhere: a tqdm bar on a terminal; anywhere else (a log
file, a pipe, a batch job's output) a plain line at every `every` units and at the end, never the
carriage-return redraws a bar writes.

    with Progress(total_bytes, "converting the DiT", unit="B") as progress:
        for piece in pieces:
            ...
            progress.update(piece.nbytes)

Used by conversion (bytes), dataset preparation (files), latent and caption precompute
(samples, captions), checkpoint loading (bytes), training and sampling (steps).
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

from tqdm import tqdm

BYTES = "B"


def is_terminal(stream: TextIO) -> bool:
    """Whether `stream` is an interactive terminal (where a redrawn bar is readable)."""
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # a closed or replaced stream
        return False


def format_amount(value: float, unit: str) -> str:
    """`value` of `unit` for a log line: bytes in kB/MB/GB (decimal), other units as counts."""
    if unit != BYTES:
        return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.2f}"
    for scale, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if value >= scale:
            return f"{value / scale:.2f} {suffix}"
    return f"{value:.0f} B"


class Progress:
    """A job's progress towards `total` units (None: unknown): a bar on a terminal, else a line
    `desc: unit done/total (elapsed s)[; detail]` each time `every` more units are done (default:
    a tenth of `total`, or each unit when the total is unknown; lines fall on multiples of `every`)
    and when the total is reached.
    `announce` also prints the line at the start. `enabled=False` prints nothing (library calls,
    tests). Safe to update from several threads."""

    def __init__(
        self,
        total: float | None,
        desc: str,
        *,
        unit: str = "it",
        every: float | None = None,
        initial: float = 0,
        announce: bool = False,
        enabled: bool = True,
        stream: TextIO | None = None,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.done = initial
        self.every = every or (total / 10 if total else 1)
        self._next_line = (initial // self.every + 1) * self.every
        self._start = time.monotonic()
        self._lock = threading.Lock()
        self.bar = None
        if enabled and is_terminal(self.stream):
            self.bar = tqdm(
                total=total,
                initial=initial,
                desc=desc,
                unit=unit,
                unit_scale=unit == BYTES,
                file=self.stream,
                dynamic_ncols=True,
            )
        elif enabled and announce:  # a job whose first update may be minutes away
            self._print(self._line(""))

    def update(self, amount: float = 1, detail: str = "") -> None:
        """`amount` more units done; `detail` (e.g. the file just finished, the loss) is shown
        beside the bar or at the end of the line."""
        with self._lock:
            self.done += amount
            if self.bar is not None:
                self.bar.update(amount)
                if detail:
                    self.bar.set_postfix_str(detail, refresh=False)
                return
            finished = self.total is not None and self.done >= self.total
            if self.enabled and (self.done >= self._next_line or finished):
                self._print(self._line(detail))
                while self._next_line <= self.done:
                    self._next_line += self.every

    def write(self, message: str) -> None:
        """A message of its own line (above the bar on a terminal)."""
        if self.bar is not None:
            self.bar.write(message, file=self.stream)
        elif self.enabled:
            self._print(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _line(self, detail: str) -> str:
        done = format_amount(self.done, self.unit)
        if self.total is not None:
            done = f"{done}/{format_amount(self.total, self.unit)}"
        if self.unit != BYTES:
            done = f"{self.unit} {done}"
        line = f"{self.desc}: {done} ({time.monotonic() - self._start:.1f} s)"
        return f"{line}; {detail}" if detail else line

    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)
