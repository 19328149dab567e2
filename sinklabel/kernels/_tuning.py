"""Choosing a fused kernel's launch configuration by timing, shared by the CUDA backends.

A configuration is timed once per shape class, on an input large enough for the timing to
mean something; smaller inputs take the default (the first candidate) at once. A candidate is
only eligible when its result agrees with the default's: the candidate lists grow with
variants added before a GPU could time them, and a faster wrong kernel must never be chosen.
A candidate that cannot launch on this device (too much shared memory, say) is skipped.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from .._warnings import warn

#: Relative agreement a candidate's result needs with the default's: float32 sums over a
#: million rows in another order differ by ~1e-6; a wrong kernel differs by far more.
AGREEMENT = 1e-4


class Tuner:
    """The fastest agreeing configuration per key, remembered for the process.

    ``elapsed(run)`` times a few calls of ``run`` on the device (milliseconds); ``errors()``
    gives the exceptions that mean "this configuration cannot launch here" (a function, so
    that the GPU library is imported only when a kernel is tuned).
    """

    def __init__(self, elapsed: Callable[[Callable[[], None]], float],
                 errors: Callable[[], tuple[type[BaseException], ...]]):
        self.elapsed = elapsed
        self.errors = errors
        self.chosen: dict[tuple, tuple] = {}
        self.rejected: dict[tuple, list[tuple[tuple, str]]] = {}
        self.timings: dict[tuple, list[tuple[tuple, float]]] = {}

    def run(self, launch: Callable[[tuple], None], candidates: Sequence[tuple], key: tuple,
            result: Callable[[], Sequence[tuple[np.ndarray, float]]], tune: bool) -> None:
        """Launch the configuration chosen for ``key``; with ``tune`` (a large input) and
        none chosen yet, time every candidate first. ``result`` reads back what a launch
        computed, for the agreement check: host arrays, each with a floor for its scale (a
        sum of terms that cancel to about 0 is compared on the terms' count, not on its
        own rounding noise)."""
        if self.will_time(key, candidates, tune):
            self.chosen[key] = self._fastest(launch, candidates, key, result)
        launch(self.chosen.get(key, candidates[0]))

    def will_time(self, key: tuple, candidates: Sequence[tuple], tune: bool) -> bool:
        """Whether :meth:`run` with these arguments times the candidates (so launches every
        one of them) before its own launch."""
        return key not in self.chosen and tune and len(candidates) > 1

    def _fastest(self, launch, candidates, key, result) -> tuple:
        launch(candidates[0])  # the default: an error here is the caller's
        reference = result()
        errors = self.errors()
        times = [self.elapsed(lambda: launch(candidates[0]))]
        rejected, wrong = [], []
        for config in candidates[1:]:
            times.append(np.inf)
            try:
                launch(config)
            except errors as exc:
                rejected.append((config, f"cannot launch: {exc}"))
                continue
            gap = max(_disagreement(value, expected, floor)
                      for (value, floor), (expected, _) in zip(result(), reference, strict=True))
            if gap > AGREEMENT:
                rejected.append((config, f"disagrees with the default by {gap:.2g}"))
                wrong.append(config)
                continue
            times[-1] = self.elapsed(partial(launch, config))
        self.rejected[key] = rejected
        timed = zip(candidates, times, strict=True)
        self.timings[key] = [(config, ms) for config, ms in timed if np.isfinite(ms)]
        if wrong:
            warn(f"sinklabel: launch configurations {wrong} of a fused kernel gave results "
                 "that disagree with the default one and were not used; please report this "
                 "with your GPU model", RuntimeWarning)
        return candidates[int(np.argmin(times))]

    def report(self, name: Callable[[tuple], str]) -> dict[str, dict]:
        """Per key (named by ``name(key)``), for benchmark reports: the configuration chosen,
        each timed one's milliseconds for three launches, and those ruled out, with why."""
        return {name(key): {"chosen": list(config),
                            "timed": [[list(c), ms] for c, ms in self.timings.get(key, [])],
                            "rejected": [[list(c), why] for c, why in self.rejected.get(key, [])]}
                for key, config in self.chosen.items()}


def _disagreement(value: np.ndarray, reference: np.ndarray, floor: float) -> float:
    """Largest difference relative to the reference's largest magnitude or ``floor``,
    whichever is larger (NaN: infinite)."""
    value, reference = np.asarray(value, np.float64), np.asarray(reference, np.float64)
    if value.shape != reference.shape or not np.isfinite(value).all():
        return np.inf
    scale = max(float(np.abs(reference).max(initial=0.0)), floor, np.finfo(np.float64).tiny)
    return float(np.abs(value - reference).max(initial=0.0)) / scale
