"""GPU out-of-core streaming: achieved host-to-device bandwidth versus a plain pinned copy.

    python benchmarks/gpu_stream.py [N K]        # default 1,000,000 x 1000 float32 (4 GB)

Environment: SINKLABEL_GPU_N, SINKLABEL_GPU_K (instead of argv), SINKLABEL_GPU_BLOCK_MB
(block size, default 64), SINKLABEL_GPU_BUFFERS (default 2), SINKLABEL_GPU_REPEATS
(default 3, best is kept), SINKLABEL_GPU_COPY_THREADS (staging threads tried for the pageable
host, comma-separated, default "4,8,12"), OUT (a folder: the report is also written to
$OUT/gpu_stream.json).

Measures, all on the same bytes:
- ``plain_copy``: one ``device.copy_(pinned_host, non_blocking=True)`` of the whole matrix,
  the bandwidth ceiling;
- ``stream_*``: one pass of :class:`DeviceStreamSource` with a consumer per block, from a
  pinned tensor (direct copies) and from pageable NumPy memory (staged through pinned slots):
  ``light`` only sums the block on the GPU, ``sweep`` runs the torch backend's Sinkhorn sweep
  (host result per block, as the solver does) when that backend is installed; the pageable
  host is staged by each number of copy threads in SINKLABEL_GPU_COPY_THREADS
  (``stream_pageable_t8_light`` ...), since the host ``memcpy`` into pinned slots is its limit;
- ``registered``: the pageable memory page-locked in place (``page_lock=True``, i.e.
  ``cudaHostRegister``, timed once) and streamed with direct copies; ``registered_memmap``
  the same for the scores saved as a ``.npy`` and memory-mapped;
- ``solve``: time per pass of ``sinkhorn`` over the stream (torch backend only).
``fraction`` = plain-copy time / stream time; the target is >= 0.8.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings

import numpy as np

#: Iterations of the timed solve (plus one labelling pass).
SOLVE_ITERS = 5
#: lam of the sweep consumer.
LAM = 25.0


def cuda_time(torch, fn) -> float:
    """Seconds of ``fn()``, synchronised before and after."""
    torch.cuda.synchronize()
    begin = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - begin


def best_of(repeats: int, torch, fn) -> float:
    return min(cuda_time(torch, fn) for _ in range(repeats))


def one_pass(torch, source, rows: int, kernel=None) -> None:
    """One pass over ``source``, the blocks ``rows`` at a time: without ``kernel`` only sums
    each block on the GPU (the light consumer), with it runs its Sinkhorn sweep per block
    (host result per block, as the solver does)."""
    k = source.shape[1]
    total = torch.zeros(k, device=source.device)
    f = np.zeros(k)
    for _, _, block in source.chunks(rows):
        if kernel is None:
            total += block.sum(dim=0)
        else:
            kernel.sweep(block, f, LAM)
    total.cpu()


def registered_stream(torch, host, device, rows: int, buffers: int, plain: float,
                      repeats: int) -> dict:
    """``DeviceStreamSource(page_lock=True)``: the pageable memory page-locked in place
    (timed once) and streamed with direct copies, against the staging it saves per pass."""
    from sinklabel.sources.device import DeviceStreamSource

    begin = time.perf_counter()
    source = DeviceStreamSource(host, device, buffers=buffers, page_lock=True)
    register_s = time.perf_counter() - begin

    try:
        seconds = best_of(repeats, torch, lambda: one_pass(torch, source, rows))
    finally:
        begin = time.perf_counter()
        source.close()
        unregister_s = time.perf_counter() - begin
    return {"register_s": register_s, "unregister_s": unregister_s, "s_per_pass": seconds,
            "fraction": plain / seconds}


def main(argv: list[str]) -> int:
    import torch

    import sinklabel
    from sinklabel.kernels import available_backends, get_kernel
    from sinklabel.sources.device import DeviceStreamSource

    if not torch.cuda.is_available():
        print("gpu_stream: no CUDA device", file=sys.stderr)
        return 1
    n = int(argv[0]) if argv else int(os.environ.get("SINKLABEL_GPU_N", 1_000_000))
    k = int(argv[1]) if len(argv) > 1 else int(os.environ.get("SINKLABEL_GPU_K", 1000))
    block_mb = float(os.environ.get("SINKLABEL_GPU_BLOCK_MB", 64))
    buffers = int(os.environ.get("SINKLABEL_GPU_BUFFERS", 2))
    threads = [int(t) for t in os.environ.get("SINKLABEL_GPU_COPY_THREADS", "4,8,12").split(",")]
    repeats = int(os.environ.get("SINKLABEL_GPU_REPEATS", 3))
    rows = max(1, int(block_mb * 2**20 // (k * 4)))
    nbytes = n * k * 4
    device = torch.device("cuda")

    host = torch.randn((n, k), dtype=torch.float32)
    host = torch.log_softmax(host * 3, dim=1)
    pinned = host.pin_memory()
    pageable = host.numpy()
    report: dict = {
        "device": torch.cuda.get_device_name(device), "N": n, "K": k, "gb": nbytes / 1e9,
        "block_rows": rows, "block_mb": block_mb, "buffers": buffers,
    }

    target = torch.empty((n, k), dtype=torch.float32, device=device)
    plain = best_of(repeats, torch, lambda: target.copy_(pinned, non_blocking=True))
    target = None
    torch.cuda.empty_cache()
    report["plain_copy"] = {"s": plain, "gb_per_s": nbytes / plain / 1e9}

    consumers = {"light": None}
    kernel = None
    if "torch" in available_backends():
        kernel = get_kernel("torch")
        consumers["sweep"] = kernel
    hosts = [("pinned", pinned, None)] + [(f"pageable_t{t}", pageable, t) for t in threads]
    for name, data, copy_threads in hosts:
        source = DeviceStreamSource(data, device, buffers=buffers, copy_threads=copy_threads)
        for consumer_name, consumer in consumers.items():
            seconds = best_of(repeats, torch,
                              lambda s=source, c=consumer: one_pass(torch, s, rows, c))
            report[f"stream_{name}_{consumer_name}"] = {
                "s_per_pass": seconds, "gb_per_s": nbytes / seconds / 1e9,
                "fraction": plain / seconds,
            }

    report["registered"] = registered_stream(torch, pageable, device, rows, buffers, plain,
                                             repeats)
    # The same scores as a memory-mapped .npy (page cache warm from the write), locked in place.
    path = os.path.join(os.environ.get("SINKLABEL_BENCH_DIR", "/tmp"), "gpu_stream_scores.npy")
    np.save(path, pageable)
    try:
        report["registered_memmap"] = registered_stream(torch, path, device, rows, buffers,
                                                        plain, repeats)
    finally:
        os.remove(path)

    if kernel is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", sinklabel.ConvergenceWarning)
            for name, data in (("pinned", pinned), ("pageable", pageable)):
                source = DeviceStreamSource(data, device, buffers=buffers)
                seconds = cuda_time(torch, lambda s=source: sinklabel.sinkhorn(
                    s, k, backend="torch", chunk_size=rows, max_iter=SOLVE_ITERS, tol=1e-12))
                per_pass = seconds / (SOLVE_ITERS + 1)
                report[f"solve_{name}"] = {"passes": SOLVE_ITERS + 1, "s_per_pass": per_pass,
                                           "fraction": plain / per_pass}

    text = json.dumps(report, indent=2)
    print(text)
    out = os.environ.get("OUT")
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "gpu_stream.json"), "w") as handle:
            handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
