"""Balanced k-means: Lloyd's algorithm whose assignment step splits the data equally.

Plain k-means gives each point its nearest centre, so cluster sizes follow the data (and a
bad start leaves some clusters tiny). Here the assignment step is ``sinklabel.sinkhorn`` on
the scores ``-||x - mu||^2 / T``: the labelling closest to nearest-centre that puts N/K points
in each cluster. The update step is the usual mean. Copy ``balanced_kmeans`` into any
clustering project; the rest of the file compares it with scikit-learn's KMeans on the 8x8
digits that ship with scikit-learn (ten classes of about 180 images each).

    python examples/balanced_kmeans.py --seeds 3
    python examples/balanced_kmeans.py --fast          # smoke test, ~5 CPU s, nearly all imports
"""

from __future__ import annotations

import argparse
import time
from typing import NamedTuple

import numpy as np
from sklearn.cluster import KMeans, kmeans_plusplus
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score

from sinklabel import sinkhorn


class BalancedKMeans(NamedTuple):
    labels: np.ndarray  # (N,) cluster of each point
    centers: np.ndarray  # (K, d)
    n_iter: int  # Lloyd iterations (assignment + update) taken
    temperature: float  # the T used in the scores


def squared_distances(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """||x_i - mu_k||^2 for every point and centre, shape (N, K)."""
    d2 = (x**2).sum(1)[:, None] - 2 * x @ centers.T + (centers**2).sum(1)[None, :]
    return np.maximum(d2, 0.0)


def default_temperature(d2: np.ndarray) -> float:
    """Mean squared distance to the nearest centre; when every point sits on a centre (as
    many distinct points as clusters) that is 0, and the mean over all centres stands in."""
    for candidate in (d2.min(axis=1).mean(), d2.mean()):
        if candidate > 0:
            return float(candidate)
    return 1.0  # all points identical: any positive scale gives the same (tied) scores


def updated_centers(x: np.ndarray, labels: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Each cluster's mean. A cluster can be left empty when rows tie (identical points all
    go to one label): it keeps its centre, where a mean of nothing would be NaN."""
    return np.stack([x[labels == j].mean(axis=0) if np.any(labels == j) else centers[j]
                     for j in range(len(centers))])


def balanced_kmeans(
    x: np.ndarray,
    k: int,
    *,
    lam: float = 25.0,
    temperature: float | None = None,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
) -> BalancedKMeans:
    """Cluster ``x`` (N, d) into ``k`` clusters of (almost) equal size.

    ``temperature`` T puts squared distances on the scale of log-probabilities; by default it
    is the mean squared distance of the points to their nearest initial centre (to all of them
    if every point sits on one), which makes the defaults scale-free. Larger ``lam / T`` gives
    harder, more exactly balanced assignments.
    The Sinkhorn potentials are carried from one iteration to the next (a warm start).
    """
    centers, _ = kmeans_plusplus(x, k, random_state=seed)
    if temperature is None:
        temperature = default_temperature(squared_distances(x, centers))
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    labels, potentials, n_iter = np.full(len(x), -1), None, 0  # -1: no labelling yet
    while n_iter < max_iter:
        n_iter += 1
        scores = -squared_distances(x, centers) / temperature
        result = sinkhorn(scores, k, lam=lam, tol=tol, init=potentials)
        settled = np.array_equal(labels, result.labels)
        labels, potentials = result.labels, result.potentials
        centers = updated_centers(x, labels, centers)
        if settled:
            break
    return BalancedKMeans(labels, centers, n_iter, temperature)


def size_spread(labels: np.ndarray, k: int) -> float:
    """Relative standard deviation of the cluster sizes: 0 when all are equal."""
    sizes = np.bincount(labels, minlength=k)
    return float(sizes.std() / sizes.mean())


def compare(seeds: list[int], n_init: int, max_iter: int) -> dict[str, dict[str, list[float]]]:
    """Both methods per seed on the digits: NMI with the classes, size spread, CPU time
    (process time: steadier than wall time on a shared machine)."""
    digits = load_digits()
    x, truth, k = digits.data / 16.0, digits.target, 10
    table: dict[str, dict[str, list[float]]] = {"balanced k-means": {}, "KMeans": {}}

    def record(method: str, labels: np.ndarray, seconds: float) -> None:
        sizes = np.bincount(labels, minlength=k)
        row = {"NMI": normalized_mutual_info_score(truth, labels),
               "size spread": size_spread(labels, k),
               "smallest": float(sizes.min()), "largest": float(sizes.max()),
               "CPU seconds": seconds}
        for name, value in row.items():
            table[method].setdefault(name, []).append(value)

    # Untimed first calls: Numba compiles (or loads) sinklabel's kernels on first use and
    # scikit-learn starts its thread pool; both cost more than a whole clustering here.
    balanced_kmeans(x[:100], k, max_iter=2)
    KMeans(k, n_init=1, max_iter=2).fit(x[:100])
    for seed in seeds:
        start = time.process_time()
        ours = balanced_kmeans(x, k, seed=seed, max_iter=max_iter)
        record("balanced k-means", ours.labels, time.process_time() - start)
        start = time.process_time()
        theirs = KMeans(k, n_init=n_init, max_iter=max_iter, random_state=seed).fit(x)
        record("KMeans", theirs.labels_, time.process_time() - start)
    return table


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="one seed, few iterations")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    seeds = [0] if args.fast else list(range(args.seeds))
    table = compare(seeds, n_init=1 if args.fast else 10, max_iter=20 if args.fast else 100)
    columns = list(next(iter(table.values())))
    print(f"{'digits, K=10':18s}" + "".join(f"{c:>16s}" for c in columns)
          + f"   (mean +- std over {len(seeds)} seeds)")
    for method, row in table.items():
        cells = "".join(f"{np.mean(row[c]):9.3f} +-{np.std(row[c]):5.3f}" for c in columns)
        print(f"{method:18s}{cells}")
    return table


if __name__ == "__main__":
    main()
