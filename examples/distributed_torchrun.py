"""Balanced labels for rows spread over torch.distributed ranks, launched with torchrun.

    torchrun --nproc_per_node=2 examples/distributed_torchrun.py
    torchrun --nproc_per_node=8 examples/distributed_torchrun.py --rows 1281167 --labels 3000
    torchrun --nproc_per_node=2 examples/distributed_torchrun.py --exact   # exactly balanced

Each rank makes its own shard of scores (in training: the logits of the rank's own data
loader) and never sees the other ranks' rows. With CUDA: NCCL, one GPU per rank, the scores
on that GPU (as torch tensors when the torch backend is installed). Without: gloo on the CPU.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import time

import numpy as np
import torch
import torch.distributed as dist

import sinklabel
from sinklabel.datasets import make_scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows over all ranks")
    parser.add_argument("--labels", type=int, default=100, help="K")
    parser.add_argument("--lam", type=float, default=25.0)
    parser.add_argument("--regime", choices=("flat", "peaked"), default="flat")
    parser.add_argument("--exact", action="store_true",
                        help="also make the labels exactly balanced (balance='exact')")
    args = parser.parse_args(argv)
    if args.rows < 1 or args.labels < 1:
        parser.error("--rows and --labels must be at least 1")
    if args.exact and args.rows < args.labels:
        parser.error("--exact gives every label floor or ceil of rows / labels: needs "
                     "--rows >= --labels")

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    try:
        # This rank's rows: contiguous, uneven shards, as a sharded dataset gives them.
        bounds = np.linspace(0, args.rows, world + 1).astype(int)
        scores: np.ndarray | torch.Tensor = make_scores(
            bounds[rank + 1] - bounds[rank], args.labels, regime=args.regime, seed=rank).scores
        if cuda and "torch" in sinklabel.available_backends():
            scores = torch.from_numpy(scores).cuda()

        dist.barrier()
        start = time.perf_counter()
        result = sinklabel.sinkhorn(scores, args.labels, lam=args.lam, distributed=True)
        seconds = time.perf_counter() - start
        # The next epoch's relabelling starts from this one's potentials, on every rank.
        again = sinklabel.sinkhorn(scores, args.labels, lam=args.lam, init=result.potentials,
                                   distributed=True)

        # Labels are this rank's; potentials are the same bits on every rank.
        digest = hashlib.sha256(result.potentials.tobytes()).hexdigest()[:12]
        print(f"rank {rank}/{world}: labelled its {len(result.labels)} rows; "
              f"potentials sha256 {digest}", flush=True)
        dist.barrier()
        if rank == 0:
            counts = result.label_counts
            print(f"{args.rows} rows x {args.labels} labels on {world} ranks "
                  f"({dist.get_backend()}): {result.n_iter} iterations in {seconds:.2f} s, "
                  f"error {result.error:.1e}, rows per label {counts.min()}..{counts.max()}; "
                  f"warm restart: {again.n_iter} iteration(s)")
        if args.exact:
            # Only the rows near a decision boundary travel, to rank 0; see docs/distributed.md.
            exact = sinklabel.sinkhorn(scores, args.labels, lam=args.lam, init=result.potentials,
                                       balance="exact", distributed=True)
            if rank == 0:
                counts, proof = exact.label_counts, exact.certificate
                print(f"exactly balanced: rows per label {counts.min()}..{counts.max()}, "
                      f"optimal {proof.optimal} (gap {proof.gap:.1e})")
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
