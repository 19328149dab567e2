"""Compare sinklabel's backends with the solvers a user would pick instead, on the same scores.

    python -m benchmarks.compare [--n N] [--k K] [--regime flat|peaked|both]
                                 [--dtype float32|float64] [--sizes N1 N2 ...] [--out DIR]
                                 [--quick]

For each regime (flat scores, as from an untrained network; peaked, clustered ones, as from
a trained network) the scores come from ``sinklabel.datasets.make_scores``, and every method
runs on the same array, already on its device:

- every installed sinklabel backend, on each array library and device it takes;
- the original self-labelling implementation (two matrix-vector products on a precomputed
  ``exp``, float32 and float64), on NumPy and torch;
- POT's ``ot.sinkhorn`` and ``ot.sinkhorn_log`` on NumPy and torch arrays, when POT imports;
- OTT-JAX's ``Sinkhorn``, plain and with Anderson acceleration, on a JAX array on the CPU,
  when OTT-JAX imports (compiled before any clock starts);
- the floor: the time of one read of the scores on that device, what no iteration can beat.

Measured per method: the time of one iteration (timed on its own, from a state the method's
own solve reaches, median of ``--repeat`` samples; POT's and OTT-JAX's, whose loops cannot be
entered midway, from whole runs of two lengths, differenced), iterations to the tolerance (L1
label-marginal error, the same measure for every method; the iteration cap ends peaked runs),
total time of a full solve, and peak extra memory (on a separate short run, so that tracing
never slows a timed one).
Prints a Markdown table of ratios (to the floor and to the best peer on the same device),
writes ``compare.json`` and plots time per iteration against N (``--sizes``) to
``compare.png`` in ``--out`` (where matplotlib is installed: ``pip install 'sinklabel[bench]'``;
without it the run says so at its start and writes the table and the JSON only).
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import platform
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np

import sinklabel
from sinklabel.datasets import REGIMES, make_scores

from ._methods import NEVER, Method, discover, place
from ._report import Record, add_ratios, markdown_table, plot, write_json
from ._timing import PeakMemory, floor_seconds, seconds_per_call, seconds_per_extra_iteration, timed

#: Iterations of the untimed run on which peak memory is measured (it peaks in the first).
MEMORY_RUN = 2
#: Whole runs differenced where no single iteration can be timed (POT): 1 iteration against
#: 1 + a multiple of 10, so both hold their share of POT's error check (every 10th iteration,
#: from the first); the extra iterations are at most MAX_EXTRA.
DIFFERENCE_SHORT, DIFFERENCE_STRIDE, MAX_EXTRA = 1, 10, 640
QUICK = {"n": 4_000, "k": 40, "sizes": [], "max_iter": 200, "budget": 5.0, "repeat": 3}
REPEAT = 5


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.compare", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--n", type=int, default=200_000, help="rows of the full comparison")
    parser.add_argument("--k", type=int, default=1000, help="labels")
    parser.add_argument("--regime", choices=(*REGIMES, "both"), default="both")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--lam", type=float, default=25.0)
    parser.add_argument("--tol", type=float, default=1e-3,
                        help="L1 label-marginal error at which a solve counts as done")
    parser.add_argument("--max-iter", type=int, default=300,
                        help="iteration cap for every method (peaked runs end here)")
    parser.add_argument("--sizes", type=int, nargs="*", default=None,
                        help="further N for the per-iteration plot (default N/8, N/4, N/2)")
    parser.add_argument("--budget", type=float, default=300.0,
                        help="skip a peer's full solve when its cap would take longer than "
                             "this many seconds at its measured time per iteration (reported "
                             "as skipped; sinklabel's backends always run)")
    parser.add_argument("--methods", nargs="*", default=None,
                        help="only methods whose name contains one of these")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"timed samples of each per-iteration measurement, the median "
                             f"kept (default {REPEAT}; {QUICK['repeat']} with --quick)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run: N={QUICK['n']}, K={QUICK['k']}, cap "
                             f"{QUICK['max_iter']} (well under a minute)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.quick:
        args.n, args.k, args.max_iter = QUICK["n"], QUICK["k"], QUICK["max_iter"]
        args.budget = min(args.budget, QUICK["budget"])
        args.sizes = QUICK["sizes"] if args.sizes is None else args.sizes
    if args.repeat is None:
        args.repeat = QUICK["repeat"] if args.quick else REPEAT
    for name in ("n", "k", "max_iter", "repeat"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1")
    if not (args.lam > 0 and args.tol > 0):
        raise SystemExit("--lam and --tol must be > 0")
    if args.sizes and min(args.sizes) < 1:
        raise SystemExit("--sizes must be >= 1")
    sizes = sorted({*([args.n // 8, args.n // 4, args.n // 2] if args.sizes is None
                      else args.sizes), args.n} - {0})
    methods = discover(args.methods)
    if not methods:
        raise SystemExit("no method matches --methods")
    regimes = list(REGIMES) if args.regime == "both" else [args.regime]
    args.out.mkdir(parents=True, exist_ok=True)
    plotting = importlib.util.find_spec("matplotlib") is not None
    if not plotting:
        _say("matplotlib is not installed (pip install 'sinklabel[bench]'): no compare.png, "
             "only the table and compare.json")

    records: list[Record] = []
    floors: dict[tuple[str, int, str], float] = {}
    for regime in regimes:
        _say(f"{regime}: generating {max(sizes)} x {args.k} {args.dtype} scores")
        host = make_scores(max(sizes), args.k, regime=regime, seed=args.seed,
                           dtype=np.dtype(args.dtype)).scores
        for n in sizes:
            rows = host[:n]
            for library, device in dict.fromkeys((m.library, m.device) for m in methods):
                if (regime, n, device) not in floors:
                    floors[regime, n, device] = floor_seconds(place(rows, library, device),
                                                              library, device)
            for method in methods:
                record = _measure(method, rows, args, regime, full=n == args.n)
                records.append(record)
                _say(f"{regime} N={n}: {method.name}: {_summary(record)}")
    add_ratios(records, floors)

    config = _config(args, sizes)
    for regime in regimes:
        floor_ms = ", ".join(f"{d} {s * 1e3:.3g} ms" for (g, n, d), s in floors.items()
                             if g == regime and n == args.n)
        print(f"\n### {regime} scores: N={args.n}, K={args.k}, {args.dtype}, lam={args.lam:g}, "
              f"tol={args.tol:g}, cap {args.max_iter} iterations; floor {floor_ms}\n")
        print(markdown_table(records, regime, args.n))
    write_json(args.out / "compare.json", config, records, floors)
    written = [args.out / "compare.json"]
    if plotting:
        plot(args.out / "compare.png", records, floors,
             f"K={args.k}, {args.dtype}, lam={args.lam:g} ({config['machine']})")
        written.append(args.out / "compare.png")
    print(f"\nwrote {' and '.join(map(str, written))}")
    return 0


def _measure(method: Method, rows: np.ndarray, args: argparse.Namespace, regime: str,
             full: bool) -> Record:
    record: Record = {"regime": regime, "n": rows.shape[0], "k": rows.shape[1],
                      "method": method.name, "family": method.family,
                      "library": method.library, "device": method.device}
    options = {"lam": args.lam, "tol": args.tol}
    try:
        scores = method.place(rows)
        record["per_iter_s"], record["per_iter_timing"] = _per_iteration(
            method, scores, options, args.max_iter, args.repeat)
        if not full:
            return record
        estimate = (record["per_iter_s"] or 0.0) * args.max_iter
        if estimate > args.budget and method.family == "peer":
            record.update(total_s=None, skipped=f"skipped: the cap would take ~{estimate:.0f} s")
            return record
        if method.prepare is not None:  # compiled outside the memory probe and the clock
            method.prepare(scores, max_iter=MEMORY_RUN, stop=False, **options)
            method.prepare(scores, max_iter=args.max_iter, stop=True, **options)
        # Memory peaks in the first iterations; measured on a short run the clock never sees.
        with PeakMemory(method.library, method.device) as memory:
            method.solve(scores, max_iter=MEMORY_RUN, stop=False, **options)
        seconds, outcome = timed(
            lambda: method.solve(scores, max_iter=args.max_iter, stop=True, **options),
            method.library, method.device)
    except Exception as exc:  # a peer failing is a result to report, not a reason to stop
        record["failed"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        record.setdefault("per_iter_s", None)
        if full:
            record["total_s"] = None
        return record
    note = outcome.note
    if outcome.stopped_by == "cap":
        note = f"not converged in {outcome.n_iter}" + (f"; {note}" if note else "")
    record.update(total_s=seconds, n_iter=outcome.n_iter, error=outcome.error,
                  stopped_by=outcome.stopped_by, note=note, peak_bytes=memory.peak)
    return record


def _per_iteration(method: Method, scores: Any, options: dict[str, float], max_iter: int,
                   repeat: int) -> tuple[float | None, str]:
    """Seconds per iteration, and how they were timed: "one iteration" where the method can
    run one from a state its solve reaches, else "difference" of whole runs (set-up cancels).
    ``options``: lam and tol of the comparison."""
    if method.one_iteration is not None:
        step = method.one_iteration(scores, max_iter=max_iter, **options)
        return seconds_per_call(step, method.library, method.device, repeat), "one iteration"

    fixed_length = {"lam": options["lam"], "tol": NEVER, "stop": False}

    def run(length: int) -> int:
        return method.solve(scores, max_iter=length, **fixed_length).n_iter

    prepare = method.prepare and (
        lambda length: method.prepare(scores, max_iter=length, **fixed_length))
    seconds = seconds_per_extra_iteration(
        run, method.library, method.device, short=DIFFERENCE_SHORT, stride=DIFFERENCE_STRIDE,
        repeat=repeat, max_extra=MAX_EXTRA, prepare=prepare)
    return seconds, "difference"


def _summary(record: Record) -> str:
    if record.get("failed"):
        return record["failed"]
    text = f"{record['per_iter_s'] * 1e3:.3g} ms/iter" if record.get("per_iter_s") else "-"
    if record.get("skipped"):
        text += f", {record['skipped']}"
    elif record.get("total_s") is not None:
        text += (f", {record['n_iter']} iterations ({record['stopped_by']}), "
                 f"L1 {record['error']:.2g}, {record['total_s']:.3g} s")
    return text


def _config(args: argparse.Namespace, sizes: list[int]) -> dict[str, Any]:
    versions = {"sinklabel": sinklabel.__version__, "numpy": np.__version__}
    for name in ("torch", "ot", "numba", "cupy", "jax", "ott"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs"
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        machine += f", {torch.cuda.get_device_name()}"
    return {
        "date": datetime.date.today().isoformat(), "machine": machine, "versions": versions,
        "n": args.n, "k": args.k, "dtype": args.dtype, "lam": args.lam, "tol": args.tol,
        "max_iter": args.max_iter, "sizes": sizes, "seed": args.seed, "repeat": args.repeat,
        "backends": sinklabel.available_backends(),
    }


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        raise SystemExit(main())
