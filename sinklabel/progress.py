"""Progress over solver iterations: a tqdm bar on a terminal or in a notebook (tqdm installed),
a plain stderr line at most once a second otherwise.

Sinkhorn's error falls roughly geometrically, so the number of iterations still needed is
estimated from the recent slope of log(error); the bar's total follows that estimate (capped
at ``max_iter``), which makes tqdm's percentage and ETA mean "until converged".

The slope is that of the best error so far. The solver's own errors are not monotone (a
line search tries steps that overshoot), and on peaked scores the raw slope changed sign
every other pass: the total jumped between ``max_iter`` and a few dozen. A window in which
the best error did not fall keeps the last estimate instead.
"""

from __future__ import annotations

import contextlib
import contextvars
import itertools
import math
import sys
import time
from collections.abc import Iterator
from typing import Any

#: Iterations over which the convergence rate is measured.
RATE_WINDOW = 10

_label: contextvars.ContextVar[tuple[str, int | None]] = contextvars.ContextVar(
    "sinklabel_progress_label", default=("sinkhorn", None)
)


@contextlib.contextmanager
def progress_label(desc: str, position: int | None = None) -> Iterator[None]:
    """Name (and tqdm line) of the bars opened inside, e.g. one per head of a multi-head solve."""
    token = _label.set((desc, position))
    try:
        yield
    finally:
        _label.reset(token)


def _bar_class() -> Any:
    """tqdm's bar where it redraws in place: on a terminal, or as a notebook's widget. None
    elsewhere (a log file, a pipe), which gets the plain line a second: there the bar's
    redraws, a carriage return each pass, piled up on one line (100 KB for 1000 passes), and
    a closed bar (``leave=False``) left no line saying how the solve ended."""
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    widget = any(base.__module__ == "tqdm.notebook" for base in tqdm.__mro__)
    return tqdm if widget or _is_terminal(sys.stderr) else None


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def iterations_left(history: list[float], tol: float | None) -> float | None:
    """Iterations until ``tol`` if the best error keeps falling at its recent geometric rate
    (None while that rate is unknown: too short a history, or no fall in the window)."""
    if tol is None or not history:
        return None
    best = list(itertools.accumulate(history, min))
    if best[-1] <= tol:
        return 0.0
    if len(best) < 3:
        return None
    window = best[-RATE_WINDOW:]
    first, last = window[0], window[-1]
    if not (first > 0 and math.isfinite(first) and math.isfinite(last)):
        return None
    slope = (math.log(last) - math.log(first)) / (len(window) - 1)
    if slope >= 0:
        return None
    return (math.log(tol) - math.log(last)) / slope


class Progress:
    """Shows iteration, error, and an estimate of the time to convergence; no-op when disabled."""

    def __init__(self, enabled: bool, total: int, desc: str | None = None,
                 tol: float | None = None):
        self.enabled = enabled
        self.max_total = total
        self.tol = tol
        self.history: list[float] = []
        self._bar: Any = None
        self._estimate = total
        self._measured = False  # whether a rate has been measured: until then total is a cap
        self._last = 0.0
        self._start = time.perf_counter()
        label, position = _label.get()
        self.desc = desc or label
        bar = _bar_class() if enabled else None
        if bar is not None:
            self._bar = bar(total=total, desc=self.desc, unit="it", leave=False,
                            dynamic_ncols=True, position=position)

    def estimated_total(self, iteration: int) -> int:
        """Iterations the solve will probably take: ``max_iter`` until a rate is known, then
        the latest estimate (kept while the best error stalls), never below this pass's."""
        left = iterations_left(self.history, self.tol)
        self._measured = self._measured or left is not None
        if left == 0:
            return iteration
        if left is not None:
            self._estimate = min(self.max_total, iteration + math.ceil(left))
        return max(self._estimate, min(iteration + 1, self.max_total))

    def update(self, iteration: int, error: float) -> None:
        """Record a pass's error and show the best so far: the solver returns the best point
        it saw, and a line search's overshooting trial (1.56 after 6.8e-2) is not progress."""
        if not self.enabled:
            return
        self.history.append(error)
        best = min(self.history)
        total = self.estimated_total(iteration)
        if self._bar is not None:
            if total != self._bar.total:
                self._bar.total = total
            # The postfix first: update() redraws, so the bar shows the best error so far.
            self._bar.set_postfix(error=f"{best:.2e}", refresh=False)
            self._bar.update(iteration - self._bar.n)
            return
        now = time.perf_counter()
        if now - self._last >= 1.0:
            self._last = now
            print(self._line(iteration, total, best, now - self._start), file=sys.stderr)

    def _line(self, iteration: int, total: int, error: float, elapsed: float) -> str:
        """The plain progress line; the total and time left only while a measured rate
        predicts convergence before ``max_iter``: otherwise the total is only that cap
        ("iteration 7/1000, ..., about 426 s left" in a solve of 61 passes and 15 s)."""
        if not self._measured or total >= self.max_total:
            return f"{self.desc}: iteration {iteration}, error {error:.2e}, {elapsed:.1f} s"
        eta = elapsed / iteration * (total - iteration)
        return (f"{self.desc}: iteration {iteration}/{total}, error {error:.2e}, "
                f"{elapsed:.1f} s, about {eta:.0f} s left")

    def close(self) -> None:
        """Close the bar; without one, end with a line on how the solve ended (the lines
        come at most once a second, so a short solve would otherwise show only its first)."""
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.history:
            best, n = min(self.history), len(self.history)
            ended = "converged" if self.tol is not None and best <= self.tol else "stopped"
            print(f"{self.desc}: {ended} after {n} iterations, error {best:.2e}, "
                  f"{time.perf_counter() - self._start:.1f} s", file=sys.stderr)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
