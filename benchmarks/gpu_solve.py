"""GPU end-to-end: full ``sinkhorn`` solves at ImageNet scale in both score regimes.

For each backend (torch: float32 and bfloat16; CuPy: float32) and regime (flat: an untrained
network's Gaussian logits of scale 3; peaked: each row ~10 nats above the rest on its
cluster, cluster sizes differing by 5%), it solves from a cold start and reports passes,
convergence, wall time (synchronised), time per pass and the extra GPU memory; then it
drifts the scores slightly (as between two label updates in training) and solves again from
the previous potentials. Scores are generated on the GPU. JSON goes to the path in argv[1]
(rewritten after every measurement).

    python benchmarks/gpu_solve.py out.json [--n 1281167 --k 3000]
"""

from __future__ import annotations

import argparse
import json
import time
import warnings

LAM = 25.0


def scores(torch, n: int, k: int, regime: str, seed: int):
    """Log-softmax scores of shape (n, k) in float32 on the GPU, built in place."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn((n, k), device="cuda", generator=gen)
    if regime == "flat":
        x.mul_(3.0)
    else:
        weights = (1.0 + 0.05 * torch.randn(k, device="cuda", generator=gen)).clamp_(min=0.1)
        truth = torch.multinomial(weights, n, replacement=True, generator=gen)
        x[torch.arange(n, device="cuda"), truth] += 10.0
    for start in range(0, n, 65536):
        block = x[start:start + 65536]
        block.sub_(torch.logsumexp(block, dim=1, keepdim=True))
    return x


def timed_solve(torch, sinklabel, data, k: int, **options) -> dict:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    begin = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
        result = sinklabel.sinkhorn(data, k, lam=LAM, **options)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - begin
    passes = result.n_iter + 2  # the input check and the labelling pass read the scores too
    counts = result.label_counts
    return {
        "backend": result.backend, "n_iter": result.n_iter, "converged": result.converged,
        "error": result.error, "seconds": seconds, "ms_per_pass": 1e3 * seconds / passes,
        "extra_gpu_mb": (torch.cuda.max_memory_allocated() - base) / 2**20,
        "label_sizes": [int(counts.min()), int(counts.max())],
        "potentials": result.potentials,
    }


def convert(torch, cupy, x, library: str, dtype: str):
    """The float32 GPU scores as the library and dtype under test (a copy only for bf16)."""
    data = x if dtype == "float32" else x.to(getattr(torch, dtype))
    return cupy.from_dlpack(data) if library == "cupy" else data


def measure_regime(torch, sinklabel, cupy, regime: str, n: int, k: int):
    """Cold and warm solves of one regime's scores for every backend and dtype."""
    x = scores(torch, n, k, regime, seed=0)
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.sum(x)
    start.record()
    torch.sum(x)
    stop.record()
    torch.cuda.synchronize()
    read_ms = start.elapsed_time(stop)
    cases = [("torch", "float32"), ("torch", "bfloat16")]
    if cupy is not None:
        cases.append(("cupy", "float32"))
    for library, dtype in cases:
        row = {"regime": regime, "library": library, "dtype": dtype, "read_ms_float32": read_ms}
        try:
            data = convert(torch, cupy, x, library, dtype)
            timed_solve(torch, sinklabel, data, k, max_iter=5)  # compile and tune first
            cold = timed_solve(torch, sinklabel, data, k)
            del data
            drifted = x + torch.randn(x.shape, device="cuda").mul_(0.05)
            warm = timed_solve(torch, sinklabel, convert(torch, cupy, drifted, library, dtype),
                               k, init=cold["potentials"])
            del drifted
            for name, run in (("cold", cold), ("warm", warm)):
                run.pop("potentials")
                row[name] = run
            row["warm_over_cold_passes"] = warm["n_iter"] / cold["n_iter"]
        except Exception as exc:  # keep the other measurements
            row["error"] = f"{type(exc).__name__}: {exc}"
        torch.cuda.empty_cache()
        yield row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", nargs="?", default="gpu_solve.json")
    parser.add_argument("--n", type=int, default=1_281_167)
    parser.add_argument("--k", type=int, default=3000)
    args = parser.parse_args(argv)

    import torch

    import sinklabel

    if not torch.cuda.is_available():
        print("no CUDA device: nothing to measure")
        return 0
    report = {"date": time.strftime("%Y-%m-%d"), "device": torch.cuda.get_device_name(),
              "n": args.n, "k": args.k, "lam": LAM, "runs": []}
    try:
        import cupy
    except ImportError:
        cupy = None
    for regime in ("flat", "peaked"):
        for row in measure_regime(torch, sinklabel, cupy, regime, args.n, args.k):
            report["runs"].append(row)
            print(json.dumps(row), flush=True)
            with open(args.json, "w") as handle:
                json.dump(report, handle, indent=1)
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
