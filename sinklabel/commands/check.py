"""Check saved labels against the exact optimum of the balanced assignment problem.

Prints the labels' cost, the exact optimum (or a certified bound for very large inputs),
the gap, agreement with the optimal labels and label-size statistics. Exit code 0 when the
labels are certified optimal, 1 when they are not, 2 on bad input.
"""

from __future__ import annotations

import argparse

import numpy as np

from .._capacities import balanced_range
from .._validation import check_label_weights
from ..check import check
from ..sources import as_source
from ._options import check_k, load_npy, positive

#: What to do when the exact solve does not fit in memory (see ``cli.main``).
MEMORY_HINT = ("give --no-exact to skip the exact solve, with --prices saved by 'sinklabel "
               "assign --exact --prices' for a strong bound")


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("scores", help="(N, K) float .npy file of log-probabilities or logits")
    parser.add_argument("labels", help="(N,) integer .npy file of labels to check")
    parser.add_argument("-k", "--k", type=positive(int),
                        help="number of labels K (default: from scores)")
    sizes = parser.add_mutually_exclusive_group()
    sizes.add_argument("--capacities", help="(K,) integer .npy file of exact label sizes "
                       "(default: floor or ceil of N/K each)")
    sizes.add_argument("--weights", help="(K,) .npy file of label proportions, as given to "
                       "'sinklabel assign --weights': sizes floor or ceil of N * weight")
    parser.add_argument("--prices", help="(K,) float .npy file of label prices, as saved by "
                        "'sinklabel assign --prices', for the certified bound (default: zero "
                        "prices, a weak bound)")
    parser.add_argument("--no-exact", action="store_true",
                        help="skip the exact solve, which runs by default up to N * K = 1e9; "
                        "report only the bound (weak without --prices)")


def run(args: argparse.Namespace) -> int:
    scores = as_source(args.scores)  # memory-mapped, with errors naming the file
    labels = load_npy(args.labels, "labels")
    check_k(args.k, scores.shape)
    capacities: np.ndarray | tuple[np.ndarray, np.ndarray] | None = (
        None if args.capacities is None else load_npy(args.capacities, "capacities")
    )
    if args.weights is not None:
        weights = check_label_weights(load_npy(args.weights, "weights"), scores.shape[1])
        capacities = balanced_range(scores.shape[0], weights)
    prices = None if args.prices is None else load_npy(args.prices, "prices")
    report = check(labels, scores, capacities=capacities, prices=prices,
                   exact=False if args.no_exact else None)
    print(report)
    return 0 if report.optimal else 1
