"""Time one Numba sweep at few labels, row by row against blocks of rows, side by side.

For each K, N = values // K rows of ``make_scores`` (the same bytes at every K), one
``NumbaKernel.sweep_lse`` pass over all chunks (``--kernel best``: one ``NumbaKernel.best``
labelling pass, gate ``BLOCK_BEST_MAX_K``), three ways per round:

- ``rows``: every row by ``_sweep_rows``, resp. ``_best_rows`` (the gate set to 0 for the call);
- ``blocks``: the pass as shipped (``_sweep_row_blocks``, resp. ``_best_row_blocks``, up to the
  gate, so at larger K both columns time the same kernel);
- ``read``: NumPy's single-threaded ``scores.sum()`` (of the bits for float16), for scale.

The methods alternate within each round and ratios are taken within a round, so a noisy
shared machine disturbs them less; the medians are printed.

    python benchmarks/cpu_small_k.py                       # K = 2 .. 100, 8e6 float32 scores
    python benchmarks/cpu_small_k.py --ks 2,16 --dtype float64 --rounds 9
    python benchmarks/cpu_small_k.py --kernel best --ks 2,8,16,32
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

from sinklabel.datasets import make_scores
from sinklabel.kernels import numba as numba_backend

DTYPES = {"float32": np.float32, "float64": np.float64, "float16": np.float16}
#: The kernel method each ``--kernel`` times, and the gate that sends narrow rows to blocks.
KERNELS = {"sweep": ("sweep_lse", "BLOCK_SWEEP_MAX_K"), "best": ("best", "BLOCK_BEST_MAX_K")}


def _parse_ks(text: str) -> list[int]:
    """``"2,4,16"`` as ``[2, 4, 16]``, each at least 1."""
    try:
        ks = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--ks must be integers separated by commas: {text!r}") from None
    if not ks or min(ks) < 1:
        raise argparse.ArgumentTypeError(f"--ks must all be at least 1: {text!r}")
    return ks


def _scores(n: int, k: int, regime: str, dtype: str) -> np.ndarray:
    """Scores of the regime in ``dtype`` (float16 from the float32 ones)."""
    generated = np.float64 if dtype == "float64" else np.float32
    scores = make_scores(n, k, regime=regime, seed=k, dtype=generated).scores
    return scores.astype(DTYPES[dtype], copy=False)


def _passes(kernel, scores: np.ndarray, f: np.ndarray, lam: float, which: str):
    """The ``rows`` and ``blocks`` passes of kernel ``which`` over ``scores`` in the kernel's
    chunks."""
    n, k = scores.shape
    step = kernel.chunk_rows(k, scores.itemsize)
    method, gate_name = KERNELS[which]
    run = getattr(kernel, method)

    def blocks() -> None:
        for start in range(0, n, step):
            run(scores[start:start + step], f, lam)

    def rows() -> None:
        gate = getattr(numba_backend, gate_name)
        setattr(numba_backend, gate_name, 0)
        try:
            blocks()
        finally:
            setattr(numba_backend, gate_name, gate)

    return rows, blocks


def _time(k: int, args: argparse.Namespace) -> dict[str, list[float]]:
    """Per-round times of each method at ``k`` labels."""
    scores = _scores(max(1, args.values // k), k, args.regime, args.dtype)
    f = np.random.default_rng(k).normal(size=k)
    kernel = numba_backend.NumbaKernel()
    rows, blocks = _passes(kernel, scores, f, args.lam, args.kernel)
    stored = scores.view(np.uint16) if scores.itemsize == 2 else scores  # 16-bit: the bits
    methods = {"rows": rows, "blocks": blocks, "read": stored.sum}
    for call in methods.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(args.rounds):
        for name, call in methods.items():
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--values", type=int, default=8_000_000, help="scores per pass, N * K")
    parser.add_argument("--ks", type=_parse_ks, default=[2, 4, 8, 10, 16, 32, 100])
    parser.add_argument("--lam", type=float, default=25.0)
    parser.add_argument("--regime", default="flat", choices=("flat", "peaked"))
    parser.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--kernel", default="sweep", choices=tuple(KERNELS))
    args = parser.parse_args(argv)
    if args.values < 1 or args.rounds < 1:
        parser.error("--values and --rounds must be at least 1")
    if not args.lam > 0:
        parser.error("--lam must be positive")

    gate = getattr(numba_backend, KERNELS[args.kernel][1])
    print(f"{args.kernel}: {args.values:,} {args.dtype} scores per pass, lam={args.lam:g} "
          f"regime={args.regime}, {args.rounds} rounds, numba threads="
          f"{numba.get_num_threads()}, cpu={platform.processor() or platform.machine()} "
          f"({os.cpu_count()} logical), blocks up to K={gate}")
    print(f"{'K':>5}{'N':>11}{'rows ms':>10}{'blocks ms':>11}{'read ms':>9}"
          f"{'rows / blocks':>15}{'blocks / read':>15}")
    for k in args.ks:
        times = _time(k, args)
        rows, blocks, read = (np.array(times[name]) for name in ("rows", "blocks", "read"))
        print(f"{k:>5}{args.values // k:>11,}{1e3 * np.median(rows):>10.1f}"
              f"{1e3 * np.median(blocks):>11.1f}{1e3 * np.median(read):>9.1f}"
              f"{np.median(rows / blocks):>15.2f}{np.median(blocks / read):>15.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
