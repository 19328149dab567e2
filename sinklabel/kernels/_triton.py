"""Fused CUDA kernels for the torch backend, written in Triton.

Imported only when a CUDA tensor reaches the torch kernel (never by ``import sinklabel``).

``sweep`` reads every row once. Each program keeps accumulators for all K labels in
registers and walks its share of the rows: ``z = lam * S + f`` (in base-2 units, so each
exponential is one ``ex2`` instruction), row max, exp, row sum, then adds ``p / rowsum``.
Each program writes its K sums to its own row of a small (programs, K) buffer that is summed
in a fixed order afterwards: no atomics, so a solve repeated on the same data gives identical
results. A row of K up to ``MAX_FUSED_COLS`` labels is kept in registers as two power-of-two
tiles (3000 = 2048 + 1024, not 4096), so few lanes idle.

Rows wider than that do not fit in registers; there one pass finds each row's log-sum-exp
and a second pass accumulates column tiles (two reads of the scores instead of one).

``best`` fuses the row maximum and its first arg-maximum, walking column tiles.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import triton
import triton.language as tl

LOG2E = math.log2(math.e)
#: Widest row the one-pass sweep keeps in registers (float32 compute; half that in float64).
MAX_FUSED_COLS = 16384
#: Column tile of the wide (two-pass) sweep and of ``best``.
WIDE_TILE = 1024
#: Each program of the sweep walks at least this many rows, so its partial sums stay a small
#: fraction (<= 4 / (MIN_ROWS_PER_PROGRAM * itemsize)) of the input's size.
MIN_ROWS_PER_PROGRAM = 256
#: Programs per multiprocessor: many short waves keep the last one from idling the device.
PROGRAMS_PER_SM = 32
#: Inputs at least this large (elements) time a few launch configurations once per shape
#: class and keep the fastest; smaller ones take the default at once.
TUNE_ELEMENTS = 1 << 26
_FINITE_FLOOR = -3.0e38


@triton.jit
def _row_pointers(x_ptr, tile, n_rows, stride_row, BLOCK_M: tl.constexpr, ROW_ALIGN: tl.constexpr):
    rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    offsets = rows.to(tl.int64) * stride_row
    if ROW_ALIGN > 1:
        offsets = tl.multiple_of(offsets, ROW_ALIGN)
    return x_ptr + offsets, rows < n_rows


@triton.jit
def _load(row_ptr, row_ok, cols, col_ok, stride_col):
    """The raw scores of a [rows, cols] tile (0 outside the matrix)."""
    return tl.load(row_ptr[:, None] + cols[None, :].to(tl.int64) * stride_col,
                   mask=row_ok[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _logits(row_ptr, row_ok, cols, col_ok, stride_col, coef, scale):
    """scale * x + coef on a [rows, cols] tile; -inf in columns past K (coef is -inf there)."""
    x = _load(row_ptr, row_ok, cols, col_ok, stride_col)
    return x.to(coef.dtype) * scale + coef[None, :]


@triton.jit
def _sweep_fused(x_ptr, coef_ptr, part_ptr, n_programs, n_rows, stride_row, stride_col,
                 N_COLS: tl.constexpr, WIDTH_A: tl.constexpr, WIDTH_B: tl.constexpr,
                 BLOCK_M: tl.constexpr, ROW_ALIGN: tl.constexpr, PREFETCH: tl.constexpr):
    """With PREFETCH, the next tile's loads are issued before this tile's reductions, so
    memory latency overlaps the arithmetic (at the cost of a second tile of registers)."""
    pid = tl.program_id(0)
    scale = tl.load(coef_ptr + N_COLS)
    cols_a = tl.arange(0, WIDTH_A)
    ok_a = cols_a < N_COLS
    coef_a = tl.load(coef_ptr + cols_a, mask=ok_a, other=float("-inf"))
    acc_a = tl.zeros([WIDTH_A], dtype=coef_a.dtype)
    if WIDTH_B > 0:
        cols_b = WIDTH_A + tl.arange(0, WIDTH_B)
        ok_b = cols_b < N_COLS
        coef_b = tl.load(coef_ptr + cols_b, mask=ok_b, other=float("-inf"))
        acc_b = tl.zeros([WIDTH_B], dtype=coef_b.dtype)
    row_ptr, row_ok = _row_pointers(x_ptr, pid, n_rows, stride_row, BLOCK_M, ROW_ALIGN)
    if PREFETCH:
        next_a = _load(row_ptr, row_ok, cols_a, ok_a, stride_col)
        if WIDTH_B > 0:
            next_b = _load(row_ptr, row_ok, cols_b, ok_b, stride_col)
    for tile in range(pid, tl.cdiv(n_rows, BLOCK_M), n_programs):
        row_ptr, row_ok = _row_pointers(x_ptr, tile, n_rows, stride_row, BLOCK_M, ROW_ALIGN)
        if PREFETCH:
            x_a = next_a
            if WIDTH_B > 0:
                x_b = next_b
            ahead_ptr, ahead_ok = _row_pointers(x_ptr, tile + n_programs, n_rows, stride_row,
                                                BLOCK_M, ROW_ALIGN)
            next_a = _load(ahead_ptr, ahead_ok, cols_a, ok_a, stride_col)
            if WIDTH_B > 0:
                next_b = _load(ahead_ptr, ahead_ok, cols_b, ok_b, stride_col)
        else:
            x_a = _load(row_ptr, row_ok, cols_a, ok_a, stride_col)
            if WIDTH_B > 0:
                x_b = _load(row_ptr, row_ok, cols_b, ok_b, stride_col)
        z_a = x_a.to(coef_a.dtype) * scale + coef_a[None, :]
        top = tl.max(z_a, axis=1)
        if WIDTH_B > 0:
            z_b = x_b.to(coef_b.dtype) * scale + coef_b[None, :]
            top = tl.maximum(top, tl.max(z_b, axis=1))
        p_a = tl.exp2(z_a - top[:, None])
        total = tl.sum(p_a, axis=1)
        if WIDTH_B > 0:
            p_b = tl.exp2(z_b - top[:, None])
            total += tl.sum(p_b, axis=1)
        weight = tl.where(row_ok, 1.0 / total, 0.0)
        acc_a += tl.sum(p_a * weight[:, None], axis=0)
        if WIDTH_B > 0:
            acc_b += tl.sum(p_b * weight[:, None], axis=0)
    tl.store(part_ptr + pid * N_COLS + cols_a, acc_a, mask=ok_a)
    if WIDTH_B > 0:
        tl.store(part_ptr + pid * N_COLS + cols_b, acc_b, mask=ok_b)


@triton.jit
def _column_sums(part_ptr, out_ptr, n_parts, N_COLS: tl.constexpr, BLOCK_P: tl.constexpr,
                 BLOCK_K: tl.constexpr):
    """float64 column sums of the (parts, K) partial sums, in a fixed order."""
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    col_ok = cols < N_COLS
    acc = tl.zeros([BLOCK_K], dtype=tl.float64)
    for first in range(0, n_parts, BLOCK_P):
        parts = first + tl.arange(0, BLOCK_P)
        block = tl.load(part_ptr + parts[:, None].to(tl.int64) * N_COLS + cols[None, :],
                        mask=(parts < n_parts)[:, None] & col_ok[None, :], other=0.0)
        acc += tl.sum(block.to(tl.float64), axis=0)
    tl.store(out_ptr + cols, acc, mask=col_ok)


@triton.jit
def _row_stats(x_ptr, coef_ptr, top_ptr, inv_ptr, n_rows, stride_row, stride_col,
               N_COLS: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
               ROW_ALIGN: tl.constexpr, FLOOR: tl.constexpr):
    """Each row's max of z and 1 / sum(exp2(z - max)), streaming over column tiles."""
    scale = tl.load(coef_ptr + N_COLS)
    row_ptr, row_ok = _row_pointers(x_ptr, tl.program_id(0), n_rows, stride_row, BLOCK_M,
                                    ROW_ALIGN)
    top = tl.full([BLOCK_M], FLOOR, dtype=scale.dtype)
    total = tl.zeros([BLOCK_M], dtype=scale.dtype)
    for col0 in range(0, N_COLS, TILE):
        cols = col0 + tl.arange(0, TILE)
        col_ok = cols < N_COLS
        coef = tl.load(coef_ptr + cols, mask=col_ok, other=float("-inf"))
        z = _logits(row_ptr, row_ok, cols, col_ok, stride_col, coef, scale)
        new_top = tl.maximum(top, tl.max(z, axis=1))
        total = total * tl.exp2(top - new_top) + tl.sum(tl.exp2(z - new_top[:, None]), axis=1)
        top = new_top
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(top_ptr + rows, top, mask=row_ok)
    tl.store(inv_ptr + rows, 1.0 / total, mask=row_ok)


