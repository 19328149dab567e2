"""The GPU timeline's summary of a profiled solve, on a synthetic trace (the profile itself
needs a CUDA device; ``benchmarks/gpu_check.sh`` runs it)."""

from __future__ import annotations

from benchmarks.gpu_timeline import between_passes


def _kernel(name: str, ts: float, dur: float) -> dict:
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur}


def test_between_passes_measures_idle_time_from_one_main_kernel_to_the_next():
    events = [
        _kernel("_sweep_fused", 0.0, 3400.0),
        _kernel("_column_sums", 3405.0, 36.0),       # a pass's reduction is not a pass
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaGraphLaunch", "ts": 3900.0, "dur": 9.0},
        _kernel("_sweep_fused", 4000.0, 3300.0),     # 600 us after the first ended
        _kernel("_column_sums", 7305.0, 36.0),
        _kernel("_sweep_fused", 7700.0, 3350.0),     # 400 us after the second
        _kernel("_best", 11500.0, 3500.0),           # the labels, after the last pass
        {"ph": "i", "cat": "kernel", "name": "marker", "ts": 1.0},
    ]
    summary = between_passes(events)
    assert summary["passes_seen"] == 3
    assert summary["main_us"] == 3350.0
    assert summary["between_all_us"] == [600.0, 400.0]
    assert summary["between_us"] == 500.0


def test_between_passes_of_a_trace_without_kernels_is_empty():
    assert between_passes([]) == {"passes_seen": 0, "main_us": None, "between_us": None,
                                  "between_all_us": []}
