"""The Numba backend: one fused pass per Sinkhorn iteration, on all cores, with a vectorised exp.

A sweep reads each row of scores from memory once; everything after that stays in L1:

1. ``z = lam * s + f`` for the row, with its maximum and minimum (8-wide vector code); then
   the first 4 KB of the next row are requested (:func:`_prefetch_row`), so that they load
   while this row is computed.
2. Screening: ``exp(z - max)`` underflows to 0 for ``z < max - 87.3`` (float32), and at lam=25
   on classifier scores about 96% of a row does. Blocks of ``W = 8`` that hold any larger ``z``
   are packed, without branches, into a scratch row; the rest is never exponentiated. A row
   whose whole range fits (small lam) skips the screening.
3. ``exp(z - max)`` of the packed blocks and its sum; the normalised blocks are added to a
   float64 accumulator of the K label masses, and ``max + log(sum)`` to the rows' log-sum-exp
   (``sweep_lse``, which the solver calls; ``sweep`` is the same pass).

Rows are split into tasks of ~2 MiB taken by ``numba.get_num_threads()`` threads (the kernels
release the GIL). Each task has its own accumulator and they are added in task order, so the
result does not depend on the thread count or on scheduling. float32 scores (and 16-bit ones,
below) are computed in float32 and accumulated in float64.

Narrow rows (K <= ``BLOCK_SWEEP_MAX_K`` = 16) leave the vector units idle row by row; their
sweep, :func:`_sweep_row_blocks`, takes blocks of ``BLOCK_ROWS`` rows loaded transposed and
vectorises every step across the rows, with one ``log`` per block: 5-17x less time per pass
from K = 16 down to K = 2 (float32, a 2-core x86 VM, ``benchmarks/cpu_small_k.py``). Their
labelling pass, :func:`_best_row_blocks`, is taken the same way (1.4-4.8x), with the row
kernel's bits.

The exponential. Numba's ``math.exp`` is a scalar libm call; it vectorises only with Intel
SVML, and the llvmlite that Numba 0.68 uses (0.50) is built without the SVML patch, so
installing ``icc_rt`` changes nothing (``numba -s``: "llvmlite Using SVML Patched LLVM:
False"). :func:`_exp_f32` and :func:`_exp_f64` are written to vectorise instead: ``x = n ln2 +
r`` with ``n = round(x / ln2)`` (ln2 in two parts, exact for ``|n| < 128``, resp. ``2**11``), a
polynomial for ``exp(r)`` on ``|r| <= ln2/2`` (degree 6, resp. 11; coefficients fitted at
Chebyshev nodes) and ``2**n`` built from its exponent bits. On 1.2e7 points of [-87.33, 0] the
float32 one's largest relative error against long double ``exp`` is 8.9e-8 (1.06 ulp; float32
``np.exp``: 2.1e-7; over every float32 in [-87.33654, 0], against float64 ``exp``: 9.13e-8,
1.085 ulp, at -27.378284), and on 1.2e7 points of [-708.3964, 0] the float64 one's is 1.8e-16 (1.17
ulp; float64 ``np.exp``: 0.51 ulp). On one core, on in-cache rows, they run 6.6x and 4.0x
faster than the scalar ``math.exp`` (2.3 vs 0.35 and 0.68 vs 0.17 G/s, measured side by side
on a shared machine: ``benchmarks/numba_exp.py``). Inputs below the dtype's screening
threshold (-87.3, resp. -708.3964, where results are still normal) and -inf give exactly 0.
float64 needs the fast exp as much: its screening skips only what underflows float64, so at
lam=25 nearly every score is exponentiated; its pass took 2.6-3.1x less time than with libm.

Layouts. Kernels read a 1-D view holding row ``i`` at ``[i * ld, i * ld + K)``, so C-ordered
arrays and row slices of wider arrays are read in place. Any other chunk (Fortran order,
strided columns, another byte order, integers) is never copied whole: each task's rows are
copied, or converted to the compute dtype, into the thread's own buffer and computed there
while in cache (:class:`ChunkRows`). Inputs are never written.

16-bit scores. float16 and bfloat16 (given as its bits, :func:`bfloat16_rows`: the torch
backend's route for CPU tensors) are read in place too and widened to float32 as each score is
loaded (:func:`_widen`: ``fpext half`` for float16, one F16C ``vcvtph2ps`` per 8 scores; the
bits shifted into the top of a float32 for bfloat16). Both widenings are exact and the kernels
are the same after the load, so the results are the bits of the float32 pass on the widened
scores. Numba 0.68's CPU target has no float16 arrays at all (no data model), so both formats
travel as their raw bits in a one-field record named after the format (:data:`HALF_BITS`,
:data:`BFLOAT16_BITS`): the element type says how to widen, and no integer array can be read as
16-bit floats. Before, float16 chunks were copied to float32 by NumPy on one thread, which took
several times the pass itself and doubled the chunk's memory.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic, overload

from .._simd import (
    FAST,
    JIT_DISABLED,
    W,
    block_keep,
    block_pointer,
    first_equal,
    fmax,
    fmaximum,
    fmin,
    prefetch,
    splat,
)
from ._base import BackendUnavailable, Kernel, compute_dtype

# With the compiler off, "auto" takes the NumPy backend, and torch its own ops.
if numba.config.DISABLE_JIT:  # type: ignore[attr-defined]
    raise BackendUnavailable(JIT_DISABLED)

# Below these, exp(x) is 0 or subnormal, and its share of a row sum (which is >= 1) is below
# the float's resolution: blocks whose maximum lies this far below the row maximum are skipped.
_UNDERFLOW = {np.dtype(np.float32): -87.33654, np.dtype(np.float64): -708.3964}

# ---------------------------------------------------------------------------------------------
# Intrinsics of this backend only (the shared ones are in ``sinklabel._simd``)
# ---------------------------------------------------------------------------------------------


@intrinsic
def _round_toward_zero(typingctx, x):
    """float -> int32 -> float: truncation in one vector instruction each way (float64 through
    int32 too: AVX2 converts 4 doubles to int32, and has no double <-> int64 conversion)."""
    if x not in (types.float32, types.float64):
        return None

    def codegen(context, builder, sig, args):
        return builder.sitofp(builder.fptosi(args[0], ir.IntType(32)), args[0].type)

    return x(x), codegen


@intrinsic
def _pow2(typingctx, n):
    """2**n for a float integer n in the normal range ([-126, 127] for float32, [-1022, 1023]
    for float64), assembled from its exponent bits."""
    if n not in (types.float32, types.float64):
        return None
    bits, mantissa, bias = (32, 23, 127) if n == types.float32 else (64, 52, 1023)

    def codegen(context, builder, sig, args):
        integer = ir.IntType(bits)
        # Through int32 for float64 too (see _round_toward_zero), then sign-extended.
        exponent = builder.fptosi(args[0], ir.IntType(32))
        if bits == 64:
            exponent = builder.sext(exponent, integer)
        biased = builder.add(exponent, ir.Constant(integer, bias))
        return builder.bitcast(builder.shl(biased, ir.Constant(integer, mantissa)),
                               args[0].type)

    return n(n), codegen


@intrinsic
def _block_axpy(typingctx, acc, j, p, d, w):
    """``acc[j:j+W] += float64(p[d:d+W]) * w`` for a float64 accumulator."""
    if not isinstance(acc, types.Array) or acc.dtype != types.float64:
        return None

    def codegen(context, builder, sig, args):
        acc_v, j_v, p_v, d_v, w_v = args
        p_block = builder.load(block_pointer(context, builder, sig.args[2], p_v, d_v, W), align=1)
        f64 = ir.VectorType(ir.DoubleType(), W)
        if p_block.type != f64:
            p_block = builder.fpext(p_block, f64)
        pointer = block_pointer(context, builder, sig.args[0], acc_v, j_v, W)
        total = builder.fadd(builder.load(pointer, align=1),
                             builder.fmul(p_block, splat(builder, w_v, W), flags=("contract",)),
                             flags=("contract",))
        builder.store(total, pointer, align=1)
        return context.get_dummy_value()

    return types.none(acc, j, p, d, w), codegen


# ---------------------------------------------------------------------------------------------
# 16-bit scores: read as their bits, widened to float32 on load
# ---------------------------------------------------------------------------------------------

#: The storage the kernels read 16-bit scores as. Numba's CPU target has no float16 (0.68 has
#: no data model for it: a float16 array cannot even be passed) and NumPy no bfloat16, so both
#: are read as their raw bits, held in a one-field record named after the format: a record,
#: not an integer, so no integer array can be read as 16-bit floats.
HALF_BITS = np.dtype([("float16", np.uint16)])
BFLOAT16_BITS = np.dtype([("bfloat16", np.uint16)])


def bfloat16_rows(bits: np.ndarray) -> np.ndarray:
    """bfloat16 scores given as their bits (e.g. ``tensor.view(torch.int16).numpy()``), as a
    view that :class:`NumbaKernel` takes and reads as bfloat16 (computed in float32)."""
    dtype = bits.dtype
    if dtype.kind not in "iu" or dtype.itemsize != 2 or not dtype.isnative or bits.ndim != 2:
        raise TypeError(f"bfloat16 bits must be a 2-D native 16-bit integer array, got "
                        f"{dtype.str} with {bits.ndim} dimensions")
    return bits.view(BFLOAT16_BITS)


@intrinsic
def _half_to_float(typingctx, bits):
    """float16 bits -> float32 (exact): ``fpext half``, which F16C does 8 at a time."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        return builder.fpext(builder.bitcast(args[0], ir.HalfType()), ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _bfloat16_to_float(typingctx, bits):
    """bfloat16 bits -> float32 (exact): they are the top half of the float32."""
    if bits != types.uint16:
        return None

    def codegen(context, builder, sig, args):
        i32 = ir.IntType(32)
        word = builder.shl(builder.zext(args[0], i32), ir.Constant(i32, 16))
        return builder.bitcast(word, ir.FloatType())

    return types.float32(bits), codegen


