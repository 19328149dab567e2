"""Scale proofs for streamed solves: memory stays O(chunk x K + N + K), time per pass.

    python benchmarks/streaming_scale.py memory   [N K]   # 1,000,000 x 1000 .npy via memmap
    python benchmarks/streaming_scale.py npy      [N K]   # 1,281,167 x 3000 .npy (15.4 GB)
    python benchmarks/streaming_scale.py callable [N K]   # 10,000,000 x 1000 callable (40 GB)
    python benchmarks/streaming_scale.py overhead [N K]   # 200,000 x 1000: streamed vs in memory

Options through the environment: SINKLABEL_BENCH_DIR (where the .npy goes, default /tmp),
SINKLABEL_BENCH_ITERS (fixed Sinkhorn iterations, default 3), SINKLABEL_BENCH_KEEP=1 keeps
the generated file. Prints one JSON line; the process's anonymous memory (RssAnon: what the
solve allocates, page cache excluded) is sampled every 5 ms during the solve. A small solve
runs first, so the one-off memory of loading the compiled kernels (about 50 MB with Numba)
is not counted as the solve's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
import warnings

import numpy as np

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.sources import CallableSource, as_source

DEFAULTS = {
    "memory": (1_000_000, 1000), "npy": (1_281_167, 3000), "callable": (10_000_000, 1000),
    "overhead": (200_000, 1000),
}
BLOCK_ROWS = 65_536


def rss_anon() -> int:
    """Bytes of anonymous resident memory of this process (Linux)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


class PeakSampler:
    """Samples RssAnon in a thread; ``peak`` is the largest value seen."""

    def __init__(self, period: float = 0.005):
        self.period = period
        self.peak = rss_anon()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_anon())
            time.sleep(self.period)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_anon())


def write_scores(path: str, n: int, k: int, seed: int = 0) -> float:
    """A peaked (trained-network-like) score file written block by block; seconds taken.

    Written under another name and renamed when complete: a run stopped mid-write (minutes,
    at 15 GB) leaves no file, rather than a half-zero one that the next run would reuse.
    """
    begin = time.perf_counter()
    partial = f"{path}.partial"
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(n, k))
        for index, start in enumerate(range(0, n, BLOCK_ROWS)):
            rows = min(BLOCK_ROWS, n - start)
            out[start:start + rows] = make_scores(rows, k, regime="peaked",
                                                  seed=seed + index).scores
        out.flush()
        del out
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    return time.perf_counter() - begin


def bank_function(n: int, k: int, bank_rows: int = 65_536):
    """fn(start, stop): rows of a fixed bank of peaked scores, scattered by a stride, as a
    model's logits would be computed per batch (deterministic, never materialised)."""
    bank = make_scores(bank_rows, k, regime="peaked", seed=1).scores

    def fn(start: int, stop: int) -> np.ndarray:
        return bank[(np.arange(start, stop) * 7919) % bank_rows]

    return fn


def warm_up(k: int) -> None:
    """Load the kernels (Numba's compiled code, thread pools) with a solve of a few rows."""
    with warnings.catch_warnings():  # 64 rows, 2 iterations: its warnings say nothing
        warnings.simplefilter("ignore")
        small = bank_function(64, k, bank_rows=64)
        sinklabel.sinkhorn(CallableSource(small, (64, k), "float32"), k, max_iter=2)


def passes_over_scores(logp, n_iter: int) -> int:
    """Reads of the scores a solve of ``n_iter`` iterations makes: one per iteration, the
    labelling pass and, for scores in memory, the up-front check (streamed ones are checked
    inside the first pass)."""
    return n_iter + 1 + int(as_source(logp).in_memory)


def solve(logp, k: int, iters: int) -> dict:
    """A fixed number of iterations (tol below reach) plus the labelling pass."""
    warm_up(k)
    base = rss_anon()
    with PeakSampler() as sampler, warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        begin = time.perf_counter()
        result = sinklabel.sinkhorn(logp, k, tol=1e-12, max_iter=iters)
        total = time.perf_counter() - begin
    counts = result.label_counts
    passes = passes_over_scores(logp, result.n_iter)
    return {
        "iterations": result.n_iter,
        "passes": passes,
        "total_s": round(total, 2),
        "s_per_pass": float(f"{total / passes:.3g}"),  # never 0 at small sizes
        "error": result.error,
        "rss_anon_growth_mb": round((sampler.peak - base) / 1e6, 1),
        "label_counts_min_max": [int(counts.min()), int(counts.max())],
    }


def overhead(n: int, k: int, iters: int, folder: str, repeats: int = 3) -> dict:
    """Seconds per pass of the same scores in memory, memory-mapped (page cache warm) and
    from a function, interleaved so that a busy machine slows all three alike."""
    scores = make_scores(n, k, regime="peaked", seed=0).scores
    path = os.path.join(folder, f"sinklabel_overhead_{n}x{k}.npy")
    np.save(path, scores)
    inputs = {
        "in_memory": lambda: scores,
        "memmap": lambda: np.load(path, mmap_mode="r"),
        "callable": lambda: CallableSource(lambda a, b: scores[a:b], scores.shape, "float32"),
    }
    best = {name: float("inf") for name in inputs}
    try:
        for _ in range(repeats):
            for name, make in inputs.items():
                best[name] = min(best[name], solve(make(), k, iters)["s_per_pass"])
    finally:
        os.remove(path)
    return {"s_per_pass": best,
            "ratio_to_in_memory": {name: round(t / best["in_memory"], 3)
                                   for name, t in best.items()}}


def environment_options(parser: argparse.ArgumentParser) -> tuple[int, str]:
    """SINKLABEL_BENCH_ITERS and SINKLABEL_BENCH_DIR, checked before minutes of writing."""
    text = os.environ.get("SINKLABEL_BENCH_ITERS", "3")
    if not text.isdigit() or int(text) < 1:
        parser.error(f"SINKLABEL_BENCH_ITERS must be a positive integer, got {text!r}")
    folder = os.environ.get("SINKLABEL_BENCH_DIR", "/tmp")
    if not os.path.isdir(folder):
        parser.error(f"SINKLABEL_BENCH_DIR: no folder {folder}")
    return int(text), folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("kind", nargs="?", default="memory", choices=list(DEFAULTS))
    parser.add_argument("size", nargs="*", type=int, metavar="N K",
                        help="rows and labels (default: the kind's size, listed below)")
    args = parser.parse_args(argv)
    # A lone N must not fall back to the default size: that writes gigabytes.
    if len(args.size) not in (0, 2):
        parser.error(f"give both N and K, or neither (got {args.size})")
    if any(size < 1 for size in args.size):
        parser.error("N and K must be positive")
    iters, folder = environment_options(parser)
    kind = args.kind
    n, k = args.size or DEFAULTS[kind]
    report: dict = {"kind": kind, "N": n, "K": k, "gb_float32": round(n * k * 4 / 1e9, 2)}
    if kind == "overhead":
        report.update(overhead(n, k, iters, folder))
    elif kind == "callable":
        report.update(solve(CallableSource(bank_function(n, k), (n, k), "float32"), k, iters))
    else:
        path = os.path.join(folder, f"sinklabel_scores_{n}x{k}.npy")
        try:
            if not os.path.exists(path):
                report["write_s"] = round(write_scores(path, n, k), 1)
            logp = np.load(path, mmap_mode="r")
            report.update(solve(logp, k, iters))
        finally:
            if os.environ.get("SINKLABEL_BENCH_KEEP") != "1" and os.path.exists(path):
                os.remove(path)
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
