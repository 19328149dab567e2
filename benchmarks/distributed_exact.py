"""``balance="exact"`` across ranks against one process, launched with torchrun.

    torchrun --nproc_per_node=2 benchmarks/distributed_exact.py --rows 200000 --labels 1000

Every rank generates the same scores and keeps its share of the rows. The ranks solve with
``sinkhorn(..., distributed=True, balance="exact")``; then rank 0 alone solves all rows with
``sinkhorn(..., balance="exact")``. Printed by rank 0: the contested rows of each round, the
bytes of scores sent to rank 0 (and the part that crossed the network) against the
N x K matrix, the time of the exact stage (everything after the Sinkhorn loop) and of the
whole call, both ways, and whether both labellings have the same objective.

A warm-up solve on a few rows comes first (imports, numba's cache, connections). Each of the
W ranks gets ``cores / W`` numba threads, the single process all of them: both runs use the
same cores.
"""

from __future__ import annotations

import argparse
import os
import time

import numba
import numpy as np
import torch.distributed as dist

import sinklabel
from sinklabel import _distributed_exact, exact
from sinklabel.datasets import make_scores
from sinklabel.distributed import TorchCollective


def _timed(module, name: str, seconds: list[float]) -> None:
    """Record the wall time of each call of ``module.name`` (called by name at solve time)."""
    inner = getattr(module, name)

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return inner(*args, **kwargs)
        finally:
            seconds.append(time.perf_counter() - start)

    setattr(module, name, wrapper)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000, help="N, over all ranks")
    parser.add_argument("--labels", type=int, default=1000, help="K")
    parser.add_argument("--regime", choices=["flat", "peaked"], default="flat")
    args = parser.parse_args(argv)
    dist.init_process_group("gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        cores = os.cpu_count() or 1
        scores = make_scores(args.rows, args.labels, regime=args.regime, seed=0).scores
        bounds = np.linspace(0, args.rows, world + 1).astype(int)
        mine = scores[bounds[rank]:bounds[rank + 1]]
        if rank != 0:
            mine = mine.copy()
            del scores

        rounds: list[np.ndarray] = []
        gather = TorchCollective.gather_rows

        def counted(self, block):
            table, counts = gather(self, block)
            rounds.append(counts)
            return table, counts

        TorchCollective.gather_rows = counted
        stage_across: list[float] = []
        stage_single: list[float] = []
        _timed(_distributed_exact, "balance_across_ranks", stage_across)
        _timed(exact, "balance_exact", stage_single)

        numba.set_num_threads(max(1, cores // world))
        # warm-up: imports, numba's cache, gloo connections
        warm = min(mine.shape[0], 2 * args.labels)
        sinklabel.sinkhorn(mine[:warm], args.labels, distributed=True, balance="exact")
        sinklabel.sinkhorn(mine[:warm], args.labels, balance="exact")
        del rounds[:], stage_across[:], stage_single[:]
        dist.barrier()
        start = time.perf_counter()
        across = sinklabel.sinkhorn(mine, args.labels, distributed=True, balance="exact")
        whole_across = time.perf_counter() - start
        labels = [None] * world
        dist.all_gather_object(labels, np.asarray(across.labels))
        dist.barrier()
        if rank == 0:
            numba.set_num_threads(cores)
            start = time.perf_counter()
            single = sinklabel.sinkhorn(scores, args.labels, balance="exact")
            whole_single = time.perf_counter() - start
            y = np.concatenate(labels)
            objective = float(scores[np.arange(args.rows), y].astype(np.float64).sum())
            _report(args, world, rounds, across, single, objective, stage_across[0],
                    stage_single[0], whole_across, whole_single)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    return 0


def _report(args, world, rounds, across, single, objective, stage_across, stage_single,
            whole_across, whole_single) -> None:
    row_bytes = args.labels * 4
    gathered = sum(int(counts.sum()) for counts in rounds)
    crossed = sum(int(counts[1:].sum()) for counts in rounds)
    matrix = args.rows * row_bytes
    print(f"{args.regime}, N={args.rows}, K={args.labels}, {world} gloo ranks, "
          f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}")
    contested = np.cumsum([int(counts.sum()) for counts in rounds]).tolist()
    print(f"  Sinkhorn: {across.n_iter} iterations; contested rows of each round: {contested}")
    print(f"  sent to rank 0: {gathered * row_bytes / 1e6:.1f} MB "
          f"({100 * gathered * row_bytes / matrix:.1f}% of the {matrix / 1e6:.0f} MB matrix), "
          f"of which {crossed * row_bytes / 1e6:.1f} MB crossed the network")
    print(f"  exact stage: {stage_across:.2f} s across ranks, {stage_single:.2f} s in one "
          f"process; whole call: {whole_across:.2f} s against {whole_single:.2f} s")
    print(f"  objective {objective:.6f} across ranks, {-single.certificate.primal:.6f} in one "
          f"process; certificate gap {across.certificate.gap:.3g} "
          f"(rounding {across.certificate.rounding:.3g})")


if __name__ == "__main__":
    raise SystemExit(main())
