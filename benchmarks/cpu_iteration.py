"""Time one Sinkhorn iteration on the CPU, side by side, at N=1,000,000, K=1000 by default.

One iteration is one pass over all chunks of the scores. Rows of the table:

- ``numba``: the Numba backend's pass (``solver.label_mass``, all chunks);
- ``numba (no prefetch)``: the same pass recompiled without its request for the next row's
  first cache lines (:func:`sinklabel.kernels.numba._prefetch_row`);
- ``numba (cached)``: the same pass with ``cache=True``'s tables (``sinklabel.exp_cache``),
  at the same potentials, after the pass that built them (its time, the tables' size and the
  rows the tables could not answer are printed below the table);
- ``numpy``: the NumPy backend's pass;
- ``sela``: the original SeLa loop on a precomputed ``P = exp(lam * (S - rowmax))``,
  ``r = 1 / (K * (c @ P)); c = 1 / (N * (P @ r))`` (two matrix-vector products, BLAS threads);
- ``read (numba)``: one read of the scores on the same threads (a sum, the memory floor);
- ``read (S.sum)``: NumPy's own single-threaded sum of the scores;
- with ``--torch``, on a CPU tensor sharing the scores' memory: ``torch``, the torch
  backend's pass (the Numba kernels on a view of the tensor), ``torch ops``, the same backend
  made to use torch's own blocked operations (its route without Numba, and for float64),
  and ``sela (torch)``, the SeLa loop with torch's matrix-vector products on the same ``P``;
- with ``--dtype float16`` or ``bfloat16`` the scores are stored in that type (bfloat16 as its
  bits, rounded to nearest from the float32 scores) and ``numba`` reads them in place; two
  more rows: ``numba (copy)``, each chunk first copied to float32 by NumPy and then the float32
  pass (how float16 chunks were read before), and ``numba (float32)``, the float32 pass on a
  float32 array of the same values. The reads then read the scores' 16 bits; ``numpy`` takes
  no bfloat16 and is left out for it;
- with ``--dtype float64`` the scores are float64 (``make_scores(..., dtype=np.float64)``)
  and one more row, ``numba (libm exp)``: the same pass with the exponential that float64
  used before :func:`sinklabel.kernels.numba._exp_f64`, Numba's scalar ``math.exp`` (the
  sweep recompiled here with it, for this benchmark only);
- with ``--layout transposed`` the scores are stored column by column (Fortran order, as
  ``logits.T`` of a (K, N) array): the Numba kernels copy each task's rows into the thread's
  own buffer and compute them there, and one more row for float32 and float64,
  ``numba (chunk copy)``, has every thread copy its rows of each whole chunk to rows first and
  then runs the pass on that copy (the route until 2026-11-28, 10:00 UTC); for 16-bit scores
  ``numba (copy)`` is that route. The tensor is a transposed one, which ``torch ops`` (torch's
  own route for it until 2026-11-28) reads in place.

Timings are taken in rounds (every method once per round) and ratios to ``numba`` are
computed within a round, so a noisy shared machine disturbs them less; the medians are printed.

    python benchmarks/cpu_iteration.py                 # 1e6 x 1000 float32, needs ~9 GB
    python benchmarks/cpu_iteration.py --n 100000      # a quick look
    python benchmarks/cpu_iteration.py --regime peaked
    python benchmarks/cpu_iteration.py --n 200000 --torch --no-cache
    python benchmarks/cpu_iteration.py --n 200000 --dtype float16 --no-sela --numpy-rounds 0
    python benchmarks/cpu_iteration.py --n 200000 --dtype float64 --no-sela --torch
    python benchmarks/cpu_iteration.py --n 200000 --layout transposed --torch --no-cache
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
import types

import numba
import numpy as np

from sinklabel.datasets import make_scores
from sinklabel.exp_cache import table_cap, with_exp_cache
from sinklabel.kernels import get_kernel
from sinklabel.kernels import numba as numba_backend
from sinklabel.kernels.numba import _UNDERFLOW, bfloat16_rows
from sinklabel.solver import label_mass, normalize_potentials
from sinklabel.sources import ArraySource


@numba.njit(nogil=True, fastmath=True)
def _read_rows(buf, lo, hi):
    """The sum of ``buf[lo:hi]``, read through a slice: indexing ``buf`` itself with an
    index Numba cannot prove non-negative adds a wraparound select to every load, which
    took 1.8x as long (351 against 196 ms for 4 GB, side by side on 2026-11-26). Not cached
    on disk: a cache written while the file ran as ``benchmarks.cpu_iteration`` (as the
    tests import it) names that module, which a run as a script cannot import."""
    part = buf[lo:hi]
    total = np.float32(0.0)
    for j in range(part.size):
        total += part[j]
    return total


def _read(scores: np.ndarray, pool) -> float:
    """Sum every score once, in 2 MiB tasks on numba's thread count of threads (as the
    backend schedules its work): the memory-read floor."""
    flat = scores.ravel(order="K")  # a view in either layout
    step = 1 << 19
    pending = iter(range(0, flat.size, step))

    def work() -> float:
        return sum(float(_read_rows(flat, lo, min(flat.size, lo + step))) for lo in pending)

    futures = [pool.submit(work) for _ in range(numba.get_num_threads() - 1)]
    return work() + sum(future.result() for future in futures)


def _stored(scores: np.ndarray, dtype: str) -> tuple[np.ndarray, np.ndarray]:
    """The scores as stored for ``--dtype`` (bfloat16: its bits, for the Numba kernels), and
    a float32 array of the same values."""
    if dtype == "float32":
        return scores, scores
    if dtype == "float16":
        half = scores.astype(np.float16)
        return half, half.astype(np.float32)
    bits = scores.view(np.uint32).astype(np.uint64)
    bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest
    return bfloat16_rows(bits), _float32(bfloat16_rows(bits))


@numba.njit(cache=False)
def _libm_exp(x):
    return math.exp(x)


@numba.njit(cache=False)
def _no_prefetch(buf, start, k):
    """Requests nothing: the sweep as it was before :func:`numba_backend._prefetch_row`."""


def _sweep_with(**replacements):
    """The backend's ``_sweep_rows`` recompiled with some of the functions it calls replaced:
    ``_exp=_libm_exp`` gives the float64 pass as it was with Numba's scalar ``math.exp``
    (libm), ``_prefetch_row=_no_prefetch`` the pass without its prefetch of the next row."""
    python = numba_backend._sweep_rows.py_func
    scope = dict(python.__globals__, **replacements)
    copy = types.FunctionType(python.__code__, scope, python.__name__)
    return numba.njit(fastmath=numba_backend.FAST, nogil=True)(copy)


def _with_swapped(call, owner, name: str, value):
    """``call()`` with ``owner.name`` (a function of the Numba backend) swapped for ``value``
    while it runs."""
    def swapped() -> None:
        original = getattr(owner, name)
        setattr(owner, name, value)
        try:
            call()
        finally:
            setattr(owner, name, original)

    return swapped


def _chunk_copy_pass(source, kernel, f: np.ndarray, lam: float, rows: int) -> None:
    """A pass with each chunk first copied whole to rows, every thread its tasks' rows, and
    then read in place: the route of Fortran-ordered chunks until 2026-11-28, 10:00 UTC."""
    for _, _, chunk in source.chunks(rows):
        copy = np.empty(chunk.shape, chunk.dtype)
        kernel._threads.run(numba_backend._copy_rows, [
            (chunk, copy, lo, hi) for lo, hi in numba_backend._row_ranges(*chunk.shape)])
        kernel.sweep_lse(copy, f, lam)


def _float32(chunk: np.ndarray) -> np.ndarray:
    """A C-ordered float32 copy of a 16-bit chunk, by NumPy on one thread."""
    if chunk.dtype.names == ("bfloat16",):
        return (chunk["bfloat16"].astype(np.uint32) << 16).view(np.float32)
    return np.ascontiguousarray(chunk, np.float32)


def _warm_potentials(source, kernel, lam: float, iterations: int) -> np.ndarray:
    """Potentials after a few Sinkhorn steps, so the timed pass sees realistic ``f``."""
    k = source.shape[1]
    weights = np.full(k, 1.0 / k)
    f = np.zeros(k)
    rows = kernel.chunk_rows(k, 4)
    for _ in range(iterations):
        mass = label_mass(source, kernel, f, lam, rows)
        with np.errstate(divide="ignore"):
            step = np.where(mass > 0, np.log(weights) - np.log(np.maximum(mass, 1e-300)), 0.0)
        f = normalize_potentials(f + step, weights)
    return f


def _add_torch_methods(methods: dict, scores: np.ndarray, f: np.ndarray, lam: float,
                       exp_cache: np.ndarray | None) -> None:
    """The torch backend's pass on a tensor viewing ``scores``, by both of its CPU routes, and
    the SeLa loop in torch on the same ``exp_cache``."""
    import torch

    from sinklabel.kernels.torch import TorchKernel

    if scores.dtype.names == ("bfloat16",):
        x = torch.from_numpy(scores["bfloat16"]).view(torch.bfloat16)
    else:
        x = torch.from_numpy(scores)
    kernel, ops_kernel = TorchKernel(), TorchKernel()
    ops_kernel._numba = None  # its route without Numba
    methods["torch"] = lambda: kernel.sweep(x, f, lam)
    methods["torch ops"] = lambda: ops_kernel.sweep(x, f, lam)
    if exp_cache is None:
        return
    n, k = scores.shape
    p = torch.from_numpy(exp_cache)
    c = torch.full((n,), 1.0 / n)

    def sela_torch() -> None:
        nonlocal c
        r = (1.0 / k) / (c @ p)
        c = (1.0 / n) / (p @ r)

    methods["sela (torch)"] = sela_torch


def _torch_threads(used: bool) -> str:
    if not used:
        return ""
    import torch

    return f"torch {torch.__version__} threads={torch.get_num_threads()}, "


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--lam", type=float, default=25.0)
    parser.add_argument("--regime", default="flat", choices=("flat", "peaked"))
    parser.add_argument("--dtype", default="float32",
                        choices=("float32", "float16", "bfloat16", "float64"),
                        help="how the scores are stored (16-bit ones are computed in float32)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--numpy-rounds", type=int, default=1,
                        help="rounds for the (much slower) NumPy backend")
    parser.add_argument("--no-sela", action="store_true", help="skip the N x K exp cache")
    parser.add_argument("--no-cache", action="store_true", help="skip the cached numba pass")
    parser.add_argument("--torch", action="store_true", help="add the torch backend's passes")
    parser.add_argument("--layout", default="rows", choices=("rows", "transposed"),
                        help="transposed: the scores stored column by column (Fortran order)")
    args = parser.parse_args(argv)
    for name in ("n", "k", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.numpy_rounds < 0 or not args.lam > 0:
        parser.error("--numpy-rounds must be at least 0 and --lam positive")

    from concurrent.futures import ThreadPoolExecutor

    if args.dtype == "float64":
        scores = values = make_scores(args.n, args.k, regime=args.regime, seed=0,
                                      dtype=np.float64).scores
    else:
        scores, values = _stored(make_scores(args.n, args.k, regime=args.regime, seed=0).scores,
                                 args.dtype)
    if args.layout == "transposed":
        scores, values = np.asfortranarray(scores), np.asfortranarray(values)
    source = ArraySource(scores)
    numba_kernel, numpy_kernel = get_kernel("numba"), get_kernel("numpy")
    t0 = time.perf_counter()
    numba_kernel.sweep(scores[:8], np.zeros(args.k), args.lam)
    first_call = time.perf_counter() - t0
    f = _warm_potentials(source, numba_kernel, args.lam, iterations=5)
    lam = args.lam
    rows = numba_kernel.chunk_rows(args.k, scores.itemsize)
    methods = {
        "numba": lambda: label_mass(source, numba_kernel, f, lam, rows),
        "numpy": lambda: label_mass(source, numpy_kernel, f, lam,
                                    numpy_kernel.chunk_rows(args.k, scores.itemsize)),
    }
    if args.dtype == "bfloat16":
        del methods["numpy"]
    if args.dtype == "float64":
        methods["numba (libm exp)"] = _with_swapped(methods["numba"], numba_backend,
                                                    "_sweep_rows", _sweep_with(_exp=_libm_exp))
    elif args.dtype != "float32":
        copies = ArraySource(scores)
        float32 = ArraySource(values)

        def copy_pass() -> None:
            for _, _, chunk in copies.chunks(rows):
                numba_kernel.sweep_lse(_float32(chunk), f, lam)

        methods["numba (copy)"] = copy_pass
        methods["numba (float32)"] = lambda: label_mass(float32, numba_kernel, f, lam,
                                                        numba_kernel.chunk_rows(args.k, 4))
    if args.layout == "transposed" and args.dtype in ("float32", "float64"):
        methods["numba (chunk copy)"] = lambda: _chunk_copy_pass(source, numba_kernel, f, lam,
                                                                 rows)
    methods["numba (no prefetch)"] = _with_swapped(
        methods["numba"], numba_backend, "_sweep_rows", _sweep_with(_prefetch_row=_no_prefetch))
    if not args.no_cache:
        small = ArraySource(scores[:64])  # load the table kernels before timing a build
        label_mass(*with_exp_cache(small, numba_kernel, 64, 1), f, lam, 64)
        cached_source, cached_kernel = with_exp_cache(
            source, numba_kernel, rows, table_cap(source, numba_kernel, rows, None)
        )
        t0 = time.perf_counter()
        label_mass(cached_source, cached_kernel, f, lam, rows)  # builds the tables
        build_time = time.perf_counter() - t0
        methods["numba (cached)"] = lambda: label_mass(cached_source, cached_kernel, f, lam, rows)
    if not args.no_sela:
        exp_cache = np.empty(values.shape, np.float32)
        for start in range(0, args.n, 65536):
            block = values[start:start + 65536]
            np.multiply(block - block.max(axis=1, keepdims=True), np.float32(lam),
                        out=exp_cache[start:start + 65536])
            np.exp(exp_cache[start:start + 65536], out=exp_cache[start:start + 65536])
        c = np.full(args.n, 1.0 / args.n, dtype=np.float32)

        def sela() -> None:
            nonlocal c
            r = np.float32(1.0 / args.k) / (c @ exp_cache)
            c = np.float32(1.0 / args.n) / (exp_cache @ r)

        methods["sela"] = sela
    if args.torch:
        _add_torch_methods(methods, scores, f, lam, None if args.no_sela else exp_cache)
    pool = ThreadPoolExecutor()
    stored = scores if scores.itemsize >= 4 else scores.view(np.uint16)  # 16-bit: the bits
    methods["read (numba)"] = lambda: _read(stored, pool)
    methods["read (S.sum)"] = lambda: stored.sum()
    for name, call in methods.items():
        if name != "numpy":
            call()

    times: dict[str, list[float]] = {name: [] for name in methods}
    base: list[float] = []
    for round_ in range(args.rounds):
        for name, call in methods.items():
            if name == "numpy" and round_ >= args.numpy_rounds:
                continue
            t0 = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t0)
        base.append(times["numba"][-1])
    z = lam * values[:2000].astype(np.float64) + f
    underflow = _UNDERFLOW[np.dtype(np.float64 if args.dtype == "float64" else np.float32)]
    live = float(((z - z.max(axis=1, keepdims=True)) > underflow).mean())

    print(f"N={args.n:,} K={args.k} {args.dtype} {args.layout} lam={lam:g} "
          f"regime={args.regime}, "
          f"{args.rounds} rounds, numba threads={numba.get_num_threads()}, "
          f"{_torch_threads(args.torch)}"
          f"cpu={platform.processor() or platform.machine()} ({os.cpu_count()} logical)")
    print(f"exp inputs above the {'float64' if args.dtype == 'float64' else 'float32'} "
          f"underflow threshold: {100 * live:.1f}%; "
          f"first numba call in this process: {first_call:.2f} s")
    print(f"{'method':<20}{'median ms':>11}{'min ms':>9}{'x numba':>10}{'numba / it':>12}")
    for name, values in times.items():
        if not values:  # --numpy-rounds 0
            continue
        ratios = np.array(values) / np.array(base[:len(values)])
        print(f"{name:<20}{1e3 * np.median(values):>11.1f}{1e3 * min(values):>9.1f}"
              f"{np.median(ratios):>10.2f}{np.median(1 / ratios):>12.2f}")
    if "numba (copy)" in times:
        copy = np.median(np.array(times["numba (copy)"]) / np.array(base))
        float32 = np.median(np.array(base) / np.array(times["numba (float32)"]))
        print(f"medians over rounds: numba (copy) / numba = {copy:.2f}, "
              f"numba / numba (float32) = {float32:.2f}")
    if "sela" in times and "numba (cached)" in times:
        ratios = np.array(times["numba (cached)"]) / np.array(times["sela"])
        print(f"numba (cached) / sela, median over rounds: {np.median(ratios):.3f}")
    if not args.no_cache:
        cache = cached_source.cache
        print(f"cache: built in {build_time:.2f} s (one pass over the scores), "
              f"{cache.nbytes / 1e6:.1f} MB ({cache.n_entries / args.n:.1f} entries per row, "
              f"cap {cache.cap}), {cache.repaired_rows} rows repaired from the scores, "
              f"{cache.builds} chunk builds, {cache.table_passes} chunk passes from tables")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
