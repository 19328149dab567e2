"""Checks at the API boundary: every bad input is named before any solver work starts."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np

from ._arrays import host_array, to_host
from ._capacities import balanced_range, short_label
from ._feasibility import FinitePatterns, find_shortage, pattern_cap, shortage_message
from .collective import LOCAL, Collective
from .kernels import Kernel
from .kernels._base import compute_dtype
from .sources import Source

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


def check_positive(name: str, value: Any, *, integer: bool = False) -> Any:
    """A finite, strictly positive number (an int when ``integer``)."""
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise TypeError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}")
    # Python's own conversions: NumPy's isfinite takes neither a Fraction nor an int beyond
    # int64, and a float overflows only where the number is too large for float64.
    number: float
    if integer and isinstance(value, numbers.Integral):
        number = int(value)
    else:
        try:
            number = float(value)
        except OverflowError:
            number = math.inf
    if (not integer and not math.isfinite(number)) or number <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value!r}")
    return number


#: log2(e): the GPU kernels scale scores by lam * LOG2E.
LOG2E = math.log2(math.e)


def check_lam(lam: Any, dtype: str) -> float:
    """A positive ``lam`` within the range of the dtype that scores of ``dtype`` are computed
    in: float32 turns a larger one into inf, and inf times a score of 0 into NaN, which would
    be blamed on the scores."""
    lam = check_positive("lam", lam)
    working = compute_dtype(dtype)
    # The CUDA kernels work in base 2: lam * log2(e) must be finite in that dtype too.
    largest = float(np.finfo(working).max) / LOG2E
    if lam > largest:
        raise ValueError(
            f"lam={lam:g} is beyond the largest {working} over log2(e) ({largest:.3g}), the "
            f"precision {dtype} scores are computed in: lower lam, or pass float64 scores"
        )
    return lam


def check_flag(name: str, value: Any) -> bool:
    """A plain bool (``np.bool_`` too), not a truthy stand-in such as a string."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def check_shape(source: Source, n_labels: Any, *, allow_empty_rows: bool = False) -> int:
    """The scores are a non-empty float (N, K) matrix and ``n_labels`` is that K.

    ``allow_empty_rows``: N = 0 is fine (one rank's shard of a distributed solve).
    """
    if len(source.shape) != 2:
        raise ValueError(f"logp must be 2-D (N, K), got shape {tuple(source.shape)}")
    n, k = source.shape
    if (n == 0 and not allow_empty_rows) or k == 0:
        raise ValueError(f"logp must be non-empty, got shape {(n, k)}")
    if source.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"logp must hold floating-point scores ({', '.join(FLOAT_DTYPES)}), got {source.dtype}"
        )
    n_labels = check_positive("K", n_labels, integer=True)
    if n_labels != k:
        hint = " (the array looks transposed: pass logp.T)" if n_labels == n else ""
        raise ValueError(f"K={n_labels} but logp has shape {(n, k)}: K must be logp.shape[1]{hint}")
    return n_labels


def check_exact_balance(balance: str | None, n_rows: int, n_labels: int) -> None:
    """Exact balancing gives every label floor or ceil of its share: with fewer points than
    labels that share rounds to none, so K > N is refused as for ``solve_exact``'s sizes."""
    if balance == "exact" and n_rows < n_labels:
        raise ValueError(
            f"balance='exact' needs at least as many points as labels, got N={n_rows} < "
            f"K={n_labels}: some labels would be empty (solve_exact with capacities allows "
            "empty labels)"
        )


def check_label_weights(label_weights: Any, n_labels: int) -> np.ndarray:
    """Positive finite label proportions of length K, normalised to sum to one."""
    if label_weights is None:
        return np.full(n_labels, 1.0 / n_labels)
    weights = _host_vector("label_weights", label_weights, n_labels)
    bad = np.flatnonzero(~(np.isfinite(weights) & (weights > 0)))
    if bad.size:
        more = f" (and {bad.size - 1} more)" if bad.size > 1 else ""
        raise ValueError(
            f"label_weights must be finite and > 0 for every label, got {weights[bad[0]]:g} "
            f"for label {bad[0]}{more}: to give a label no points, drop its column from logp"
        )
    weights = weights / weights.max()  # so that the sum cannot overflow
    weights = weights / weights.sum()
    # A share below float64's smallest normal number is rounded to a subnormal or to 0, and
    # the solver would aim at log(0): refuse it, as a weight of 0 is refused.
    lost = np.flatnonzero(weights < np.finfo(np.float64).tiny)
    if lost.size:
        raise ValueError(
            f"label_weights of labels {lost[:10].tolist()} are below "
            f"{np.finfo(np.float64).tiny:.3g} of their sum, which float64 cannot hold: "
            "raise them, or drop those labels from the scores"
        )
    return weights


