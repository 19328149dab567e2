"""Where the wall clock of a fused GPU sweep goes at ImageNet scale, on one clock for the host
and the device: a profile of a few sweeps (the host's Python calls, its CUDA API calls and the
device's kernels), written as a Chrome trace, and per sweep the time the device waits for the
host before the main kernel starts and after the last kernel ends.

``gpu_sweep_breakdown.py`` splits a sweep's time into kernels and "idle"; this script shows
what the host does during that idle time. With ``--solve PASSES`` it also profiles a torch
solve of that many passes per dtype: the device's idle time between one pass's main kernel and
the next is the sweep's host work plus the solver's own (L-BFGS direction, line search), which
is what a solver iteration costs beyond a sweep.

    python benchmarks/gpu_timeline.py OUT_DIR                  # traces and a summary
    python benchmarks/gpu_timeline.py OUT_DIR --solve 12       # ... and two profiled solves
    python benchmarks/gpu_timeline.py --ncu cupy float16       # sweeps for Nsight Compute

``--ncu`` runs one sweep of one backend and dtype per configuration of its ``CONFIGS`` row, so
that a profile holds exactly those main kernels (at base clocks: ncu locks them):

    ncu -k regex:"_sweep_fused|sink_sweep" --section SpeedOfLight --section WarpStateStats \
        --section SchedulerStats python benchmarks/gpu_timeline.py --ncu cupy float16
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np

from benchmarks.gpu_bench import LAM, cupy_ms, flat_scores, solve_passes, torch_ms
from benchmarks.gpu_sweep_breakdown import CONFIGS, _backend, _key

#: The backends and dtypes profiled, each with the first configuration of its ``CONFIGS`` row.
CASES = (("torch", "float32"), ("torch", "bfloat16"), ("cupy", "float16"), ("cupy", "float32"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default="bench-results")
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=3000)
    parser.add_argument("--sweeps", type=int, default=5)
    parser.add_argument("--ncu", nargs=2, metavar=("LIBRARY", "DTYPE"))
    parser.add_argument("--solve", type=int, default=0, metavar="PASSES",
                        help="also profile a torch solve of PASSES passes per dtype")
    args = parser.parse_args(argv)

    import torch

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    x32 = flat_scores(args.n, args.k)
    if args.ncu:
        library, dtype = args.ncu
        x = x32.to(getattr(torch, dtype))
        del x32
        for config in CONFIGS[(library, dtype)]:
            forced_sweep(library, x, config)
        torch.cuda.synchronize()
        return 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = []
    for library, dtype in CASES:
        x = x32.to(getattr(torch, dtype))
        sweep = forced_sweep(library, x)
        timer = torch_ms if library == "torch" else cupy_ms
        row = {"library": library, "dtype": dtype, "config": list(CONFIGS[(library, dtype)][0]),
               "read_ms": torch_ms(lambda x=x: torch.sum(x), 10), "sweep_ms": timer(sweep, 10)}
        trace = out / f"trace_{library}_{dtype}.json.gz"
        row["sweeps"] = profile(sweep, args.sweeps, trace)
        record(summary, row, out)
        del x
    for dtype in ("float32", "bfloat16") if args.solve else ():
        x = x32.to(getattr(torch, dtype))
        row = {"library": "torch", "dtype": dtype, "solve_passes": args.solve,
               **profile_solve(x, args.solve, out / f"trace_solve_torch_{dtype}.json.gz")}
        record(summary, row, out)
        del x
    return 0


def record(summary: list[dict], row: dict, out: Path) -> None:
    """Add a row to ``timeline.json`` (rewritten each time, so a run cut short keeps its
    rows) and print it, without the long list of every gap."""
    summary.append(row)
    print(json.dumps({k: v for k, v in row.items() if k != "between_all_us"}), flush=True)
    (out / "timeline.json").write_text(json.dumps(summary, indent=1))


def forced_sweep(library: str, x, config: tuple | None = None):
    """A sweep of ``x`` by ``library`` with ``config``, by default the first configuration of
    its ``CONFIGS`` row (no tuning: the timeline is about the host's share, not the choice of
    kernel), once; returns a function that sweeps again."""
    from sinklabel.kernels import get_kernel

    module, data, _ = _backend(library, x)
    dtype = str(x.dtype).removeprefix("torch.")
    chosen = CONFIGS[(library, dtype)][0] if config is None else config
    module.TUNER.chosen[_key(library, data, module)] = chosen
    kernel, f = get_kernel(library), np.zeros(x.shape[1])
    kernel.sweep(data, f, LAM)
    return lambda: kernel.sweep(data, f, LAM)


def profile(sweep, sweeps: int, trace: Path) -> list[dict]:
    """Profile ``sweeps`` sweeps (each in its own ``record_function`` range), write the Chrome
    trace to ``trace`` (gzipped) and return, per sweep, the device's waits and the host's
    CUDA calls (microseconds)."""
    from torch.profiler import record_function

    def sweeps_in_ranges() -> None:
        for _ in range(sweeps):
            with record_function("sinklabel_sweep"):
                sweep()

    events = _traced(sweeps_in_ranges, trace)
    return [split(span, events) for span in events
            if span.get("name") == "sinklabel_sweep" and span.get("cat") == "user_annotation"]


def profile_solve(x, passes: int, trace: Path) -> dict:
    """One torch solve of ``passes`` passes of ``x`` (a first one outside the profile tunes,
    compiles and records the CUDA graph), profiled; its trace goes to ``trace`` and
    :func:`between_passes` summarises it."""
    solve_passes(x, passes)
    return between_passes(_traced(lambda: solve_passes(x, passes), trace))


def between_passes(events: list[dict]) -> dict:
    """The main kernels of a profiled solve (every sweep kernel at least half as long as the
    longest: one per pass; the labels' kernel after the last pass is not one) and the
    device's idle time from the end of one to the start of the next (microseconds; the
    median, and every gap in order)."""
    kernels = [e for e in events if e.get("ph") == "X" and e.get("cat") == "kernel"
               and "sweep" in e.get("name", "")]
    longest = max((e["dur"] for e in kernels), default=0.0)
    main = sorted((e for e in kernels if e["dur"] >= longest / 2), key=lambda e: e["ts"])
    gaps = [b["ts"] - (a["ts"] + a["dur"]) for a, b in pairwise(main)]
    return {"passes_seen": len(main),
            "main_us": float(np.median([e["dur"] for e in main])) if main else None,
            "between_us": float(np.median(gaps)) if gaps else None,
            "between_all_us": [round(g, 1) for g in gaps]}


def _traced(run, trace: Path) -> list[dict]:
    """The Chrome-trace events of ``run()`` profiled on the host (with Python stacks) and the
    device, from a synchronised start to a synchronised end; also written to ``trace``
    (gzipped)."""
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.cuda.synchronize()
    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA],
                       with_stack=True) as prof:
        run()
        torch.cuda.synchronize()
    plain = trace.with_suffix("")
    prof.export_chrome_trace(str(plain))
    events = json.loads(plain.read_text())["traceEvents"]
    with gzip.open(trace, "wt") as handle:
        json.dump(events, handle)
    plain.unlink()
    return events


def split(span: dict, events: list[dict]) -> dict:
    """One sweep's wall clock: the device's wait before its longest kernel, the kernels, the
    wait after the last one, and the host's CUDA runtime and driver calls by name."""
    start, stop = span["ts"], span["ts"] + span["dur"]
    inside = [e for e in events if e.get("ph") == "X" and start <= e["ts"] < stop]
    device = sorted((e for e in inside if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")),
                    key=lambda e: e["ts"])
    api: dict[str, float] = {}
    for e in inside:
        if e.get("cat") in ("cuda_runtime", "cuda_driver"):
            api[e["name"]] = api.get(e["name"], 0.0) + e["dur"]
    if not device:
        return {"wall_us": span["dur"], "api_us": api}
    main = max(device, key=lambda e: e["dur"])
    return {"wall_us": span["dur"],
            "before_main_us": main["ts"] - start,
            "main_us": main["dur"],
            "after_main_us": stop - (main["ts"] + main["dur"]),
            "after_last_us": stop - max(e["ts"] + e["dur"] for e in device),
            "device": [[e["name"][:40], round(e["ts"] - start, 1), e["dur"]] for e in device],
            "api_us": api}


if __name__ == "__main__":
    sys.exit(main())
