"""Fused CUDA kernels for the torch backend, written in Triton.

Imported only when a CUDA tensor reaches the torch kernel (never by ``import sinklabel``).

``sweep`` reads every row once. Each program keeps accumulators for all K labels in
registers and walks its share of the rows: ``z = lam * S + f`` (in base-2 units, so each
exponential is one ``ex2`` instruction), row max, exp, row sum, then adds ``p / rowsum``.
Each program writes its K sums to its own row of a small (programs, K) buffer that is summed
in a fixed order afterwards: no atomics, so a solve repeated on the same data gives identical
results. A row of K up to ``MAX_FUSED_COLS`` labels is kept in registers as up to four
column tiles of one power-of-two width (3000 = 3 x 1024, not 4096), so few lanes idle and
the tiles share one register layout: the row max and row sum are one cross-warp reduction
each (6 barriers per row tile in the PTX, where two tiles of different widths needed 12).

Rows wider than that do not fit in registers; there one pass finds each row's log-sum-exp
and a second pass accumulates column tiles (two reads of the scores instead of one).

``best`` fuses the row maximum and its first arg-maximum, walking column tiles.

Between sweeps the buffers and a CUDA graph of the launches are kept (``_buffers``).
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources, PTXASError

from ._buffers import TorchSweepBuffers, cached
from ._tuning import Tuner

LOG2E = math.log2(math.e)
LN2 = math.log(2.0)
#: Widest row the one-pass sweep keeps in registers (float32 compute; half that in float64).
MAX_FUSED_COLS = 16384
#: Column tile of the wide (two-pass) sweep and of ``best``.
WIDE_TILE = 1024
#: Each program of the sweep walks at least this many rows, so its partial sums stay a small
#: fraction (<= 4 / (MIN_ROWS_PER_PROGRAM * itemsize)) of the input's size.
MIN_ROWS_PER_PROGRAM = 256
#: Programs per multiprocessor: many short waves keep the last one from idling the device.
PROGRAMS_PER_SM = 32
#: Tile of the partial sums' reduction: 128-byte rows of 32 columns, so K = 3000 spreads
#: over 94 programs, and 256 partials per load (17 loads for 4224 programs).
SUM_COLS = 32
SUM_PARTS = 256
#: Inputs at least this large (elements) time a few launch configurations once per shape
#: class and keep the fastest; smaller ones take the default at once.
TUNE_ELEMENTS = 1 << 26
#: Rows per program in flight in the pipelined sweep (the one being reduced and the copies).
PIPELINE_STAGES = 3
#: Widest row (bytes) the pipelined sweep stages in shared memory.
PIPELINE_ROW_BYTES = 32768
#: Most scores of a row one thread of the pipelined sweep holds (its accumulators and
#: exponentials stay in registers: 48 took 173 registers in bfloat16 at K=3000).
PIPELINE_SCORES_PER_THREAD = 48


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
def _column_tile(coef_ptr, first, WIDTH: tl.constexpr, N_COLS: tl.constexpr):
    """Columns, in-range mask, offsets (-inf past K) and zero sums of one column tile."""
    cols = first + tl.arange(0, WIDTH)
    ok = cols < N_COLS
    coef = tl.load(coef_ptr + cols, mask=ok, other=float("-inf"))
    return cols, ok, coef, tl.zeros([WIDTH], dtype=coef.dtype)


@triton.jit
def _widen(x, dtype, BF16_BITS: tl.constexpr):
    """``x`` in the compute dtype. With BF16_BITS (bfloat16 scores, two or more per thread)
    each 32-bit word of two scores becomes two float32 by one shift and one mask, where the
    compiler's conversion spent a byte permute and a shift on every second score."""
    if BF16_BITS:
        words = tl.inline_asm_elementwise("{ shl.b32 $0, $2, 16; and.b32 $1, $2, 0xffff0000; }",
                                          "=r,=r,r", [x], dtype=tl.int32, is_pure=True, pack=2)
        return words.to(tl.float32, bitcast=True)
    return x.to(dtype)