def _widen(x):
    """A score as the compute dtype: float32 and float64 as they are, 16-bit bits to float32."""


@overload(_widen)
def _widen_overload(x):
    if isinstance(x, types.Float):
        return lambda x: x
    if isinstance(x, types.Record) and list(x.fields) == ["float16"]:
        return lambda x: _half_to_float(x.float16)
    if isinstance(x, types.Record) and list(x.fields) == ["bfloat16"]:
        return lambda x: _bfloat16_to_float(x.bfloat16)
    return None


# ---------------------------------------------------------------------------------------------
# The exponential
# ---------------------------------------------------------------------------------------------

_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)  # 9 significant bits: n * _LN2_HI is exact for |n| < 128
_LN2_LO = np.float32(-2.12194440e-4)  # ln 2 - _LN2_HI
# exp(r) = 1 + r + r**2 * (C0 + C1 r + ... + C4 r**4) on |r| <= ln2/2: least squares at 2000
# Chebyshev nodes, rounded to float32 (approximation error 1.1e-8, below float32 resolution).
_C0 = np.float32(0.5)
_C1 = np.float32(0.16666576266288757)
_C2 = np.float32(0.04166646674275398)
_C3 = np.float32(0.008363175205886364)
_C4 = np.float32(0.0013933643931522965)
_F32_UNDERFLOW = np.float32(_UNDERFLOW[np.dtype(np.float32)])


