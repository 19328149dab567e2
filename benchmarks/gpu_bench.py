"""GPU benchmark: one Sinkhorn iteration against one read of the scores.

At ImageNet scale (N=1,281,167, K=3000) it times, per iteration (median of ``--reps`` after
warm-up, CUDA events): the fused sweep of the torch backend (Triton) in float32 and bfloat16
and of the CuPy backend in float32 and float16; a full solver iteration (from two solves of
different lengths) on these flat scores, where 17 of the 20 passes timed come after the
solve has converged, and on peaked ones, whose solves take about 53 passes (all 20 timed
come before); one read of the input (``torch.sum``); a plain two-matvec torch loop on a
precomputed ``exp`` (how the original code iterates); and POT's ``ot.sinkhorn`` when POT is
installed. It also records the extra GPU memory of a sweep, prints a table of ratios and
writes everything as JSON to the path given as the first argument (or in
``SINKLABEL_BENCH_JSON``), rewriting the file after every measurement so a run cut short
still leaves its figures.

    python benchmarks/gpu_bench.py out.json            # the full size (needs ~50 GB of GPU memory)
    python benchmarks/gpu_bench.py out.json --n 20000  # a quick smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np

LAM = 25.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default=os.environ.get("SINKLABEL_BENCH_JSON"))
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=20)
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to benchmark")
        return 0
    report = Report(args.json, {
        "date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
        "n": args.n, "k": args.k, "lam": LAM, "reps": args.reps, "torch": torch.__version__,
    })
    x32 = flat_scores(args.n, args.k)
    report.measure("read float32 (torch.sum)", lambda: torch_ms(lambda: torch.sum(x32), args.reps))
    bench_torch(report, x32, "float32", args.reps)
    bench_cupy(report, x32, "float32", args.reps)
    bench_narrow(report, x32, args.reps)
    bench_peaked_iterations(report, args.n, args.k)
    torch.cuda.empty_cache()
    report.measure("two-matvec torch loop on precomputed exp, float32",
                   lambda: two_matvec_ms(x32, args.reps))
    torch.cuda.empty_cache()
    report.measure("POT ot.sinkhorn, float32", lambda: pot_ms(x32))
    report.extra["tuned"] = tuned_configs()
    report.extra["graph_errors"] = graph_errors()
    report.write()
    report.table()
    print("launch configurations chosen:", json.dumps(report.extra["tuned"]))
    return 0


def bench_peaked_iterations(report: Report, n: int, k: int) -> None:
    """Solver iterations on peaked scores (a trained network's) in float32 and bfloat16,
    each dtype's copy made and freed in turn."""
    import torch

    from benchmarks.gpu_solve import scores

    x = scores(torch, n, k, "peaked", seed=0)
    for dtype in ("float32", "bfloat16"):
        x = x.to(getattr(torch, dtype))
        report.measure(f"torch solver iteration on peaked scores (wall clock), {dtype}",
                       lambda x=x: solver_iteration_ms(x))
    del x
    torch.cuda.empty_cache()


def bench_narrow(report: Report, x32, reps: int) -> None:
    """float16 (CuPy) and bfloat16 (torch) copies of the scores, one at a time."""
    import torch

    x16 = x32.half()
    report.measure("read float16 (torch.sum)", lambda: torch_ms(lambda: torch.sum(x16), reps))
    bench_cupy(report, x16, "float16", reps)
    x16 = x32.to(torch.bfloat16)
    report.measure("read bfloat16 (torch.sum)", lambda: torch_ms(lambda: torch.sum(x16), reps))
    bench_torch(report, x16, "bfloat16", reps)


class Report:
    """Measurements in milliseconds (or bytes), written to JSON after each one."""

    def __init__(self, path: str | None, meta: dict):
        self.path = Path(path) if path else None
        self.meta = meta
        self.results: dict[str, float | str] = {}
        self.extra: dict = {}

    def measure(self, name: str, run: Callable[[], float]) -> None:
        try:
            value = run()
        except Exception as exc:  # one failing measurement must not lose the others
            value = f"failed: {type(exc).__name__}: {exc}"[:500]
        self.results[name] = value
        shown = value if isinstance(value, str) else f"{value:12.4g}"
        print(f"{name:60s} {shown}", flush=True)
        self.write()

    def write(self) -> None:
        if self.path is not None:
            payload = {**self.meta, "results": self.results, "ratios": self.ratios(), **self.extra}
            self.path.write_text(json.dumps(payload, indent=2))

    def ratios(self) -> dict[str, float]:
        """Each timing divided by one read of the same dtype (float32 for the baselines)."""
        out = {}
        for name, value in self.results.items():
            timed = name.endswith(("float32", "float16", "bfloat16")) and "bytes" not in name
            if not timed or name.startswith("read") or isinstance(value, str):
                continue
            dtype = next((d for d in ("bfloat16", "float16", "float32") if d in name), "float32")
            read = self.results.get(f"read {dtype} (torch.sum)")
            if isinstance(read, float):
                out[name] = value / read
        return out

    def table(self) -> None:
        print(f"\n{self.meta['device']}, N={self.meta['n']:,}, K={self.meta['k']}")
        print(f"{'measurement':60s} {'ms':>10s} {'x read':>8s}")
        ratios = self.ratios()
        for name, value in self.results.items():
            if isinstance(value, str):
                print(f"{name:60s} {value}")
            elif "bytes" in name:
                dtype = name.rsplit(", ", 1)[-1]
                share = value / self.extra.get("input_bytes", {}).get(dtype, np.inf)
                print(f"{name:60s} {value / 2**20:8.1f} MiB = {100 * share:.2f}% of the input")
            else:
                ratio = f"{ratios[name]:8.2f}" if name in ratios else ""
                print(f"{name:60s} {value:10.4g} {ratio}")


def flat_scores(n: int, k: int):
    """Log-softmax of Gaussian logits of scale 3 (an untrained network), made on the GPU."""
    import torch

    generator = torch.Generator(device="cuda").manual_seed(0)
    x = torch.empty((n, k), device="cuda")
    for start in range(0, n, 65536):
        block = x[start:start + 65536]
        block.normal_(generator=generator).mul_(3.0)
        block.copy_(torch.log_softmax(block, dim=1))
    return x


def torch_ms(run: Callable[[], object], reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``run`` between CUDA events on torch's current stream."""
    import torch

    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    return statistics.median(times)


def cupy_ms(run: Callable[[], object], reps: int, warmup: int = 3) -> float:
    """Median milliseconds of ``run`` between CUDA events on CuPy's current stream."""
    import cupy as cp

    for _ in range(warmup):
        run()
    times = []
    for _ in range(reps):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        run()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop))
    return statistics.median(times)