@triton.jit
def _sweep_tiles(x_ptr, coef_ptr, top_ptr, inv_ptr, part_ptr, n_programs, n_rows, stride_row,
                 stride_col, N_COLS: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
                 ROW_ALIGN: tl.constexpr):
    """Column sums of exp2(z - top) * inv for one column tile over a share of the rows."""
    pid = tl.program_id(0)
    scale = tl.load(coef_ptr + N_COLS)
    cols = tl.program_id(1) * TILE + tl.arange(0, TILE)
    col_ok = cols < N_COLS
    coef = tl.load(coef_ptr + cols, mask=col_ok, other=float("-inf"))
    acc = tl.zeros([TILE], dtype=coef.dtype)
    for tile in range(pid, tl.cdiv(n_rows, BLOCK_M), n_programs):
        row_ptr, row_ok = _row_pointers(x_ptr, tile, n_rows, stride_row, BLOCK_M, ROW_ALIGN)
        rows = tile * BLOCK_M + tl.arange(0, BLOCK_M)
        top = tl.load(top_ptr + rows, mask=row_ok, other=0.0)
        inv = tl.load(inv_ptr + rows, mask=row_ok, other=0.0)
        z = _logits(row_ptr, row_ok, cols, col_ok, stride_col, coef, scale)
        acc += tl.sum(tl.exp2(z - top[:, None]) * inv[:, None], axis=0)
    tl.store(part_ptr + pid * N_COLS + cols, acc, mask=col_ok)


