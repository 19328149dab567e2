"""Where a fused GPU sweep's time goes: the main kernel, the reduction of its partial sums,
and the device's idle gaps between them, for several launch configurations (the torch
backend also without its CUDA graph; ``--per-sm`` also varies the programs per
multiprocessor), at ImageNet scale.

The tuners time the main kernel alone; the issue's target is the whole sweep against one read.
This script shows the difference: per configuration it times the sweep (median of ``--reps``,
CUDA events, as ``gpu_bench.py``) and profiles a few sweeps with ``torch.profiler`` (CUPTI sees
the Triton, NVRTC and CuPy kernels alike) to split the time by kernel.

    python benchmarks/gpu_sweep_breakdown.py out.json
    python benchmarks/gpu_sweep_breakdown.py out.json --n 200000   # a quick run
    python benchmarks/gpu_sweep_breakdown.py out.json --per-sm 32 16 8 4
    python benchmarks/gpu_sweep_breakdown.py out.json --regime peaked  # a trained network's
    python benchmarks/gpu_sweep_breakdown.py --host                # the host's share only

``--host`` times sweeps of a 2048-row input, whose kernels take microseconds, so the wall
clock per sweep is the host's work around them (argument checks, launches, the sync and
the copy back), then solver passes over it (the L-BFGS step on K-vectors on top), and
prints where a profile of each spends it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.gpu_bench import LAM, cupy_ms, flat_scores, torch_ms
from benchmarks.gpu_solve import scores

#: Launch configurations compared per (backend, dtype): the last H200 run's picks, their
#: nearest rivals and the CuPy float16 pick's column-weighted twin (see the tuner's fields
#: in ``kernels/_triton.py`` and ``kernels/cupy.py``).
CONFIGS = {
    ("torch", "float32"): [(1, 8, True, 0, 1), (1, 4, True, 0, 1)],
    ("torch", "bfloat16"): [(1, 4, False, 0, 3), (1, 2, False, 0, 3), (1, 4, True, 0, 1)],
    ("cupy", "float32"): [(4, 128, 6, 1, 1)],
    ("cupy", "float16"): [(8, 128, 3, 1, 0, 0, 0, 4), (8, 128, 3, 1, 0, 0, 0, 4, 1),
                          (8, 64, 6, 1, 0, 0, 0, 4)],
}
#: Programs per multiprocessor measured by default (``--per-sm 32 16 8 4`` compares them).
PROGRAMS_PER_SM = (32,)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?")
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=3000)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--per-sm", type=int, nargs="+", default=list(PROGRAMS_PER_SM))
    parser.add_argument("--host", action="store_true", help="only the host's share")
    parser.add_argument("--regime", choices=("flat", "peaked"), default="flat",
                        help="the scores swept (default: %(default)s)")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    if args.host:
        for library, dtype in (("torch", torch.bfloat16), ("cupy", torch.float16)):
            host_overhead(library, flat_scores(2048, args.k).to(dtype))
        return 0
    rows: list[dict] = []
    report = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
              "n": args.n, "k": args.k, "lam": LAM, "reps": args.reps,
              "regime": args.regime, "rows": rows}
    x32 = scores(torch, args.n, args.k, "peaked", seed=0) if args.regime == "peaked" else (
        flat_scores(args.n, args.k))
    for library, x in (("torch", x32), ("cupy", x32), ("cupy", x32.half()),
                       ("torch", x32.to(torch.bfloat16))):
        read = torch_ms(lambda x=x: torch.sum(x), args.reps)
        dtype = str(x.dtype).removeprefix("torch.")
        # Every configuration, and the torch backend's first also without its CUDA graph
        # (kernels launched one by one).
        configs = CONFIGS[(library, dtype)]
        variants = [(True, configs)] + ([(False, configs[:1])] if library == "torch" else [])
        for graphs, chosen in variants:
            for config in chosen:
                for per_sm in args.per_sm:
                    row = measure(library, x, config, per_sm, args.reps, graphs)
                    row.update(library=library, dtype=dtype, read_ms=read,
                               x_read=row["sweep_ms"] / read if "sweep_ms" in row else None)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        Path(args.json).write_text(json.dumps(report, indent=1))
    table(rows)
    return 0


def measure(library: str, x, config: tuple, per_sm: int, reps: int,
            graphs: bool = True) -> dict:
    """The sweep's time with ``config`` forced and at most ``per_sm`` programs per
    multiprocessor (with the torch backend's CUDA graph or not), and the device time of each
    kernel it launches (milliseconds per sweep)."""
    import torch

    from sinklabel.kernels import _buffers, get_kernel

    f = np.zeros(x.shape[1])
    row = {"config": list(config), "programs_per_sm": per_sm, "graphs": graphs}
    _buffers.RECORD_GRAPHS = graphs
    _buffers.release()  # no CUDA graph recorded with the other grid is replayed
    try:
        module, data, timer = _backend(library, x)
        module.PROGRAMS_PER_SM = per_sm
        module.TUNER.chosen[_key(library, data, module)] = config
        kernel = get_kernel(library)
        kernel.sweep(data, f, LAM)
        row["sweep_ms"] = timer(lambda: kernel.sweep(data, f, LAM), reps)
        row["kernels_ms"] = kernel_times(lambda: kernel.sweep(data, f, LAM))
        row["idle_ms"] = row["sweep_ms"] - sum(row["kernels_ms"].values())
    except Exception as exc:  # one failing configuration must not lose the others
        row["failed"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        _buffers.RECORD_GRAPHS = True
    row["graph_errors"] = list(_buffers.GRAPH_ERRORS)
    torch.cuda.synchronize()
    return row


def _backend(library: str, x) -> tuple[object, object, Callable]:
    if library == "torch":
        from sinklabel.kernels import _triton

        return _triton, x, torch_ms
    import cupy as cp

    from sinklabel.kernels import cupy as cupy_kernel

    return cupy_kernel, cp.from_dlpack(x), cupy_ms


def _key(library: str, data, module) -> tuple:
    """The tuner's key for this input (see each backend's sweep)."""
    if library == "torch":
        return ("sweep", data.dtype, data.shape[1])
    return (data.dtype.name, data.shape[1], tuple(module._sweep_plan(data)))


def host_overhead(library: str, x, sweeps: int = 300) -> None:
    """Wall clock per sweep of a small input, then per pass of whole solves of it (the
    solver's own host work on top), and the functions that take each."""
    import warnings

    import sinklabel
    from sinklabel.kernels import get_kernel

    _, data, _ = _backend(library, x)
    kernel, f = get_kernel(library), np.zeros(x.shape[1])

    def solve():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            return sinklabel.sinkhorn(data, x.shape[1], lam=LAM, tol=1e-30, max_iter=100)

    for what, run, passes in (("sweep", lambda: kernel.sweep(data, f, LAM), 1),
                              ("solver pass", solve, 100)):
        run()
        start = time.perf_counter()
        for _ in range(sweeps // passes):
            run()
        micros = (time.perf_counter() - start) / (sweeps // passes * passes) * 1e6
        print(f"\n{library} {x.dtype}: {micros:.0f} us of wall clock per {what} of {x.shape}")
        _profile(run, sweeps // passes)


def _profile(run: Callable[[], object], times: int) -> None:
    """Where ``times`` calls of ``run`` spend the host's time."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(times):
        run()
    profiler.disable()
    pstats.Stats(profiler).sort_stats("tottime").print_stats(14)


def kernel_times(run: Callable[[], object], sweeps: int = 5) -> dict[str, float]:
    """Device milliseconds per sweep of each kernel and copy ``run`` launches."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(sweeps):
            run()
        torch.cuda.synchronize()
    out: dict[str, float] = {}
    for event in prof.key_averages():
        micros = getattr(event, "self_device_time_total", None)
        if micros is None:
            micros = getattr(event, "self_cuda_time_total", 0.0)
        if micros > 0:
            name = event.key[:60]
            out[name] = out.get(name, 0.0) + micros / sweeps / 1e3
    return out


def table(rows: list[dict]) -> None:
    print(f"\n{'backend':7s} {'dtype':9s} {'config':28s} {'/SM':>4s} {'graph':>5s} "
          f"{'sweep':>7s} {'x read':>7s} {'main':>7s} {'rest':>7s} {'idle':>7s}")
    for row in rows:
        if "failed" in row:
            print(row["library"], row["dtype"], row["config"], row["programs_per_sm"],
                  row["failed"])
            continue
        kernels = row["kernels_ms"]
        main_ms = max(kernels.values(), default=float("nan"))
        rest = sum(kernels.values()) - main_ms
        print(f"{row['library']:7s} {row['dtype']:9s} {str(row['config']):28s} "
              f"{row['programs_per_sm']:4d} {str(row['graphs']):>5s} {row['sweep_ms']:7.3f} "
              f"{row['x_read']:7.3f} "
              f"{main_ms:7.3f} {rest:7.3f} {row['idle_ms']:7.3f}")
    medians = [r["x_read"] for r in rows if r.get("x_read")]
    if medians:
        print(f"median x read over all rows: {statistics.median(medians):.3f}")


if __name__ == "__main__":
    sys.exit(main())