def bench_torch(report: Report, x, dtype: str, reps: int) -> None:
    import torch

    from sinklabel.kernels import _buffers, get_kernel

    kernel, f = get_kernel("torch"), np.zeros(x.shape[1])
    report.measure(f"torch sweep, {dtype}", lambda: torch_ms(lambda: kernel.sweep(x, f, LAM), reps))

    def extra_bytes() -> float:
        _buffers.release()  # the kept sweep buffers count too: measured from none
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        for _ in range(3):  # the second records a CUDA graph, the third replays it
            kernel.sweep(x, f, LAM)
        kernel.best(x, f, LAM)
        return float(torch.cuda.max_memory_allocated() - before)

    report.measure(f"torch extra bytes (sweep + labels), {dtype}", extra_bytes)
    report.extra.setdefault("input_bytes", {})[dtype] = x.numel() * x.element_size()

    report.measure(f"torch solver iteration (wall clock), {dtype}",
                   lambda: solver_iteration_ms(x))


def solver_iteration_ms(x, repeats: int = 3) -> float:
    """Milliseconds per pass of a torch solve of ``x``: solves of 22 and 2 passes, differenced
    (what a solve does once, and its first passes, drop out), each the fastest of
    ``repeats``: the difference of two single solves carries all of their noise."""
    import torch

    def solve(passes: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        solve_passes(x, passes)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    solve(2)
    short = min(solve(2) for _ in range(repeats))
    return (min(solve(22) for _ in range(repeats)) - short) / 20 * 1e3


def solve_passes(x, passes: int) -> None:
    """A solve of exactly ``passes`` passes (a tolerance no pass meets, its warning muted)."""
    import sinklabel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        sinklabel.sinkhorn(x, x.shape[1], lam=LAM, tol=1e-12, max_iter=passes)


def bench_cupy(report: Report, x, dtype: str, reps: int) -> None:
    try:
        import cupy as cp
    except ImportError:
        report.measure(f"cupy sweep, {dtype}", lambda: "skipped: cupy not installed")
        return
    from sinklabel.kernels import _buffers, get_kernel

    y = cp.from_dlpack(x)
    kernel, f = get_kernel("cupy"), np.zeros(x.shape[1])
    report.measure(f"cupy sweep, {dtype}", lambda: cupy_ms(lambda: kernel.sweep(y, f, LAM), reps))

    def extra_bytes() -> float:
        pool, peak = cp.cuda.MemoryPool(), [0]

        def tracking_malloc(size):
            memory = pool.malloc(size)
            peak[0] = max(peak[0], pool.used_bytes())
            return memory

        _buffers.release()  # the kept sweep buffers count too: measured from none
        cp.cuda.set_allocator(tracking_malloc)
        try:
            kernel.sweep(y, f, LAM)
            kernel.best(y, f, LAM)
        finally:
            cp.cuda.set_allocator(cp.get_default_memory_pool().malloc)
        return float(peak[0])

    report.measure(f"cupy extra bytes (sweep + labels), {dtype}", extra_bytes)
    report.extra.setdefault("input_bytes", {})[dtype] = x.numel() * x.element_size()
    if dtype == "float32":
        def agreement() -> float:
            torch_mass = get_kernel("torch").sweep(x, f, LAM)
            return float(np.abs(kernel.sweep(y, f, LAM) - torch_mass).max() / torch_mass.max())

        report.measure("torch vs cupy sweep: max relative difference", agreement)


def two_matvec_ms(x, reps: int) -> float:
    """The original code's iteration: alpha and beta updates, each one matrix-vector product
    over a precomputed exp(lam * (S - rowmax)) (float32, another N x K array)."""
    import torch

    n, k = x.shape
    p = torch.empty_like(x)
    for start in range(0, n, 65536):
        block = x[start:start + 65536]
        torch.exp(LAM * (block - block.amax(dim=1, keepdim=True)), out=p[start:start + 65536])
    r = torch.full((k,), 1.0 / k, device=x.device)
    c = torch.full((n,), 1.0 / n, device=x.device)
    beta = torch.ones(n, device=x.device)

    def iteration() -> None:
        nonlocal beta
        alpha = r / (beta @ p)
        beta = c / (p @ alpha)

    return torch_ms(iteration, reps)


def pot_ms(x) -> float:
    """POT's ot.sinkhorn per iteration: (30 iterations - 10 iterations) / 20. reg=1 on -S keeps
    its kernel free of underflow (which would stop it early); the cost per iteration does not
    depend on reg."""
    try:
        import ot
    except ImportError:
        return "skipped: POT not installed"  # type: ignore[return-value]
    import torch

    n, k = x.shape
    a = torch.full((n,), 1.0 / n, device=x.device)
    b = torch.full((k,), 1.0 / k, device=x.device)
    cost = -x

    def run(iterations: int) -> float:
        torch.cuda.synchronize()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ot.sinkhorn(a, b, cost, 1.0, numItermax=iterations, stopThr=0.0)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    run(10)
    return (run(30) - run(10)) / 20 * 1e3


def graph_errors() -> list[str]:
    """Why the torch backend stopped recording CUDA graphs, if it did (empty: it did not)."""
    from sinklabel.kernels import _buffers

    return list(_buffers.GRAPH_ERRORS)


def tuned_configs() -> dict:
    """The launch configurations the kernels chose on this device, and those ruled out."""
    out = {}
    try:
        from sinklabel.kernels import _triton

        out["triton"] = _triton.tuned_configs()
    except ImportError:
        pass
    try:
        from sinklabel.kernels import cupy as cupy_kernel

        out["cupy"] = cupy_kernel.tuned_configs()
    except ImportError:
        pass
    return out


if __name__ == "__main__":
    sys.exit(main())
