"""Label generated classifier scores (the main job on built-in example data).

Generates log-probabilities like a trained classifier's (each point peaked on one of K
clusters of slightly different sizes, or flat like an untrained network's), assigns balanced
labels and prints a summary. Exit code 0 when the solve converged, 1 when it stopped at
--max-iter, 2 on bad options.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from .._validation import check_lam
from ..api import _chunk_rows, sinkhorn
from ..datasets import REGIMES, make_scores
from ..exp_cache import table_cap
from ..kernels import resolve_kernel
from ..sources import as_source
from ..sources.memory import physical_memory
from ._options import add_solver_options, positive, solver_kwargs, summarize

#: What to do when the scores or the solve do not fit in memory (see ``cli.main``).
MEMORY_HINT = ("use a smaller -n or -k, or 'sinklabel assign' on scores saved to a .npy file, "
               "which is read in chunks")


def _seed(text: str) -> int:
    """An argparse ``type`` for the generator's seed, which NumPy takes only >= 0: a bad one
    is refused by option name (NumPy's own error names no option)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--n", type=positive(int), default=200_000,
                        help="points (default: %(default)s)")
    parser.add_argument("-k", "--k", type=positive(int), default=1000,
                        help="labels (default: %(default)s)")
    parser.add_argument("--regime", choices=REGIMES, default="peaked",
                        help="score regime (default: %(default)s)")
    parser.add_argument("--seed", type=_seed, default=0,
                        help="random seed, an integer >= 0 (default: %(default)s)")
    add_solver_options(parser)


def run(args: argparse.Namespace) -> int:
    _check_memory(args.n, args.k)
    _check_solve_options(args)
    start = time.perf_counter()
    scores, truth = make_scores(args.n, args.k, regime=args.regime, seed=args.seed)
    generated = time.perf_counter()
    print(f"generated {args.regime} scores: {args.n} x {args.k} float32 "
          f"in {generated - start:.1f} s")
    result = sinkhorn(scores, args.k, **solver_kwargs(args))
    seconds = time.perf_counter() - generated
    print(summarize(result, seconds))
    if args.regime == "peaked":
        agreement = float(np.mean(np.asarray(result.labels) == truth))
        print(f"same cluster as generated: {100 * agreement:.1f}% of points")
    return 0 if result.converged else 1


def _check_memory(n: int, k: int) -> None:
    """MemoryError before generating scores that cannot fit in this machine's memory (float32
    scores and the int64 cluster of each point): otherwise the allocation fails only after
    the clusters are drawn (minutes for 1e9 points), or succeeds and swaps."""
    physical = physical_memory()
    needed = n * (4 * k + 8)
    if physical is not None and needed > physical:
        raise MemoryError(f"{n} x {k} float32 scores need {needed / 2**30:.3g} GiB, more than "
                          f"the {physical / 2**30:.3g} GiB of memory this machine has")


def _check_solve_options(args: argparse.Namespace) -> None:
    """Size the solve's blocks as the solve will, on a zero-stride stand-in of the scores'
    shape, so that a --memory-limit too small for them, an uninstalled --backend or --cache
    without tables, or a --lam beyond what float32 scores are computed in, fails before the
    scores are generated (seconds to minutes)."""
    stand_in = as_source(np.broadcast_to(np.float32(0), (args.n, args.k)))
    check_lam(args.lam, stand_in.dtype)  # beyond float32's range, as the solve would refuse
    kernel = resolve_kernel(args.backend, stand_in.library)
    rows = _chunk_rows(args.chunk_size, kernel, stand_in, args.memory_limit, args.cache)
    if args.cache:
        table_cap(stand_in, kernel, rows, args.memory_limit)