@triton.jit
def _log2(v, PTX: tl.constexpr):
    """log2 of a float32 row sum (>= 1, the row max's own term) by one ``lg2.approx``
    instruction on CUDA (absolute error below 2^-22, far under the float32 row max it is
    added to); ``tl.log2`` is an accurate software routine of about 30 instructions per row."""
    if PTX:
        return tl.inline_asm_elementwise("lg2.approx.ftz.f32 $0, $1;", "=f,f", [v],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return tl.log2(v)


@triton.jit
def _exp2_poly(v):
    """2^v (float32) by FMAs alone, to move some exponentials off the special-function unit:
    v splits into a rounded integer (the 1.5 * 2^23 trick) and f in [-0.5, 0.5], 2^f is a
    degree-5 fit (relative error 2.3e-7), and the integer goes into the exponent bits. Like
    ``ex2.approx.ftz``, v < -126 (and -inf) gives exactly 0."""
    u = tl.maximum(v, -127.0)
    t = u + 12582912.0
    f = u - (t - 12582912.0)
    p = 1.326887053437531e-3 * f + 9.67547670006752e-3
    p = p * f + 5.5507369339466095e-2
    p = p * f + 0.24022121727466583
    p = p * f + 0.6931469440460205
    p = p * f + 1.0000001192092896
    bits = p.to(tl.int32, bitcast=True) + (t.to(tl.int32, bitcast=True) << 23)
    return tl.where(v < -126.0, 0.0, bits.to(tl.float32, bitcast=True))


@triton.jit
def _exp2_tile(v, POLY: tl.constexpr):
    if POLY:
        return _exp2_poly(v)
    return tl.exp2(v)


@triton.jit(do_not_specialize=["n_programs"])  # one compile for every grid size
def _sweep_fused(x_ptr, coef_ptr, part_ptr, lse_ptr, n_programs, n_rows, stride_row, stride_col,
                 N_COLS: tl.constexpr, WIDTH: tl.constexpr, TILES: tl.constexpr,
                 BLOCK_M: tl.constexpr, ROW_ALIGN: tl.constexpr, PREFETCH: tl.constexpr,
                 POLY: tl.constexpr = 0, STAGES: tl.constexpr = 1, BF16_BITS: tl.constexpr = 0,
                 PTX: tl.constexpr = 0):
    """A row is up to four column tiles of one width (so of one register layout): they are
    combined element-wise before the row max and row sum, which are then one cross-warp
    reduction each. With PREFETCH the next row tile's loads are issued before this tile's
    reductions, so memory latency overlaps the arithmetic; STAGES > 1 instead lets the
    compiler pipeline the loop (asynchronous copies of the next STAGES - 1 row tiles into
    shared memory: more bytes in flight, fewer registers; STAGES = 1 compiles to the same
    code as a plain loop). The last POLY tiles (float32 compute only) take their
    exponentials from ``_exp2_poly``. Each row's log2-sum-exp2
    (its max plus the log2 of its sum) is added up in float64 per program, for the dual
    objective. BF16_BITS and PTX (on CUDA only: the interpreter runs no PTX) widen bfloat16
    scores a word at a time (``_widen``) and take each row's log2 in one instruction
    (``_log2``)."""
    pid = tl.program_id(0)
    scale = tl.load(coef_ptr + N_COLS)
    lse_acc = tl.zeros([BLOCK_M], dtype=tl.float64)
    cols0, ok0, coef0, acc0 = _column_tile(coef_ptr, 0, WIDTH, N_COLS)
    if TILES > 1:
        cols1, ok1, coef1, acc1 = _column_tile(coef_ptr, WIDTH, WIDTH, N_COLS)
    if TILES > 2:
        cols2, ok2, coef2, acc2 = _column_tile(coef_ptr, 2 * WIDTH, WIDTH, N_COLS)
    if TILES > 3:
        cols3, ok3, coef3, acc3 = _column_tile(coef_ptr, 3 * WIDTH, WIDTH, N_COLS)
    if PREFETCH:
        row_ptr, row_ok = _row_pointers(x_ptr, pid, n_rows, stride_row, BLOCK_M, ROW_ALIGN)
        next0 = _load(row_ptr, row_ok, cols0, ok0, stride_col)
        if TILES > 1:
            next1 = _load(row_ptr, row_ok, cols1, ok1, stride_col)
        if TILES > 2:
            next2 = _load(row_ptr, row_ok, cols2, ok2, stride_col)
        if TILES > 3:
            next3 = _load(row_ptr, row_ok, cols3, ok3, stride_col)
    for tile in tl.range(pid, tl.cdiv(n_rows, BLOCK_M), n_programs, num_stages=STAGES):
        row_ptr, row_ok = _row_pointers(x_ptr, tile, n_rows, stride_row, BLOCK_M, ROW_ALIGN)
        if PREFETCH:
            x0 = next0
            if TILES > 1:
                x1 = next1
            if TILES > 2:
                x2 = next2
            if TILES > 3:
                x3 = next3
            ahead_ptr, ahead_ok = _row_pointers(x_ptr, tile + n_programs, n_rows, stride_row,
                                                BLOCK_M, ROW_ALIGN)
            next0 = _load(ahead_ptr, ahead_ok, cols0, ok0, stride_col)
            if TILES > 1:
                next1 = _load(ahead_ptr, ahead_ok, cols1, ok1, stride_col)
            if TILES > 2:
                next2 = _load(ahead_ptr, ahead_ok, cols2, ok2, stride_col)
            if TILES > 3:
                next3 = _load(ahead_ptr, ahead_ok, cols3, ok3, stride_col)
        else:
            x0 = _load(row_ptr, row_ok, cols0, ok0, stride_col)
            if TILES > 1:
                x1 = _load(row_ptr, row_ok, cols1, ok1, stride_col)
            if TILES > 2:
                x2 = _load(row_ptr, row_ok, cols2, ok2, stride_col)
            if TILES > 3:
                x3 = _load(row_ptr, row_ok, cols3, ok3, stride_col)
        z0 = _widen(x0, coef0.dtype, BF16_BITS) * scale + coef0[None, :]
        top = z0
        if TILES > 1:
            z1 = _widen(x1, coef1.dtype, BF16_BITS) * scale + coef1[None, :]
            top = tl.maximum(top, z1)
        if TILES > 2:
            z2 = _widen(x2, coef2.dtype, BF16_BITS) * scale + coef2[None, :]
            top = tl.maximum(top, z2)
        if TILES > 3:
            z3 = _widen(x3, coef3.dtype, BF16_BITS) * scale + coef3[None, :]
            top = tl.maximum(top, z3)
        top = tl.max(top, axis=1)
        p0 = _exp2_tile(z0 - top[:, None], POLY >= TILES)
        total = p0
        if TILES > 1:
            p1 = _exp2_tile(z1 - top[:, None], POLY >= TILES - 1)
            total += p1
        if TILES > 2:
            p2 = _exp2_tile(z2 - top[:, None], POLY >= TILES - 2)
            total += p2
        if TILES > 3:
            p3 = _exp2_tile(z3 - top[:, None], POLY >= TILES - 3)
            total += p3
        row_sum = tl.sum(total, axis=1)
        weight = tl.where(row_ok, 1.0 / row_sum, 0.0)
        lse_acc += tl.where(row_ok, top.to(tl.float64) + _log2(row_sum, PTX).to(tl.float64),
                            0.0)
        acc0 += tl.sum(p0 * weight[:, None], axis=0)
        if TILES > 1:
            acc1 += tl.sum(p1 * weight[:, None], axis=0)
        if TILES > 2:
            acc2 += tl.sum(p2 * weight[:, None], axis=0)
        if TILES > 3:
            acc3 += tl.sum(p3 * weight[:, None], axis=0)
    tl.store(lse_ptr + pid, tl.sum(lse_acc, axis=0))
    out = part_ptr + pid * N_COLS
    tl.store(out + cols0, acc0, mask=ok0)
    if TILES > 1:
        tl.store(out + cols1, acc1, mask=ok1)
    if TILES > 2:
        tl.store(out + cols2, acc2, mask=ok2)
    if TILES > 3:
        tl.store(out + cols3, acc3, mask=ok3)


@triton.jit
def _column_sums(part_ptr, lse_ptr, out_ptr, n_parts, n_lse, N_COLS: tl.constexpr,
                 BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr):
    """float64 column sums of the (parts, K) partial sums into ``out[:K]``, and the sum of the
    ``n_lse`` log-sum-exp partials into ``out[K]`` (by the last program), in a fixed order.

    Each thread adds its own elements of a (BLOCK_P, BLOCK_K) tile over the loop and the tile
    is reduced once at the end: a reduction per iteration put two barriers between every
    load and the next, and summing 4224 x 3000 partials took 0.26 ms on an H200.
    """
    first_col = tl.program_id(0) * BLOCK_K
    if first_col >= N_COLS:
        total = tl.zeros([BLOCK_P], dtype=tl.float64)
        for first in range(0, n_lse, BLOCK_P):
            parts = first + tl.arange(0, BLOCK_P)
            total += tl.load(lse_ptr + parts, mask=parts < n_lse, other=0.0)
        tl.store(out_ptr + N_COLS, tl.sum(total, axis=0))
    else:
        cols = first_col + tl.arange(0, BLOCK_K)
        col_ok = cols < N_COLS
        acc = tl.zeros([BLOCK_P, BLOCK_K], dtype=tl.float64)
        for first in range(0, n_parts, BLOCK_P):
            parts = first + tl.arange(0, BLOCK_P)
            block = tl.load(part_ptr + parts[:, None].to(tl.int64) * N_COLS + cols[None, :],
                            mask=(parts < n_parts)[:, None] & col_ok[None, :], other=0.0)
            acc += block.to(tl.float64)
        tl.store(out_ptr + cols, tl.sum(acc, axis=0), mask=col_ok)


@triton.jit
def _row_stats(x_ptr, coef_ptr, top_ptr, inv_ptr, n_rows, stride_row, stride_col,
               N_COLS: tl.constexpr, TILE: tl.constexpr, BLOCK_M: tl.constexpr,
               ROW_ALIGN: tl.constexpr, FLOOR: tl.constexpr):
    """Each row's max of z and 1 / sum(exp2(z - max)), streaming over column tiles.

    The running max starts at FLOOR, the compute dtype's lowest finite value: -inf would
    make the first rescale exp2(-inf - -inf) NaN, and any higher start would sit above a
    row lying wholly below it and underflow all its exponentials.
    """
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
        # Rows past the end: +inf, so their terms (zero-filled scores: z = coef, which can
        # exceed float32's range) are 0, not inf * 0 = NaN.
        top = tl.load(top_ptr + rows, mask=row_ok, other=float("inf"))
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


def bf16_bits(x: torch.Tensor, launch: FusedLaunch, width: int) -> bool:
    """Whether the sweep widens bfloat16 scores a word at a time (see ``_widen``): on CUDA
    (the interpreter runs no PTX), with at least two scores of a tile per thread."""
    return (x.dtype == torch.bfloat16 and x.is_cuda
            and launch.rows * width >= 2 * 32 * launch.warps)


def tile_width(n_cols: int) -> tuple[int, int]:
    """Width and count (at most four) of equal power-of-two column tiles covering ``n_cols``:
    3000 = 3 x 1024 leaves 2% of the lanes idle, where one 4096 tile would leave 27%."""
    width = max(16, _next_power_of_2(_cdiv(n_cols, 4)))
    return width, _cdiv(n_cols, width)


def sweep_lse(x: torch.Tensor, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
    """Column sums of softmax(lam * x + f) over the rows of ``x`` (float64 NumPy) and the sum
    of the rows' logsumexp(lam * x + f), from one read of ``x`` and one host sync."""
    n_rows, n_cols = x.shape
    programs = _programs(x, n_rows)
    buffers = _buffers(x.device, compute_dtype(x), programs, n_cols)
    coef = buffers.coefficients(f, LOG2E, lam * LOG2E)
    if n_cols > MAX_FUSED_COLS // coef.element_size() * 4:
        _wide_sweep(x, coef, buffers, programs)
    else:
        _fused_sweep(x, coef, buffers, programs)
    masses, lse = buffers.totals_on_host()
    return masses, lse * LN2


def _fused_sweep(x: torch.Tensor, coef: torch.Tensor, buffers: TorchSweepBuffers,
                 programs: int) -> None:
    """The one-pass sweep (tuned on large inputs, replayed as a CUDA graph once its input
    repeats), then the totals into ``buffers``."""
    n_rows, n_cols = x.shape
    width, tiles = tile_width(n_cols)
    shape = dict(N_COLS=n_cols, WIDTH=width, TILES=tiles, ROW_ALIGN=_row_align(x),
                 PTX=x.is_cuda and coef.dtype == torch.float32)
    strides = (n_rows, x.stride(0), x.stride(1))
    key = ("sweep", x.dtype, n_cols)

    def launch(config: tuple) -> None:
        c = FusedLaunch(*config)
        _sweep_fused[(programs,)](x, coef, buffers.part, buffers.lse_parts, programs, *strides,
                                  BLOCK_M=c.rows, PREFETCH=c.prefetch, POLY=c.poly,
                                  STAGES=c.stages, BF16_BITS=bf16_bits(x, c, width),
                                  num_warps=c.warps, **shape)

    def result() -> tuple[tuple[np.ndarray, float], ...]:
        host = _sum_parts(buffers, programs).cpu().numpy()
        return (host[:-1], 0.0), (host[-1:], n_rows)

    def launch_and_sum(config: tuple) -> None:
        """What a CUDA graph records: the sweep and the totals."""
        launch(config)
        _sum_parts(buffers, programs)

    candidates = _fused_configs(width, tiles, x)
    tune = x.is_cuda and x.numel() >= TUNE_ELEMENTS
    chosen = TUNER.chosen.get(key, candidates[0])
    graph = None if TUNER.will_time(key, candidates, tune) else buffers.graph(
        x, chosen, launch_and_sum)
    if graph is not None:
        graph.replay()
    else:
        TUNER.run(launch, candidates, key, result, tune=tune)
        _sum_parts(buffers, programs)


def _wide_sweep(x: torch.Tensor, coef: torch.Tensor, buffers: TorchSweepBuffers,
                programs: int) -> None:
    """Rows wider than the registers hold: one pass for each row's maximum and sum, a second
    for the column sums, then the totals into ``buffers``."""
    n_rows, n_cols = x.shape
    strides = (n_rows, x.stride(0), x.stride(1))
    top = torch.empty(n_rows, dtype=coef.dtype, device=x.device)
    inv = torch.empty_like(top)
    meta = dict(N_COLS=n_cols, TILE=WIDE_TILE, ROW_ALIGN=_row_align(x))
    floor = torch.finfo(coef.dtype).min
    _row_stats[(_cdiv(n_rows, 4),)](x, coef, top, inv, *strides, BLOCK_M=4, FLOOR=floor,
                                    num_warps=4, **meta)
    grid = (programs, _cdiv(n_cols, WIDE_TILE))
    _sweep_tiles[grid](x, coef, top, inv, buffers.part, programs, *strides, BLOCK_M=4,
                       num_warps=4, **meta)
    _sum_parts(buffers, programs, lse_parts=top.double() - torch.log2(inv.double()))


def best(x: torch.Tensor, f: np.ndarray, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Row maxima of lam * x + f (compute dtype) and their labels (int64), on x's device."""
    n_rows, n_cols = x.shape
    coef = _coefficients(x, f, lam)
    values = torch.empty(n_rows, dtype=coef.dtype, device=x.device)
    labels = torch.empty(n_rows, dtype=torch.int64, device=x.device)
    block_m = 4
    _best[(_cdiv(n_rows, block_m),)](
        x, coef, values, labels, n_rows, x.stride(0), x.stride(1), N_COLS=n_cols,
        TILE=min(WIDE_TILE, _next_power_of_2(n_cols)), BLOCK_M=block_m,
        ROW_ALIGN=_row_align(x), num_warps=4, enable_fp_fusion=False,
    )
    return values, labels


def _sum_parts(buffers: TorchSweepBuffers, programs: int,
               lse_parts: torch.Tensor | None = None) -> torch.Tensor:
    """Column sums of the partial sums in float64 into the first K entries of the totals and
    the log-sum-exp partials' sum into the last (torch's ``sum(dtype=float64)`` would first
    copy the whole buffer to float64)."""
    lse = buffers.lse_parts if lse_parts is None else lse_parts
    n_cols = buffers.part.shape[1]
    _column_sums[(_cdiv(n_cols, SUM_COLS) + 1,)](
        buffers.part, lse, buffers.totals, programs, lse.shape[0], N_COLS=n_cols,
        BLOCK_P=SUM_PARTS, BLOCK_K=SUM_COLS, num_warps=8)
    return buffers.totals


def _buffers(device: torch.device, dtype: torch.dtype, programs: int,
             n_cols: int) -> TorchSweepBuffers:
    return cached(("triton", device, dtype, programs, n_cols),
                  lambda: TorchSweepBuffers(device, dtype, programs, n_cols))


def _coefficients(x: torch.Tensor, coef: np.ndarray, scale: float) -> torch.Tensor:
    """The K per-label offsets followed by the scale, on x's device in the compute dtype."""
    host = torch.from_numpy(np.append(np.asarray(coef, dtype=np.float64), scale))
    return host.to(device=x.device, dtype=compute_dtype(x))


def _programs(x: torch.Tensor, n_rows: int) -> int:
    """The programs a sweep launches (its partial-sum buffer's rows)."""
    processors = _processors(x.device) if x.is_cuda else 4
    return max(1, min(processors * PROGRAMS_PER_SM, _cdiv(n_rows, MIN_ROWS_PER_PROGRAM)))


def _cdiv(a: int, b: int) -> int:
    """Plain Python on the host: ``triton.cdiv`` and ``triton.next_power_of_2`` go through
    Triton's JIT wrapper, 2-4 us a call, several calls per sweep."""
    return -(-a // b)


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@functools.cache
def _processors(device: torch.device) -> int:
    return torch.cuda.get_device_properties(device).multi_processor_count


def _row_align(x: torch.Tensor) -> int:
    """Largest power of two (<= 16) dividing the row stride: lets loads vectorise."""
    stride = x.stride(0)
    return math.gcd(stride, 16) if stride else 16


class FusedLaunch(NamedTuple):
    """One launch configuration of the one-pass sweep (see ``_sweep_fused``)."""

    rows: int
    warps: int
    prefetch: bool
    poly: int = 0
    stages: int = 1


def _fused_configs(width: int, tiles: int, x: torch.Tensor) -> list[FusedLaunch]:
    """The one-pass sweep's launch configurations to try, the default first.

    Warps lie along the columns (at most one per 128 columns of a tile), so a row tile's max
    and sum cost one cross-warp reduction each; a thread holds 16 to 32 scores of a tile
    (checked with ptxas for sm_90: no spills, 6 barriers per row tile). Half-precision
    inputs keep one row per tile: with more, Triton converts between the 16-bit load layout
    and the float32 one through shared memory (26 barriers per tile instead of 6).
    """
    return list(_configs(width, tiles, x.element_size(), x.stride(1), _row_align(x)))


@functools.cache
def _configs(width: int, tiles: int, itemsize: int, col_stride: int,
             row_align: int) -> tuple[FusedLaunch, ...]:
    """:func:`_fused_configs` for one shape class (building the list took 25-30 us of host
    time per sweep)."""
    cap = _max_warps(width)
    configs: list[FusedLaunch] = []
    for warps in (min(8, cap), min(16, cap), min(4, cap)):
        per_row = max(1, width * tiles // (32 * warps))
        for target, prefetch in ((16, True), (32, True), (16, False), (32, False)):
            rows = min(64, 1 << (max(1, target // per_row).bit_length() - 1))
            if itemsize == 2 and per_row >= 4:
                rows = 1
            if FusedLaunch(rows, warps, prefetch) not in configs:
                configs.append(FusedLaunch(rows, warps, prefetch))
    configs = configs[:6]
    if itemsize <= 4:
        configs += _instruction_saving(configs, width, tiles, itemsize == 2)
        configs += _pipelined(width, tiles, itemsize, col_stride, row_align)
    return tuple(configs)


def _max_warps(width: int) -> int:
    """Warps lie along a tile's columns, at most one per 128 of them (and 16 in all)."""
    return max(1, min(16, width // 128))


def _instruction_saving(configs: list[FusedLaunch], width: int, tiles: int,
                        half: bool) -> list[FusedLaunch]:
    """Extra configurations for float32 compute, most of all for 16-bit scores, whose sweep
    is bound by instructions and barriers, not memory (unmeasured on a GPU when added: the
    tuner keeps them only where they time faster). Two warps hold twice the scores per
    thread of four, so the per-row reductions and barriers are spread over twice the work
    (K=3000, sm_90: 9.0 SASS instructions per bfloat16 score against 10.4 with four warps
    and 13.6 with eight, 8.1 per float32 one; no spills); ``poly`` (16-bit only) computes
    the last tile's exponentials with FMAs, off the special-function unit."""
    extra = []
    if width >= 512 and width * tiles // 64 <= 64:
        extra += [FusedLaunch(1, 2, True), FusedLaunch(1, 2, False)]
    if half and tiles > 1:
        default = configs[0]
        extra += [default._replace(poly=1)] + ([default._replace(poly=2)] if tiles > 3 else [])
    return extra


def _pipelined(width: int, tiles: int, itemsize: int, col_stride: int,
               row_align: int) -> list[FusedLaunch]:
    """Software-pipelined configurations: one row per tile, the next PIPELINE_STAGES - 1 rows
    copied asynchronously into shared memory while this one is reduced.

    The register prefetch keeps one row per program in flight, and a multiprocessor holds
    only so many programs: at K=3000 (sm_90, ptxas) the bfloat16 sweep the H200 tuner chose
    (4 warps, 120 registers) runs 4 programs per multiprocessor, 24 KB of scores in flight
    where float32's pick (8 warps, 64 registers, 12 KB rows) keeps 48 KB, and its time
    (1.72x a read) is about the read plus the instruction issue, not the larger of the two.
    Pipelined, the 4-warp and 2-warp bfloat16 sweeps take 95 and 173 registers, run 5
    programs per multiprocessor and keep 60 KB in flight, and the 2-warp one issues 1006
    warp instructions per row against the 4-warp register prefetch's 1208. On an H200 the
    4-warp pipelined kernel then took 2.24 ms (1.20x a read) against the register
    prefetch's 2.73 ms, and the tuner chose it (the tuner keeps a candidate only where it
    agrees with the default and times faster). Rows of more than ``PIPELINE_ROW_BYTES``
    are left out (their stages would crowd the multiprocessor's shared memory), and so are
    warp counts that would give a thread more than ``PIPELINE_SCORES_PER_THREAD`` scores,
    and layouts whose rows cannot be copied in aligned words of 4 bytes or more (the
    compiler would not pipeline them).
    """
    if width * tiles * itemsize > PIPELINE_ROW_BYTES or (
            col_stride != 1 or row_align * itemsize < 4):
        return []
    cap = _max_warps(width)
    fit = [w for w in (2, 4, 8, 16) if width * tiles <= 32 * w * PIPELINE_SCORES_PER_THREAD]
    warps = sorted({min(w, cap) for w in fit[:3]})
    return [FusedLaunch(1, w, False, stages=PIPELINE_STAGES) for w in warps]


def _elapsed(run) -> float:
    """Milliseconds for three calls of ``run`` on the current CUDA stream."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(3):
        run()
    stop.record()
    stop.synchronize()
    return start.elapsed_time(stop)


TUNER = Tuner(_elapsed, lambda: (OutOfResources, PTXASError))


def tuned_configs() -> dict[str, dict]:
    """The launch configurations chosen so far and those ruled out, for benchmark reports."""
    return TUNER.report(lambda key: "{} {} K={}".format(*key))
