"""Assign balanced labels to the scores in a .npy file and save them.

The file is memory-mapped and read in chunks, so it may be larger than memory. The labels
(int64), potentials and prices are saved to exactly the paths given; potentials saved by one
run warm-start the next (--init). Exit code 0 when the solve
converged, 1 when it stopped at --max-iter (the labels are still saved), 2 on bad input.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from ..api import sinkhorn
from ..check import result_prices
from ..result import SinkhornResult
from ..sources import as_source
from ._options import (
    add_solver_options,
    check_k,
    check_outputs,
    load_npy,
    positive,
    save_outputs,
    solver_kwargs,
    summarize,
)

#: What to do when the solve does not fit in memory (see ``cli.main``).
MEMORY_HINT = ("bound the solve's extra memory with --memory-limit (such as 2GB) and leave out "
               "--cache; --exact needs memory for all the scores")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", help="(N, K) float .npy file of log-probabilities or logits")
    parser.add_argument("-k", "--k", type=positive(int),
                        help="number of labels K, checked against the scores' columns "
                        "(default: the number of columns)")
    parser.add_argument("-o", "--output", required=True, help="where to save the labels (.npy)")
    parser.add_argument("--potentials", help="also save the label potentials (.npy) here")
    parser.add_argument("--prices", help="also save the label prices (.npy, in the units of "
                        "the scores) here: 'sinklabel check --prices' bounds the optimum "
                        "with them without solving the exact problem")
    parser.add_argument("--weights", help="(K,) .npy file of target label proportions "
                        "(positive, normalised here; default: uniform)")
    parser.add_argument("--init", help="(K,) .npy file of potentials to warm-start from, as "
                        "saved by --potentials on earlier scores")
    parser.add_argument("--exact", action="store_true",
                        help="exactly balanced labels (sizes floor or ceil of N/K, or of N * "
                        "weight with --weights): the certified optimum of the exact problem, "
                        "which 'sinklabel check' accepts; needs N >= K")
    add_solver_options(parser)


def run(args: argparse.Namespace) -> int:
    # --potentials may replace the --init file (potentials updated in place, epoch after
    # epoch); the labels and prices may not.
    check_outputs([(args.output, None), (args.potentials, "--init"), (args.prices, None)],
                  {"scores": args.scores, "--weights": args.weights, "--init": args.init})
    scores = as_source(args.scores)  # memory-mapped, with errors naming the file
    check_k(args.k, scores.shape)
    weights = None if args.weights is None else load_npy(args.weights, "weights")
    init = None if args.init is None else load_npy(args.init, "init")
    start = time.perf_counter()
    balance = "exact" if args.exact else None
    result = sinkhorn(scores, scores.shape[1], label_weights=weights, init=init, balance=balance,
                      **solver_kwargs(args))
    seconds = time.perf_counter() - start
    save_outputs(_outputs(args, result))
    print(summarize(result, seconds), file=sys.stderr)
    print(f"labels saved to {args.output}", file=sys.stderr)
    return 0 if result.converged else 1


def _outputs(args: argparse.Namespace, result: SinkhornResult) -> dict[str, np.ndarray]:
    """The arrays to save by path, all computed before any is saved."""
    outputs = {args.output: np.asarray(result.labels)}
    if args.potentials:
        outputs[args.potentials] = result.potentials
    if args.prices:
        outputs[args.prices] = result_prices(result)
    return outputs