# No ``reassoc`` here: it would fold the two-part ln2 back into one rounded constant and lose
# 2e-7 of accuracy near -87. LLVM inlines this into the vectorised loops with these flags.
@njit(fastmath={"nnan", "nsz", "contract"}, cache=True)
def _exp_f32(x):
    """exp(x) for float32 x <= 0, vectorisable; exactly 0 below -87.3 and for -inf."""
    xc = fmax(x, np.float32(-87.5))
    n = _round_toward_zero(xc * _LOG2E - np.float32(0.5))  # round to nearest, as x <= 0
    r = xc - n * _LN2_HI
    r = r - n * _LN2_LO
    poly = _C4 * r + _C3
    poly = poly * r + _C2
    poly = poly * r + _C1
    poly = poly * r + _C0
    poly = poly * (r * r) + r + np.float32(1.0)
    result = poly * _pow2(n)
    return result if x >= _F32_UNDERFLOW else np.float32(0.0)


_F64_LOG2E = 1.4426950408889634
_F64_LN2_HI = 0.6931471805598903  # 42 significant bits: n * _F64_LN2_HI is exact for |n| < 2**11
_F64_LN2_LO = 5.497923018708371e-14  # ln 2 - _F64_LN2_HI (from a 60-digit ln 2)
# exp(r) = 1 + r + r**2 * (D0 + D1 r + ... + D9 r**9) on |r| <= ln2/2 (1e-6 wider, for the
# rounding of n): least squares at 4000 Chebyshev nodes against the Taylor series of
# (exp(r) - 1 - r) / r**2 summed in long double, refined on the long double residual, rounded
# to float64 (D0 = 1/2 exactly). Approximation error 3.5e-17, a third of float64's resolution.
_D0 = 0.5
_D1 = 0.1666666666666667
_D2 = 0.041666666666624164
_D3 = 0.008333333333326063
_D4 = 0.0013888888917197482
_D5 = 0.0001984126987505617
_D6 = 2.4801521320580148e-05
_D7 = 2.755725510603886e-06
_D8 = 2.762007692901179e-07
_D9 = 2.510533770506527e-08
_F64_UNDERFLOW = _UNDERFLOW[np.dtype(np.float64)]


# As _exp_f32. Every result it returns is normal: -708.3964 lies above ln(2**-1022) =
# -708.39642, so n >= -1022 and 2**n has an exponent; below it the result is exactly 0.
@njit(fastmath={"nnan", "nsz", "contract"}, cache=True)
def _exp_f64(x):
    """exp(x) for float64 x <= 0, vectorisable; exactly 0 below -708.3964 and for -inf."""
    xc = fmax(x, -708.5)
    n = _round_toward_zero(xc * _F64_LOG2E - 0.5)  # round to nearest, as x <= 0
    r = xc - n * _F64_LN2_HI
    r = r - n * _F64_LN2_LO
    poly = _D9 * r + _D8
    poly = poly * r + _D7
    poly = poly * r + _D6
    poly = poly * r + _D5
    poly = poly * r + _D4
    poly = poly * r + _D3
    poly = poly * r + _D2
    poly = poly * r + _D1
    poly = poly * r + _D0
    poly = poly * (r * r) + r + 1.0
    result = poly * _pow2(n)
    return result if x >= _F64_UNDERFLOW else 0.0


def _exp(x):
    """exp for the compute dtype: the vectorised float32 or float64 version."""


@overload(_exp)
def _exp_overload(x):
    if x == types.float32:
        return lambda x: _exp_f32(x)
    if x == types.float64:
        return lambda x: _exp_f64(x)
    return None


# ---------------------------------------------------------------------------------------------
# Kernels on a row-contiguous 1-D buffer: row i is buf[i * ld : i * ld + k].
# ---------------------------------------------------------------------------------------------

# Scores are read through ``_widen``; everything after the load is in the compute dtype, which
# is ``f``'s (float32 for 16-bit storage), so a 16-bit chunk gives the bits of its float32 copy.

#: Bytes of the next row requested while a row is screened and exponentiated.
PREFETCH_BYTES = 4096
#: Bytes per cache line: one prefetch each.
_LINE_BYTES = 64