def check_init(init: Any, n_labels: int) -> np.ndarray | None:
    """Warm-start potentials: a finite K-vector, or None for a cold start."""
    if init is None:
        return None
    potentials = _host_vector("init", init, n_labels)
    if not np.all(np.isfinite(potentials)):
        raise ValueError("init must hold finite potentials")
    return potentials


def check_prices(prices: Any, n_labels: int) -> np.ndarray:
    """The prices as a float64 host vector of K finite real numbers."""
    v = _host_vector("prices", prices, n_labels)
    if not np.all(np.isfinite(v)):
        raise ValueError("prices must be finite")
    return v


def check_labels(labels: Any, n_points: int, n_labels: int) -> np.ndarray:
    """The labels as a host int64 vector of N values in ``[0, K)``, contiguous and in native
    byte order: torch takes neither a reversed view nor a big-endian array."""
    y = host_array("labels", labels)
    if y.shape == (0,) == (n_points,):  # no labels, whatever dtype: NumPy reads [] as float64
        return np.zeros(0, dtype=np.int64)
    if y.shape != (n_points,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(
            f"labels must be {n_points} integers, got shape {y.shape} and dtype {y.dtype}"
        )
    if y.size and (y.min() < 0 or y.max() >= n_labels):
        raise ValueError(
            f"labels must lie in [0, {n_labels}), got values in [{y.min()}, {y.max()}]"
        )
    return np.ascontiguousarray(y, dtype=np.int64)


class RowTops:
    """The largest ``|lam * row maximum|`` of the checked scores: the size of ``lam * logp``
    at the rows' tops, which the solver's precision warning needs and its objective (a mean
    over rows) misses when rows of both signs cancel. Streamed scores are checked during the
    solve's first pass, so it is complete after that pass."""

    def __init__(self) -> None:
        self.value = 0.0

    def see(self, row_max: np.ndarray) -> None:
        self.value = max(self.value, float(np.abs(row_max).max(initial=0.0)))

    def __call__(self) -> float:
        return self.value


def check_scores(
    source: Source, kernel: Kernel, lam: float, rows: int, tops: RowTops | None = None
) -> None:
    """One pass that rejects NaN, +inf (or overflow of lam * logp) and rows with no finite score."""
    for start, _, chunk in source.chunks(rows):
        check_chunk_scores(start, chunk, kernel, lam, tops)


def check_chunk_scores(
    start: int, chunk: Any, kernel: Kernel, lam: float, tops: RowTops | None = None
) -> None:
    """The check of :func:`check_scores` on one chunk whose first row is row ``start``;
    ``tops`` sees its rows' maxima when they pass."""
    zero = np.zeros(chunk.shape[1])
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is what we look for
        row_max = kernel.to_numpy(kernel.best(chunk, zero, lam)[0])
    bad = ~np.isfinite(row_max)
    if not bad.any():
        if tops is not None:
            tops.see(row_max)
        return
    first = int(np.flatnonzero(bad)[0])
    value = row_max[first]
    row = start + first
    if np.isnan(value):
        raise ValueError(f"logp contains NaN (row {row})")
    if value > 0:
        # At lam = 1 (check's own pass, certificates) no finite score overflows.
        overflow = "" if lam == 1 else f", or a score that overflows when multiplied by lam={lam:g}"
        raise ValueError(f"logp contains +inf{overflow} (row {row})")
    # -inf: the row holds only -inf, or lam times its finite scores overflows to -inf.
    unscaled = kernel.to_numpy(kernel.best(chunk[first:first + 1], zero, 1.0)[0])
    if np.isfinite(unscaled).all():
        raise ValueError(
            f"row {row} of logp overflows to -inf when multiplied by lam={lam:g} (its best "
            f"score is {float(unscaled[0]):.3g}): subtract the row maximum, or lower lam"
        )
    raise ValueError(f"row {row} of logp has no finite score (-inf for every label)")


#: Bytes of host copy at a time while counting finite scores (the scores may be on a GPU).
COUNT_BLOCK_BYTES = 64 << 20


def check_labels_reachable(
    source: Source, label_weights: np.ndarray, rows: int, collective: Collective = LOCAL,
    *, exact_sizes: bool = False,
) -> str | None:
    """ValueError when -inf scores leave no plan with the label proportions: a label has
    fewer rows with a finite score than its share of N (with ``exact_sizes``, than that
    share rounded down, the least ``balance="exact"`` gives it, so that the exact step can
    still serve a label short by less than a point), or a group of labels is short of rows,
    or more rows have finite scores only among a group than its share rounded up (Hall's
    condition, decided in :mod:`sinklabel._feasibility`, with the sizes of
    ``balance="exact"``: such a group is refused in either mode). The solve cannot
    converge then (its potentials grow without bound). One pass, in host blocks of
    ``COUNT_BLOCK_BYTES``: run only after a solve that did not converge, to say why instead
    of returning collapsed labels. Beyond :func:`~sinklabel._feasibility.pattern_cap`
    distinct patterns of finite labels only single labels are checked. Returns, for the
    failed solve's warnings, what -inf scores may still do that no error named: None where
    there are none (no -inf score, or whole shares of N, which the group check decides).
    Every process must call it: counts are combined.
    """
    n_labels = source.shape[1]
    totals = np.zeros(n_labels + 1)
    patterns = FinitePatterns(n_labels)
    step = max(1, COUNT_BLOCK_BYTES // (8 * n_labels))
    try:
        for start, stop, chunk in source.chunks(rows):
            for first in range(0, stop - start, step):
                finite = np.isfinite(to_host(chunk[first:first + step]))
                totals[:n_labels] += np.count_nonzero(finite, axis=0)
                patterns.add(finite)
            totals[n_labels] += stop - start
    except Exception as exc:  # the other processes learn of it in the sum below
        collective.fail(exc)
    totals = collective.sum(totals)
    n_points = int(totals[n_labels])
    lower, upper = balanced_range(n_points, label_weights)
    needed = lower if exact_sizes else n_points * label_weights * (1 - 1e-12)
    y = short_label(needed, totals[:n_labels])
    if y is not None:
        raise ValueError(
            f"label {y} should take {n_points * label_weights[y]:.6g} points (its weight times "
            f"N) but only {int(totals[y])} rows have a finite score for it (the others are "
            "-inf): no labelling has these proportions. Lower its weight or unmask more rows"
        )
    decided, shortage = find_shortage(patterns, lower, upper, collective)
    if shortage is not None:
        raise ValueError(shortage_message(shortage, n_points, label_weights))
    if totals[:n_labels].sum() == n_points * n_labels:
        return None
    if decided and np.array_equal(lower, upper):
        return None  # whole shares: the check above was of the very sizes the plan needs
    if not decided:
        return (
            "the -inf scores leave a group of labels short of rows (their rows fall into more "
            f"than {pattern_cap(n_labels)} distinct patterns of finite labels, too many to "
            "check which group)"
        )
    return (
        "the -inf scores leave a label or a group of labels short of its share by less than "
        "one row (labels of the rounded sizes of balance='exact' may still exist)"
    )


def _host_vector(name: str, value: Any, n_labels: int) -> np.ndarray:
    """A float64 NumPy copy of a real K-vector from any library (complex is not real)."""
    array = host_array(name, value)
    if array.dtype == bool or not (
        np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)
    ):
        raise TypeError(f"{name} must hold real numbers, got dtype {array.dtype}")
    vector = array.astype(np.float64)
    if vector.shape != (n_labels,):
        raise ValueError(f"{name} must have shape ({n_labels},), got {vector.shape}")
    return vector
