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

from ..api import sinkhorn
from ..datasets import REGIMES, make_scores
from ._options import add_solver_options, positive, solver_kwargs, summarize


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-n", "--n", type=positive(int), default=200_000,
                        help="points (default: %(default)s)")
    parser.add_argument("-k", "--k", type=positive(int), default=1000,
                        help="labels (default: %(default)s)")
    parser.add_argument("--regime", choices=REGIMES, default="peaked",
                        help="score regime (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_solver_options(parser)


def run(args: argparse.Namespace) -> int:
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
        print(f"same as generator {100 * agreement:.1f}% of points")
    return 0 if result.converged else 1