@njit(nogil=True, cache=True)
def _prefetch_row(buf, start, k):
    """Request the cache lines of the first ``PREFETCH_BYTES`` of the row at ``buf[start:]``.

    The sweep reads a row once, then works on it in L1; without this the next row's loads
    start only when its read does, and every 4 KB page of rows begins with misses that the
    hardware prefetcher does not cover. Requested after a row is read, the next one arrives
    while this one is computed: 11% less time per pass at 1e6 x 1000 float32 on a 2-core Zen
    4 VM (flat and peaked), 3% at K = 300 and 3000 and in float16 (``benchmarks/
    cpu_iteration.py``). More than a page ahead bought nothing there, and whole wide rows would
    crowd L1. The table build of ``cache=True`` prefetches too (1-10% faster); the label pass,
    with little work per row after its read, gained nothing measurable and does not.
    """
    stop = min(start + min(k, PREFETCH_BYTES // buf.itemsize), len(buf))
    for j in range(start, stop, _LINE_BYTES // buf.itemsize):
        prefetch(buf, j)


# Each kernel handles the rows [lo, hi) and releases the GIL, so the kernel object can run one
# row range per thread (see ``_RowThreads``). Plain ``nogil`` functions compile in about half
# the time of ``parallel=True`` ones, which matters for the first call in a training job.


@njit(fastmath=FAST, nogil=True, cache=True)
def _sweep_rows(buf, lo, hi, k, ld, f, lam, underflow, acc):
    """Add softmax(lam * row + f) of rows lo..hi-1 to ``acc[:k]`` and their log-sum-exp to
    ``acc[k]`` (``acc``: float64, length k + 1).

    The log-sum-exp is ``max + log(sum)`` with the very row sum that normalises the masses, so
    it counts exactly the blocks the screening kept (the rest add below float resolution).
    """
    full = k - k % W
    z = np.empty(k, f.dtype)
    packed = np.empty(k, f.dtype)
    live = np.empty(k // W + 1, np.int64)
    lse = 0.0
    for i in range(lo, hi):
        row = buf[i * ld:i * ld + k]  # a slice: non-negative indices, no wraparound checks
        # Finite bounds, not -inf: (-inf) - (-inf) would be NaN, which these flags exclude.
        # The dtype's own extremes, so that every finite z of a row lies between them.
        top = -np.finfo(f.dtype).max
        bottom = np.finfo(f.dtype).max
        for j in range(k):
            value = lam * _widen(row[j]) + f[j]
            z[j] = value
            top = fmax(top, value)
            bottom = fmin(bottom, value)
        _prefetch_row(buf, (i + 1) * ld, k)
        total = f.dtype.type(0.0)
        if bottom - top >= underflow:
            # Every exponential is in range (small lam): screening would find nothing to skip.
            for j in range(k):
                p = _exp(z[j] - top)
                z[j] = p
                total += p
            weight = 1.0 / np.float64(total)
            for j in range(k):
                acc[j] += z[j] * weight
        else:
            # Pack the blocks holding any z >= top + underflow. The threshold is rounded down,
            # never up: near |top| = 1e8 a float32 sum would round to top and drop live blocks.
            exact = np.float64(top) + np.float64(underflow)
            threshold = f.dtype.type(exact - abs(exact) * 2.5e-7)
            n_live = 0
            for b in range(0, full, W):
                live[n_live] = b
                n_live += block_keep(z, b, threshold, packed, n_live * W)
            for j in range(n_live * W):
                p = _exp(packed[j] - top)
                packed[j] = p
                total += p
            for j in range(full, k):
                p = _exp(z[j] - top)
                z[j] = p
                total += p
            weight = 1.0 / np.float64(total)
            for q in range(n_live):
                _block_axpy(acc, live[q], packed, q * W, weight)
            for j in range(full, k):
                acc[j] += z[j] * weight
        lse += np.float64(top) + math.log(np.float64(total))
    acc[k] += lse


#: Widest rows that :func:`_sweep_row_blocks` sweeps: ``BLOCK_ROWS`` row sums, each in
#: ``[1, K]``, multiply to at most ``16**64 = 2**256``, far inside float64's range.
BLOCK_SWEEP_MAX_K = 16
#: Rows per block of :func:`_sweep_row_blocks`.
BLOCK_ROWS = 64


@njit(fastmath=FAST, nogil=True, cache=True)
def _sweep_row_blocks(buf, lo, hi, k, ld, f, lam, underflow, acc, rows):
    """:func:`_sweep_rows` for narrow rows (K <= ``BLOCK_SWEEP_MAX_K``), ``rows`` rows at a time.

    Row by row, a narrow row leaves the vector units idle: its max, K exponentials, sum and one
    ``log`` are scalar work, ~50 ns per row. Here a block of rows is loaded transposed (label
    by label, strided loads), so every step is vectorised across the rows, and one ``log`` of
    the product of the block's row sums stands for its rows' logs. ``rows`` is an argument,
    not a constant: a known count lets LLVM unroll the row loops and vectorise across the few
    labels instead, 2-3x slower at K <= 4. Rows after the last whole block go row by row.
    Without screening, exponentials below ``underflow`` are 0 all the same (see ``_exp``).
    """
    z = np.empty((k, rows), f.dtype)
    top = np.empty(rows, f.dtype)
    total = np.empty(rows, f.dtype)
    weight = np.empty(rows)
    lse = 0.0
    stop = lo + (hi - lo) // rows * rows
    for start in range(lo, stop, rows):
        for j in range(k):
            shift = f[j]
            for r in range(rows):
                z[j, r] = lam * _widen(buf[(start + r) * ld + j]) + shift
        top[:] = -np.finfo(f.dtype).max  # finite: see _sweep_rows
        total[:] = 0.0
        for j in range(k):
            for r in range(rows):
                top[r] = fmax(top[r], z[j, r])
        # Exponentials and their sums in separate loops: fused, they did not vectorise.
        for j in range(k):
            for r in range(rows):
                z[j, r] = _exp(z[j, r] - top[r])
        for j in range(k):
            for r in range(rows):
                total[r] += z[j, r]
        product = 1.0
        for r in range(rows):
            lse += np.float64(top[r])
            product *= np.float64(total[r])
            weight[r] = 1.0 / np.float64(total[r])
        lse += math.log(product)
        for j in range(k):
            mass = 0.0
            for r in range(rows):
                mass += z[j, r] * weight[r]
            acc[j] += mass
    acc[k] += lse
    if stop < hi:
        _sweep_rows(buf, stop, hi, k, ld, f, lam, underflow, acc)


def _sweep_call(k: int) -> tuple[Callable, tuple]:
    """The sweep kernel for rows of ``k`` labels, and its arguments after ``acc``."""
    if k <= BLOCK_SWEEP_MAX_K:
        return _sweep_row_blocks, (BLOCK_ROWS,)
    return _sweep_rows, ()


# No fastmath: labels must match NumPy's arithmetic exactly (no fused multiply-add), and a NaN
# or +inf score must surface in the row maximum, which is how the API's input check finds it.
@njit(nogil=True, cache=True)
def _best_rows(buf, lo, hi, k, ld, f, lam, top, labels):
    """Per row, max of lam * row + f and the first label reaching it (as ``np.argmax``)."""
    z = np.empty(k, f.dtype)
    for i in range(lo, hi):
        row = buf[i * ld:i * ld + k]
        m = f.dtype.type(-np.inf)
        for j in range(k):
            value = lam * _widen(row[j]) + f[j]
            z[j] = value
            m = fmaximum(m, value)
        if m != m:
            label = 0  # NaN equals nothing: the first NaN
            while z[label] == z[label]:
                label += 1
        else:
            label = first_equal(z, m, k)  # m is one of the row's values: always found
        top[i] = m
        labels[i] = label


#: Widest rows that :func:`_best_row_blocks` labels.
BLOCK_BEST_MAX_K = 16


@njit(nogil=True, cache=True)
def _best_row_blocks(buf, lo, hi, k, ld, f, lam, top, labels, rows):
    """:func:`_best_rows` for narrow rows (K <= ``BLOCK_BEST_MAX_K``), ``rows`` rows at a time.

    Label by label, each step runs across a block of rows (strided loads), so it vectorises
    where a narrow row alone would not. A label replaces the row's best when its value is
    larger, or is the row's first NaN: the first label reaching the maximum, as ``np.argmax``
    and :func:`_best_rows`. ``rows`` is an argument, not a constant (see
    :func:`_sweep_row_blocks`). Rows after the last whole block go row by row.
    """
    z = np.empty((k, rows), f.dtype)
    best = np.empty(rows, f.dtype)
    label = np.empty(rows, np.int64)
    stop = lo + (hi - lo) // rows * rows
    for start in range(lo, stop, rows):
        # The load of _sweep_row_blocks, here compiled without fastmath: no fused
        # multiply-add may change z, which must be NumPy's to the bit.
        for j in range(k):
            shift = f[j]
            for r in range(rows):
                z[j, r] = lam * _widen(buf[(start + r) * ld + j]) + shift
        best[:] = -np.inf
        label[:] = 0
        for j in range(k):
            for r in range(rows):
                value = z[j, r]
                m = best[r]
                wins = (value > m) | ((value != value) & (m == m))
                label[r] = j if wins else label[r]
                best[r] = fmaximum(m, value)
        top[start:start + rows] = best
        labels[start:start + rows] = label
    if stop < hi:
        _best_rows(buf, stop, hi, k, ld, f, lam, top, labels)


def _best_call(k: int) -> tuple[Callable, tuple]:
    """The labelling kernel for rows of ``k`` labels, and its arguments after ``labels``."""
    if 1 <= k <= BLOCK_BEST_MAX_K:
        return _best_row_blocks, (BLOCK_ROWS,)
    return _best_rows, ()


@njit(fastmath=FAST, nogil=True, cache=True)
def _slack_rows(buf, lo, hi, k, ld, f, lam, slack):
    """``slack[y] = max(slack[y], z[i, y] - max z[i, :])`` over rows lo..hi-1."""
    z = np.empty(k, f.dtype)
    for i in range(lo, hi):
        row = buf[i * ld:i * ld + k]
        m = -np.finfo(f.dtype).max
        for j in range(k):
            value = lam * _widen(row[j]) + f[j]
            z[j] = value
            m = fmax(m, value)
        for j in range(k):
            slack[j] = fmax(slack[j], z[j] - m)


@njit(fastmath=FAST, nogil=True, cache=True)
def _soft_rows(buf, lo, hi, k, ld, f, lam, out):
    """Rows lo..hi-1 of the row-wise softmax of lam * rows + f, written to ``out``."""
    for i in range(lo, hi):
        scores = buf[i * ld:i * ld + k]
        row = out[i]
        m = -np.finfo(f.dtype).max
        for j in range(k):
            value = lam * _widen(scores[j]) + f[j]
            row[j] = value
            m = fmax(m, value)
        total = 0.0
        for j in range(k):
            p = _exp(row[j] - m)
            row[j] = p
            total += p
        weight = f.dtype.type(1.0 / total)
        for j in range(k):
            row[j] *= weight


@njit(nogil=True, cache=True)
def _gather_rows(buf, lo, hi, ld, labels, out):
    for i in range(lo, hi):
        out[i] = _widen(buf[i * ld + labels[i]])


#: Labels copied at a time by :func:`_copy_rows`: 128 columns keep 128 cache lines and pages
#: in use at once. Timed against 16, 32, 64 and 512 on an Intel VM: 16-64 were 10% faster
#: where the columns lie 4 KiB apart, but up to 1.14x slower than 512 elsewhere, and 128
#: leaves rows of K <= 128 to the plain loop.
COPY_LABELS = 128


@njit(nogil=True, cache=True)
def _copy_rows(src, dst, lo, hi):
    """Rows ``lo:hi`` of ``src`` (any strides) into the C-ordered ``dst``: in a task's rows
    of a Fortran-ordered chunk, each column's few KB sit together and stay in cache from one
    row to the next, COPY_LABELS columns at a time. A row across many labels touches one
    line and one page per label; where the columns lie a multiple of 4 KiB apart (N a
    multiple of 1024 in float32), lines that map to the same cache sets, blocks of 512
    labels copied 2-6x slower than smaller blocks (likely conflict misses; not profiled):
    a transposed pass took 0.41-0.59x the time with blocks of 128 at K = 512-3000, and
    0.68-1.02x at other column strides (docs/benchmarks.md)."""
    k = src.shape[1]
    if k <= COPY_LABELS:  # one block: the plain loop, which compiles to faster code
        for i in range(lo, hi):
            for j in range(k):
                dst[i, j] = src[i, j]
        return
    for first in range(0, k, COPY_LABELS):
        last = min(k, first + COPY_LABELS)
        for i in range(lo, hi):
            for j in range(first, last):
                dst[i, j] = src[i, j]


# ---------------------------------------------------------------------------------------------
# Threads and layouts
# ---------------------------------------------------------------------------------------------


def _row_ranges(n_rows: int, n_labels: int) -> list[tuple[int, int]]:
    """Split a chunk into tasks of about 2 MiB of scores each.

    The split depends only on the shape, so per-task partial sums added in task order give
    the same bits whatever the thread count or scheduling. Many small tasks, taken by whichever
    thread is free, also keep a thread that the OS descheduled from holding up the chunk.
    """
    rows = max(1, (2 << 20) // max(1, 4 * n_labels))
    return [(lo, min(n_rows, lo + rows)) for lo in range(0, n_rows, rows)]


#: Bytes of per-task label sums a sweep holds at once (more when the threads need more).
SUMS_BYTES = 16 << 20


class _RowThreads:
    """Runs row-range kernel calls on ``count()`` threads, the caller's included, the others
    from one pool per process (kernel objects are made per solve; their threads are not)."""

    def __init__(self, count: Callable[[], int]) -> None:
        self._count = count

    def count(self) -> int:
        """Threads a ``run`` uses at most."""
        return self._count()

    def run(self, kernel, calls: list[tuple]) -> None:
        """``kernel(*args)`` for every ``args`` in ``calls``, in parallel, in any order."""
        threads = min(self._count(), len(calls))
        if threads <= 1:
            for args in calls:
                kernel(*args)
            return
        pending = iter(calls)  # list iterators are safe to share: next() holds the GIL

        def work() -> None:
            for args in pending:
                kernel(*args)

        futures = [_executor().submit(work) for _ in range(threads - 1)]
        work()
        for future in futures:
            future.result()


_pool: ThreadPoolExecutor | None = None
_pool_pid = 0
_pool_lock = threading.Lock()


def _executor() -> ThreadPoolExecutor:
    """The process's helper threads, created on first use and again after a fork (a forked
    child inherits the pool object but not its threads, and would wait forever). Its tasks
    never wait on one another, so solves in several threads can share it."""
    global _pool, _pool_pid
    with _pool_lock:
        if _pool is None or _pool_pid != os.getpid():
            _pool = ThreadPoolExecutor(thread_name_prefix="sinklabel-numba")
            _pool_pid = os.getpid()
        return _pool


def _rows_in_place(chunk: np.ndarray) -> bool:
    """True when each row is contiguous and rows follow at a fixed positive stride."""
    n, k = chunk.shape
    size = chunk.itemsize
    if k > 1 and chunk.strides[1] != size:
        return False
    return n == 1 or (chunk.strides[0] >= k * size and chunk.strides[0] % size == 0)


#: What the kernels read each dtype they take in place as (native byte order only).
_STORAGE: dict[np.dtype, np.dtype] = {
    np.dtype(np.float32): np.dtype(np.float32),
    np.dtype(np.float64): np.dtype(np.float64),
    np.dtype(np.float16): HALF_BITS,
    BFLOAT16_BITS: BFLOAT16_BITS,
}


def _reads_in_place(chunk: np.ndarray) -> bool:
    """True when the kernels read the chunk's own memory: a dtype they load (float16, bfloat16
    bits, float32, float64, native byte order) in rows they can walk (:func:`_rows_in_place`)."""
    return chunk.dtype in _STORAGE and _rows_in_place(chunk)


def _float_values(array: np.ndarray) -> np.ndarray:
    """The scores as a NumPy float array: bfloat16 bits widened to float32 (exact), any other
    dtype as it is."""
    if array.dtype == BFLOAT16_BITS:
        return (array["bfloat16"].astype(np.uint32) << 16).view(np.float32)
    return array


def _row_buffer(chunk: np.ndarray) -> tuple[np.ndarray, int, np.dtype]:
    """A read-only 1-D view holding row i at ``[i * ld, i * ld + k)``, ``ld``, and the dtype
    the scores are computed in (float32 for 16-bit scores, which are read as their bits).

    Chunks the kernels read in place are viewed; anything else (Fortran order, strided columns,
    other byte orders) is first copied into a C-ordered chunk of the compute dtype: what the
    tables of ``cache=True`` do with the few rows they repair. The kernels' passes copy a
    task's rows at a time instead (:class:`ChunkRows`).
    """
    dtype = compute_dtype(chunk.dtype)
    if _reads_in_place(chunk):
        chunk = chunk.view(_STORAGE[chunk.dtype])
    else:
        chunk = np.ascontiguousarray(_float_values(chunk), dtype=dtype)
    n, k = chunk.shape
    ld = chunk.strides[0] // chunk.itemsize if n > 1 else k
    flat = np.lib.stride_tricks.as_strided(
        chunk, shape=(max(0, (n - 1) * ld + k),), strides=(chunk.itemsize,), writeable=False
    )
    return flat, ld, dtype


# ---------------------------------------------------------------------------------------------
# The kernel object
# ---------------------------------------------------------------------------------------------


class NumbaKernel(Kernel):
    """Fused, multi-threaded kernels for NumPy arrays (float16, float32, float64, and
    bfloat16 given as bits through :func:`bfloat16_rows`).

    Threads: ``threads()`` of them, by default ``numba.get_num_threads()`` (``NUMBA_NUM_THREADS``,
    or ``numba.set_num_threads``). Compiled code is cached on disk, so only the first call on a
    machine pays the compile time.
    """

    name = "numba"
    libraries = ("numpy",)

    def __init__(self, threads: Callable[[], int] = numba.get_num_threads) -> None:
        self._threads = _RowThreads(threads)

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        """About 64 MiB of scores in the compute dtype per chunk: 32 tasks to share among the
        threads. A chunk read in place (C order, row slices, any dtype taken) costs no memory;
        any other holds one task's rows per thread (:class:`ChunkRows`). 16-bit chunks hold as
        many rows as float32 ones, so their per-chunk sums add up like their float32 copy's
        (the same bits)."""
        return max(1, (64 << 20) // max(1, n_labels * max(4, itemsize)))

    def sweep_lse(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        """One fused pass: the label masses and the rows' log-sum-exp sum (in column ``k``
        of the per-task sums, so both add up in the same fixed task order)."""
        f_typed, lam_typed = _typed(chunk, f, lam)
        n, k = chunk.shape
        underflow = f_typed.dtype.type(_UNDERFLOW[f_typed.dtype])
        ranges = _row_ranges(n, k)
        wave = self._tasks_per_wave(len(ranges), k + 1)
        acc = np.zeros((wave, k + 1))
        kernel, extra = _sweep_call(k)
        total = None
        for first in range(0, max(1, len(ranges)), wave):  # once for a chunk of no rows
            tasks = ranges[first:first + wave]
            sums = acc[:len(tasks)]
            if total is not None:
                sums.fill(0.0)
            self._run(chunk, kernel, tasks,
                      _task_args((f_typed, lam_typed, underflow), per_task=sums, after=extra))
            if total is not None:
                sums[0] += total  # as NumPy's sum adds: in task order, one task at a time
            total = sums.sum(axis=0)
        assert total is not None  # the loop runs at least once
        return total[:k], float(total[k])

    def _tasks_per_wave(self, n_tasks: int, width: int) -> int:
        """Tasks whose float64 sums of ``width`` are held at once.

        A task covers 2 MiB of scores, or one row: from K = 2**19 float32 scores on, every
        row is a task and its sums take twice its bytes. Held for every task of a chunk at
        once, they took 2.3 times the scores' memory (20 x 10**6, 2 threads); in waves they
        are added in the same order, so the result keeps its bits.
        """
        return max(1, min(n_tasks, max(2 * self._threads.count(), SUMS_BYTES // (8 * width))))

    def best(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
        f_typed, lam_typed = _typed(chunk, f, lam)
        n, k = chunk.shape
        top = np.empty(n, f_typed.dtype)
        labels = np.empty(n, np.int64)
        kernel, extra = _best_call(k)
        self._run(chunk, kernel, _row_ranges(n, k),
                  _task_args((f_typed, lam_typed), rows=(top, labels), after=extra))
        return top, labels

    def slack(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
        f_typed, lam_typed = _typed(chunk, f, lam)
        n, k = chunk.shape
        ranges = _row_ranges(n, k)
        slack = np.full((len(ranges), k), -np.inf, dtype=f_typed.dtype)
        self._run(chunk, _slack_rows, ranges, _task_args((f_typed, lam_typed), per_task=slack))
        return slack.max(axis=0).astype(np.float64)

    def soft(self, chunk: np.ndarray, f: np.ndarray, lam: float) -> np.ndarray:
        f_typed, lam_typed = _typed(chunk, f, lam)
        n, k = chunk.shape
        out = np.empty((n, k), f_typed.dtype)
        self._run(chunk, _soft_rows, _row_ranges(n, k), _task_args((f_typed, lam_typed),
                                                                    rows=(out,)))
        return out

    def gather(self, chunk: np.ndarray, labels: np.ndarray) -> np.ndarray:
        n, k = chunk.shape
        labels = np.asarray(labels)
        if labels.shape != (n,):
            raise ValueError(f"labels must have shape ({n},), got {labels.shape}")
        if n and (labels.min() < 0 or labels.max() >= k):
            raise ValueError(f"labels must lie in [0, {k}), got [{labels.min()}, {labels.max()}]")
        if not _reads_in_place(chunk):
            # Copying the chunk to read n of its n * k values would cost more than this.
            return _float_values(chunk[np.arange(n), labels]).astype(np.float64)
        buf, ld, _ = _row_buffer(chunk)
        labels = labels.astype(np.int64, copy=False)
        out = np.empty(n)
        _gather_rows(buf, 0, n, ld, labels, out)
        return out

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    def empty_labels(self, n: int, like: np.ndarray | None) -> np.ndarray:
        return np.empty(n, dtype=np.int64)

    def empty_rows(self, n: int, like: np.ndarray) -> np.ndarray:
        return np.empty((n, *like.shape[1:]), dtype=like.dtype)

    def _run(self, chunk: np.ndarray, kernel: Callable, ranges: list[tuple[int, int]],
             args: Callable[[int, int], tuple]) -> None:
        """``kernel(buf, lo, hi, k, ld, *args(t, first))`` for each task ``t`` of ``ranges``
        on the backend's threads, with the task's rows where :class:`ChunkRows` puts them
        (``first``: the chunk row that the call's row 0 is)."""
        rows = ChunkRows(chunk)

        def task(t: int, lo: int, hi: int) -> None:
            buf, lo, hi, ld, first = rows.task(lo, hi)
            kernel(buf, lo, hi, rows.k, ld, *args(t, first))

        self._threads.run(task, [(t, lo, hi) for t, (lo, hi) in enumerate(ranges)])


class ChunkRows:
    """Where the kernels read a task's rows of a chunk.

    A chunk they read in place is one buffer for every task. Any other chunk is never copied
    whole: each task's rows go into the calling thread's own buffer and are computed there
    while in cache. Rows the kernels cannot walk in a dtype they read (Fortran order, strided
    columns) are copied as they are (16-bit ones as their bits); other byte orders and dtypes
    (integers) are converted to the compute dtype. A pass over Fortran-ordered float32 scores
    took 0.55-0.76x the time of copying the whole chunk to rows first (0.16-0.29x for 16-bit
    scores, which were converted to float32 whole), with the same bits, and holds one task's
    rows per thread instead of a copy of the chunk (docs/benchmarks.md).
    """

    def __init__(self, chunk: np.ndarray) -> None:
        self.k = chunk.shape[1]
        self.dtype = compute_dtype(chunk.dtype)
        self._in_place = _reads_in_place(chunk)
        if self._in_place:
            self._buf, self._ld, _ = _row_buffer(chunk)
            return
        self._buffers = _ThreadRows()
        self._as_is = chunk.dtype in _STORAGE  # else converted to the compute dtype
        self._storage = _STORAGE[chunk.dtype] if self._as_is else self.dtype
        # 16-bit scores are copied as their bits
        self._source = chunk.view(np.uint16) if self._storage.itemsize == 2 else chunk

    def task(self, lo: int, hi: int) -> tuple[np.ndarray, int, int, int, int]:
        """``(buf, lo, hi, ld, first)``: rows ``lo:hi`` of the chunk are rows ``lo:hi`` of
        ``buf`` (row ``i`` at ``buf[i * ld:]``), and chunk row ``first`` is ``buf``'s row 0."""
        if self._in_place:
            return self._buf, lo, hi, self._ld, 0
        source = self._source[lo:hi]
        rows = self._buffers.rows(hi - lo, self.k, source.dtype if self._as_is else self.dtype)
        if self._as_is:
            _copy_rows(source, rows, 0, hi - lo)
        else:
            rows[...] = source  # another byte order or dtype: NumPy's cast
        buf = rows.reshape(-1).view(self._storage)
        buf.flags.writeable = False  # as _row_buffer's views: the kernels' compiled type
        return buf, 0, hi - lo, self.k, lo


class _ThreadRows(threading.local):
    """Each thread's buffer for the rows it copies during one operation: grown to its largest
    task and reused, so that a pass does not fault in fresh pages for every task."""

    def __init__(self) -> None:
        self.buffer = np.empty(0, np.uint8)

    def rows(self, n: int, k: int, dtype: np.dtype) -> np.ndarray:
        """An uninitialised C-ordered ``(n, k)`` array of ``dtype`` in this thread's buffer."""
        size = n * k * dtype.itemsize
        if self.buffer.size < size:
            self.buffer = np.empty(size, np.uint8)
        return self.buffer[:size].view(dtype).reshape(n, k)


def _typed(chunk: np.ndarray, f: np.ndarray, lam: float) -> tuple[np.ndarray, np.floating]:
    """``f`` and ``lam`` in the chunk's compute dtype."""
    dtype = compute_dtype(chunk.dtype)
    return np.ascontiguousarray(f, dtype=dtype), dtype.type(lam)


def _task_args(shared: tuple, *, per_task: np.ndarray | None = None, rows: tuple = (),
               after: tuple = ()) -> Callable[[int, int], tuple]:
    """A task's kernel arguments after ``ld``: ``shared``, the task's own entry of
    ``per_task`` (its sums), the per-row outputs seen from the call's first row, ``after``."""

    def args(t: int, first: int) -> tuple:
        own = () if per_task is None else (per_task[t],)
        return (*shared, *own, *(out[first:] for out in rows), *after)

    return args
