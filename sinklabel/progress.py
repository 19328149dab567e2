"""Progress over solver iterations: tqdm when installed, a plain stderr line otherwise."""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Shows iteration, error and elapsed time; a no-op when disabled."""

    def __init__(self, enabled: bool, total: int, desc: str = "sinkhorn"):
        self.enabled = enabled
        self._bar: Any = None
        self._last = 0.0
        self._start = time.perf_counter()
        if not enabled:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        self._bar = tqdm(total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True)

    def update(self, iteration: int, error: float) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(iteration - self._bar.n)
            self._bar.set_postfix(error=f"{error:.2e}", refresh=False)
            return
        now = time.perf_counter()
        if now - self._last >= 1.0:
            self._last = now
            elapsed = now - self._start
            print(f"sinkhorn: iteration {iteration}, error {error:.2e}, {elapsed:.1f} s",
                  file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