@triton.jit
def _best(x_ptr, coef_ptr, value_ptr, label_ptr, n_rows, stride_row, stride_col,
          N_COLS: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
          ROW_ALIGN: tl.constexpr):
    """Row maximum of z and its first arg-maximum; NaN anywhere in a row makes its max NaN."""
    scale = tl.load(coef_ptr + N_COLS)
    row_ptr, row_ok = _row_pointers(x_ptr, tl.program_id(0), n_rows, stride_row, BLOCK_M,
                                    ROW_ALIGN)
    top = tl.full([BLOCK_M], float("-inf"), dtype=scale.dtype)
    label = tl.zeros([BLOCK_M], dtype=tl.int32)
    nan = tl.zeros([BLOCK_M], dtype=tl.int32)
    for col0 in range(0, N_COLS, TILE):
        cols = col0 + tl.arange(0, TILE)
        col_ok = cols < N_COLS
        coef = tl.load(coef_ptr + cols, mask=col_ok, other=float("-inf"))
        z = _logits(row_ptr, row_ok, cols, col_ok, stride_col, coef, scale)
        value, index = tl.max(z, axis=1, return_indices=True, return_indices_tie_break_left=True)
        nan = tl.maximum(nan, tl.max((z != z).to(tl.int32), axis=1))
        better = value > top
        top = tl.where(better, value, top)
        label = tl.where(better, index + col0, label)
    top = tl.where(nan > 0, float("nan"), top)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    tl.store(value_ptr + rows, top, mask=row_ok)
    tl.store(label_ptr + rows, label.to(tl.int64), mask=row_ok)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """float64 stays float64; float32, float16 and bfloat16 are computed in float32."""
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def split_width(n_cols: int) -> tuple[int, int]:
    """Two power-of-two tiles covering ``n_cols``: the largest that fits, then the rest."""
    width_a = 1 << (n_cols.bit_length() - 1)
    rest = n_cols - width_a
    return width_a, (triton.next_power_of_2(rest) if rest else 0)


def sweep(x: torch.Tensor, f: np.ndarray, lam: float) -> np.ndarray:
    """Column sums of softmax(lam * x + f) over the rows of ``x``, float64 NumPy."""
    n_rows, n_cols = x.shape
    coef = _coefficients(x, f * LOG2E, lam * LOG2E)
    programs = _programs(x, n_rows)
    part = torch.empty((programs, n_cols), dtype=coef.dtype, device=x.device)
    strides = (n_rows, x.stride(0), x.stride(1))
    if n_cols <= MAX_FUSED_COLS // coef.element_size() * 4:
        width_a, width_b = split_width(n_cols)
        shape = dict(N_COLS=n_cols, WIDTH_A=width_a, WIDTH_B=width_b,
                     ROW_ALIGN=_row_align(x))

        def launch(config: tuple[int, int, bool]) -> None:
            block_m, warps, prefetch = config
            _sweep_fused[(programs,)](x, coef, part, programs, *strides, BLOCK_M=block_m,
                                      PREFETCH=prefetch, num_warps=warps, **shape)

        _run(launch, _fused_configs(width_a + width_b, x), ("sweep", x.dtype, n_cols), x)
    else:
        tile = WIDE_TILE
        top = torch.empty(n_rows, dtype=coef.dtype, device=x.device)
        inv = torch.empty_like(top)
        meta = dict(N_COLS=n_cols, TILE=tile, ROW_ALIGN=_row_align(x))
        _row_stats[(triton.cdiv(n_rows, 4),)](x, coef, top, inv, *strides, BLOCK_M=4,
                                              FLOOR=_FINITE_FLOOR, num_warps=4, **meta)
        grid = (programs, triton.cdiv(n_cols, tile))
        _sweep_tiles[grid](x, coef, top, inv, part, programs, *strides, BLOCK_M=4, num_warps=4,
                           **meta)
    return _sum_parts(part).cpu().numpy()


