"""Cost of the distributed solver's one reduction per iteration, launched with torchrun.

    torchrun --nproc_per_node=2 benchmarks/distributed_allreduce.py --labels 3000

Times, on every rank, a bare ``all_reduce`` of K + 3 float64 values (what a Sinkhorn
iteration sends: K label masses, the log-sum-exp sum, the row count and the status slot) and
the same reduction through :class:`sinklabel.distributed.TorchCollective` (host NumPy in and
out, which adds the status slot),
and prints rank 0's medians. On CPU (gloo) this is loopback TCP; with CUDA (NCCL) the vector
goes through the GPU as in a real solve.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
import torch.distributed as dist

from sinklabel.distributed import TorchCollective


def _medians_us(calls: list, repeats: int) -> list[float]:
    """Median time of each call, interleaved so that load changes hit all of them alike."""
    times = np.empty((repeats, len(calls)))
    for repeat in range(repeats):
        for index, call in enumerate(calls):
            dist.barrier()
            start = time.perf_counter()
            call()
            times[repeat, index] = time.perf_counter() - start
    return (1e6 * np.median(times, axis=0)).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=3000, help="K")
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args(argv)
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        collective = TorchCollective()
        # solver.dual_terms' K + 2 sums; the collective appends the status slot
        vector = np.random.default_rng(dist.get_rank()).random(args.labels + 2)
        tensor = torch.from_numpy(np.append(vector, 0.0)).to(collective.device)

        def bare() -> None:
            dist.all_reduce(tensor)
            if cuda:
                torch.cuda.synchronize()

        bare_us, through_us = _medians_us([bare, lambda: collective.sum(vector)], args.repeats)
        if dist.get_rank() == 0:
            print(f"{dist.get_world_size()} ranks, {dist.get_backend()}, K={args.labels}: "
                  f"all_reduce of {vector.size + 1} float64 {bare_us:.0f} us, "
                  f"TorchCollective.sum {through_us:.0f} us (medians of {args.repeats})")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