def best(x: torch.Tensor, f: np.ndarray, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row maxima of lam * x + f (compute dtype) and their labels (int64), on x's device."""
    n_rows, n_cols = x.shape
    coef = _coefficients(x, f, lam)
    values = torch.empty(n_rows, dtype=coef.dtype, device=x.device)
    labels = torch.empty(n_rows, dtype=torch.int64, device=x.device)
    block_m = 4
    _best[(triton.cdiv(n_rows, block_m),)](
        x, coef, values, labels, n_rows, x.stride(0), x.stride(1), N_COLS=n_cols,
        TILE=min(WIDE_TILE, triton.next_power_of_2(n_cols)), BLOCK_M=block_m,
        ROW_ALIGN=_row_align(x), num_warps=4, enable_fp_fusion=False,
    )
    return values, labels


def _sum_parts(part: torch.Tensor) -> torch.Tensor:
    """Column sums of the partial sums in float64, allocating only the K-vector (torch's
    ``sum(dtype=float64)`` would first copy the whole buffer to float64)."""
    n_parts, n_cols = part.shape
    out = torch.empty(n_cols, dtype=torch.float64, device=part.device)
    block_k = 64
    _column_sums[(triton.cdiv(n_cols, block_k),)](part, out, n_parts, N_COLS=n_cols,
                                                  BLOCK_P=32, BLOCK_K=block_k, num_warps=4)
    return out


def _coefficients(x: torch.Tensor, coef: np.ndarray, scale: float) -> torch.Tensor:
    """The K per-label offsets followed by the scale, on x's device in the compute dtype."""
    host = torch.from_numpy(np.append(np.asarray(coef, dtype=np.float64), scale))
    return host.to(device=x.device, dtype=compute_dtype(x))


def _programs(x: torch.Tensor, n_rows: int) -> int:
    processors = (
        torch.cuda.get_device_properties(x.device).multi_processor_count if x.is_cuda else 4
    )
    return max(1, min(processors * PROGRAMS_PER_SM, triton.cdiv(n_rows, MIN_ROWS_PER_PROGRAM)))


def _row_align(x: torch.Tensor) -> int:
    """Largest power of two (<= 16) dividing the row stride: lets loads vectorise."""
    stride = x.stride(0)
    return math.gcd(stride, 16) if stride else 16


def _fused_configs(width: int, x: torch.Tensor) -> list[tuple[int, int, bool]]:
    """(rows per tile, warps, prefetch) to try for the one-pass sweep, the default first.

    Each thread holds about ``rows * width / (32 * warps)`` scores of a tile; 8 to 32 keeps
    loads wide without spilling registers (checked with ptxas for sm_90). Prefetching holds
    a second tile, so it is tried on the smaller tiles only.
    """
    per_thread = (16, 8, 32) if x.dtype != torch.float64 else (8, 16)
    shapes = []
    for target in per_thread:
        for warps in (8, 4, 16):
            rows = max(1, target * 32 * warps // width)
            rows = min(64, 1 << (rows.bit_length() - 1))
            fits = rows * width <= max(per_thread) * 32 * warps
            if fits and (rows, warps) not in shapes:
                shapes.append((rows, warps))
    shapes = (shapes or [(1, 16)])[:6]
    light = [s for s in shapes if s[0] * width <= 16 * 32 * s[1]]
    return [(*s, False) for s in shapes] + [(*s, True) for s in light]


_TUNED: dict[tuple, tuple] = {}


def _run(launch, configs: list, key: tuple, x: torch.Tensor) -> None:
    """Launch with the fastest config for ``key`` (timed once on a large input) or the default."""
    if key in _TUNED:
        launch(_TUNED[key])
        return
    if x.numel() < TUNE_ELEMENTS or not x.is_cuda or len(configs) == 1:
        launch(configs[0])
        return
    times = []
    for config in configs:
        launch(config)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(3):
            launch(config)
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    _TUNED[key] = configs[int(np.argmin(times))]
    launch(_TUNED[key])


def tuned_configs() -> dict[str, tuple]:
    """The launch configurations chosen so far, for benchmark reports."""
    return {f"{name} {dtype} K={k}": cfg for (name, dtype, k), cfg in _TUNED.items()}
