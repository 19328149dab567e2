"""The CuPy backend: fused CUDA kernels (``_cuda``, compiled by NVRTC) for the sweep and the
labels; plain CuPy ops, block by block, for the rarely used rest.

float16, float32 and float64 arrays are taken (CuPy has no bfloat16); float16 is computed in
float32. Rows wider than a block's registers hold (K > 16384 in float32, 8192 in float64)
take the blocked CuPy ops for the sweep too.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from functools import cache

import numpy as np

from ._base import Array, Kernel, compute_dtype
from ._buffers import CupySweepBuffers, cached
from ._cuda import SOURCE
from ._tuning import Tuner

LOG2E = math.log2(math.e)
#: Temporaries per block of the plain-CuPy operations.
BLOCK_BYTES = 64 << 20
#: Scores one thread keeps per row in the fused sweep, by accumulation dtype.
MAX_PER_THREAD = {"float32": 32, "float64": 16}
#: See the Triton kernels: the same partial-sum layout and wave sizing.
MIN_ROWS_PER_PROGRAM = 128
PROGRAMS_PER_SM = 32
TUNE_ELEMENTS = 1 << 26
#: Shared memory of the ringed sweep's row copies per block (the static limit is 48 KB).
RING_BYTES = 40 << 10
#: Widest spread of the offsets ``f * log2(e)`` (base-2 units) under which a column-weighted
#: sweep may shift each row by the bound ``lam * max(x) + max(f)`` instead of its exact
#: maximum: the bound exceeds the maximum by at most the spread, so each row's sum stays
#: above 2^-64 and the terms lost to underflow are below 2^-62 of it.
WEIGHTED_SPREAD = 64.0
_STORAGE = {"float16": "half_bits", "float32": "float", "float64": "double"}
#: dtype names by character code (NumPy's ``dtype.name`` takes microseconds).
_NAMES = {"e": "float16", "f": "float32", "d": "float64"}
_ACC = {"float32": "float", "float64": "double"}


class CupyKernel(Kernel):
    name = "cupy"
    libraries = ("cupy",)

    def __init__(self) -> None:
        import cupy  # noqa: F401  (fails here, with an install hint, when CuPy is missing)

    def chunk_rows(self, n_labels: int, itemsize: int) -> int:
        """All rows: the fused kernels allocate nothing of size N x K, so one chunk means one
        host sync per iteration."""
        return 1 << 62

    def sweep_lse(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[np.ndarray, float]:
        """One fused pass: the block partials of the masses and of the rows' log-sum-exps are
        reduced on the device and copied to the host together (one sync)."""
        import cupy as cp

        x = _floating(chunk)
        with x.device:  # kernels launch, and buffers live, on the current device
            return self._sweep_lse(x, f, lam, cp)

    def _sweep_lse(self, x: Array, f: np.ndarray, lam: float, cp) -> tuple[np.ndarray, float]:
        plan = _sweep_plan(x)
        if plan is None:
            return _split(_blocked_sweep_lse(x, f, lam, cp).get())
        n_rows, n_cols = x.shape
        programs = _programs(n_rows)
        buffers = _buffers(x, programs, n_cols)
        coef = buffers.coefficients(f, LOG2E, lam * LOG2E)
        args = (x, coef, buffers.part, buffers.lse_parts, np.int64(n_rows), *_strides(x),
                np.int32(n_cols))
        dtype = _NAMES[x.dtype.char]
        key = (dtype, n_cols, plan)
        names = _kernel_names(*key)
        tune = x.size >= TUNE_ELEMENTS
        # Only float16 plans hold column-weighted candidates (the check costs host time).
        weighted_ok = dtype != "float16" or fits_column_weights(f, lam)
        # One NVRTC call compiles every candidate once the plan is (or is about to be) tuned.
        every = key in TUNER.chosen or TUNER.will_time(key, plan, tune)
        sums_args = (buffers.part, buffers.lse_parts, buffers.totals, np.int32(programs),
                     np.int32(programs), np.int32(n_cols))

        def functions() -> dict:
            return _functions(names if every else (names[0], names[-1]))

        def launch(config: tuple[int, ...]) -> None:
            if _weighted(config) and not weighted_ok:
                config = config[:8]  # its unweighted twin, a candidate of the same plan
            functions()[sweep_name(dtype, config)]((programs,), (config[1],), args)

        def totals() -> tuple[np.ndarray, float]:
            functions()[names[-1]]((-(-n_cols // 32) + 1,), (32, 32), sums_args)
            return buffers.totals_on_host()

        def result():
            masses, lse = totals()
            return (masses, 0.0), (lse, n_rows)

        TUNER.run(launch, _usable(plan, weighted_ok), key, result, tune=tune)
        return totals()

    def best(self, chunk: Array, f: np.ndarray, lam: float) -> tuple[Array, Array]:
        import cupy as cp

        x = _floating(chunk)
        n_rows, n_cols = x.shape
        with x.device:  # coefficients, results and the launch on the array's device
            coef = _coefficients(x, f, lam)
            values = cp.empty(n_rows, dtype=coef.dtype)
            labels = cp.empty(n_rows, dtype=cp.int64)
            threads = 256
            blocks = max(1, min(_processors() * PROGRAMS_PER_SM, -(-n_rows // (threads // 32))))
            name = f"sink_best<{_STORAGE[x.dtype.name]}>"
            kernel = _functions((name,))[name]
            kernel((blocks,), (threads,),
                   (x, coef, values, labels, np.int64(n_rows), *_strides(x), np.int32(n_cols)))
        return values, labels

    def slack(self, chunk: Array, f: np.ndarray, lam: float) -> np.ndarray:
        import cupy as cp

        x = _floating(chunk)
        result = None
        with x.device:  # CuPy computes, and allocates, on the current device
            for _, z, _ in _shifted_blocks(x, f, lam):
                top = z.max(axis=0)
                result = top if result is None else cp.maximum(result, top)
            assert result is not None  # a chunk has rows: sources yield range(0, n, rows)
            return result.astype(cp.float64).get()

    def soft(self, chunk: Array, f: np.ndarray, lam: float) -> Array:
        import cupy as cp

        x = _floating(chunk)
        with x.device:  # the result on the array's device, as the docs promise
            out = cp.empty(x.shape, dtype=compute_dtype(x.dtype))
            for start, z, _ in _shifted_blocks(x, f, lam):
                cp.exp(z, out=z)
                z /= z.sum(axis=1, keepdims=True)
                out[start:start + z.shape[0]] = z
        return out

    def gather(self, chunk: Array, labels: Array) -> np.ndarray:
        import cupy as cp

        with chunk.device:
            index = cp.asarray(labels).astype(cp.int64)[:, None]
            return cp.take_along_axis(chunk, index, axis=1)[:, 0].astype(cp.float64).get()

    def to_numpy(self, x: Array) -> np.ndarray:
        import cupy as cp

        return cp.asnumpy(x)

    def empty_labels(self, n: int, like: Array | None) -> Array:
        import cupy as cp

        if like is None:
            return cp.empty(n, dtype=cp.int64)
        with like.device:
            return cp.empty(n, dtype=cp.int64)

    def empty_rows(self, n: int, like: Array) -> Array:
        import cupy as cp

        with like.device:
            return cp.empty((n, *like.shape[1:]), dtype=like.dtype)


@cache
def _functions(names: tuple[str, ...]) -> dict:
    """Kernel instantiations compiled together by one NVRTC call (cached by CuPy on disk)."""
    import cupy as cp

    module = cp.RawModule(code=SOURCE, options=("-std=c++17",), name_expressions=list(names))
    return {name: module.get_function(name) for name in names}


@cache
def _kernel_names(dtype: str, n_cols: int, plan: tuple[tuple[int, ...], ...]) -> tuple[str, ...]:
    """The sweep instantiations of ``plan``, then the column sums of their partials (built
    once per shape class: NumPy's ``dtype.name`` and the f-strings took 86 us per sweep)."""
    return (*(sweep_name(dtype, config) for config in plan),
            f"sink_column_sums<{_ACC[compute_dtype(dtype).name]}>")


def fits_column_weights(f: np.ndarray, lam: float) -> bool:
    """Whether a sweep at potentials ``f`` may take a column-weighted kernel (see ``_cuda``):
    ``lam`` positive (``lam * max(x)`` bounds a row's scaled scores only then), every
    potential finite and their spread (base 2) within ``WEIGHTED_SPREAD``. Flat scores and
    the first passes of a solve qualify; potentials spread by peaked scores may not, and
    their sweeps take the exact-maximum twin."""
    if not lam > 0:
        return False
    if f.size == 0:
        return True
    return (float(f.max()) - float(f.min())) * LOG2E <= WEIGHTED_SPREAD


def _usable(plan: tuple[tuple[int, ...], ...], weighted_ok: bool) -> tuple[tuple[int, ...], ...]:
    """The candidates a sweep may time: the column-weighted ones only at potentials that fit
    them (elsewhere they would run, and be timed and checked, as their twins)."""
    return plan if weighted_ok else tuple(c for c in plan if not _weighted(c))


def _weighted(config: tuple[int, ...]) -> bool:
    """Whether a configuration is column-weighted (its ninth entry, see ``sweep_name``)."""
    return config[8:9] == (1,)


def sweep_name(dtype: str, config: tuple[int, ...]) -> str:
    """The template instantiation of ``sink_sweep`` for (vec, threads, packs, rows, prefetch,
    merge, poly, stages, weighted); the last four default to 0 (two barriers per tile, every
    exp on the SFU, no shared-memory ring, rows shifted by their exact maximum), and
    ``weighted`` is named only when set (the other names stay as they were)."""
    vec, threads, packs, rows, prefetch, merge, poly, stages, weighted = (*config, 0, 0, 0, 0)[:9]
    return (f"sink_sweep<{_STORAGE[dtype]}, {vec}, {packs}, {rows}, {threads}, {prefetch}, "
            f"{merge}, {poly}, {stages}{', 1' if weighted else ''}>")


@cache
def _processors() -> int:
    import cupy as cp

    return int(cp.cuda.Device().attributes["MultiProcessorCount"])


@cache
def _compute_capability() -> int:
    import cupy as cp

    return int(cp.cuda.Device().compute_capability)


def _programs(n_rows: int) -> int:
    """The blocks a sweep launches (its partial-sum buffer's rows)."""
    return max(1, min(_processors() * PROGRAMS_PER_SM, -(-n_rows // MIN_ROWS_PER_PROGRAM)))


def _floating(chunk):
    """CuPy has no bfloat16, and the kernels take only its three float types."""
    if chunk.dtype.char not in _NAMES:
        raise TypeError(f"the cupy backend takes float16/32/64 arrays, got {chunk.dtype}")
    return chunk


def _buffers(x, programs: int, n_cols: int) -> CupySweepBuffers:
    """This thread's sweep buffers for the shape class, on ``x``'s device."""
    def make() -> CupySweepBuffers:
        with x.device:
            return CupySweepBuffers(compute_dtype(x.dtype), programs, n_cols)

    return cached(("cupy", x.device.id, x.dtype.char, programs, n_cols), make)


def _strides(x) -> tuple[np.int64, np.int64]:
    return np.int64(x.strides[0] // x.itemsize), np.int64(x.strides[1] // x.itemsize)


def _coefficients(x, coef: np.ndarray, scale: float):
    """The K per-label offsets followed by the scale, on the device in the compute dtype."""
    import cupy as cp

    host = np.append(np.asarray(coef, dtype=np.float64), scale)
    return cp.asarray(host.astype(compute_dtype(x.dtype)))


def _sweep_plan(x, async_copies: bool | None = None) -> tuple[tuple[int, ...], ...] | None:
    """(vec, threads, packs per thread, rows per step, prefetch[, merge, poly, stages,
    weighted]) to try, the default first (prefetch 2 and merge/poly are described in
    ``_instruction_saving``, stages and weighted in ``_pipelined``); None when a row does
    not fit in one block's registers. ``async_copies``: whether the device has ``cp.async``
    (compute capability 8.0 or later; asked of the current device when None), which the
    ringed shapes need: one candidate that does not compile fails the whole module.

    Vectors are 16 bytes, and for 16-bit scores also 8 bytes (more threads per row, so more
    rows per barrier pair). Register use was checked with ptxas for sm_90 (NVRTC, with the
    log-sum-exp): at K=3000 the two-row prefetching shapes take 103 (float16) and 123
    (float32) registers, still two blocks per multiprocessor.
    """
    if async_copies is None:
        async_copies = _compute_capability() >= 80
    row_stride, col_stride = (int(s) for s in _strides(x))
    return _plan(x.shape[1], _NAMES[x.dtype.char], row_stride, col_stride, x.data.ptr % 16,
                 async_copies)


@cache
def _plan(n_cols: int, dtype: str, row_stride: int, col_stride: int, misalignment: int,
          async_copies: bool) -> tuple[tuple[int, ...], ...] | None:
    """:func:`_sweep_plan` for one shape class (planning took 40 us of host time per sweep);
    ``misalignment``: the data pointer modulo 16 bytes."""
    itemsize = np.dtype(dtype).itemsize
    vectors = [16 // itemsize] + ([8 // itemsize] if itemsize == 2 else [])
    vectors = [v for v in vectors if col_stride == 1 and row_stride % v == 0
               and n_cols % v == 0 and misalignment % (v * itemsize) == 0] or [1]
    limit = MAX_PER_THREAD[compute_dtype(dtype).name]
    shapes = []
    for vec in vectors:
        packs_total = -(-n_cols // vec)
        options = []
        for threads in (256, 512, 128, 64, 32):
            packs = -(-packs_total // threads)
            waste = packs * threads / packs_total - 1
            if packs * vec <= limit:
                options.append((0.0 if waste <= 0.05 else waste, threads, packs))
        options.sort(key=lambda o: o[0])  # stable: among near-full blocks, the larger first
        shapes += [(waste, vec, threads, packs) for waste, threads, packs in options[:2]]
    if not shapes:
        return None
    shapes.sort(key=lambda o: (o[0], -o[2]))  # the least waste, then the most threads
    candidates: list[tuple[int, ...]] = []
    for _, vec, threads, packs in shapes[:2]:
        per_row = packs * vec
        for values, prefetch in ((limit // 2, 1), (limit, 1), (limit, 0), (2 * limit, 0)):
            rows = max(1, min(8, values // per_row))
            if (vec, threads, packs, rows, prefetch) not in candidates:
                candidates.append((vec, threads, packs, rows, prefetch))
    candidates = candidates[:8]
    if itemsize == 2:
        candidates += _instruction_saving(candidates, max(vectors), n_cols, limit)
    return tuple(candidates + (_pipelined(candidates, itemsize) if async_copies else []))


def _instruction_saving(candidates: list[tuple[int, ...]], vec: int, n_cols: int,
                        limit: int) -> list[tuple[int, ...]]:
    """Extra candidates for 16-bit scores, whose sweep is bound by instructions, not memory
    (unmeasured on a GPU when added: the tuner keeps them only where they time faster).

    Each prefetching shape again with prefetch 2 (scores kept as 32-bit words: no byte
    permutes), and with ``merge`` as well (one barrier per row tile instead of two: each
    warp's max and sum are merged after it); ``poly``: every 4th exponential by FMAs, off the
    special-function unit (every 2nd cost 63 more SASS instructions per 12 scores). Last,
    blocks of 64 or 32 threads holding up to twice ``limit`` scores each, so the per-row
    reductions are spread over more scores (at K=3000: 9.5 SASS instructions per score
    without prefetch, 211 registers and no spills, against 11.9 for the best shape above).
    """
    words = [(*config[:4], 2) for config in candidates if config[4] and config[0] > 1]
    extra = [(*config, 0, 0) for config in words]
    extra += [(*config, 1, 0) for config in words[:3]]
    extra += [(*config, merge, 4) for config in words[:1] for merge in (0, 1)]
    packs_total = -(-n_cols // vec)
    for threads in (64, 32):
        packs = -(-packs_total // threads)
        if vec > 1 and limit < packs * vec <= 2 * limit and packs * threads <= 1.05 * packs_total:
            extra += [(vec, threads, packs, 1, 0), (vec, threads, packs, 1, 2)]
            break
    return extra


def _pipelined(candidates: list[tuple[int, ...]], itemsize: int) -> list[tuple[int, ...]]:
    """Each vectorised block shape again, one row per step, with its scores copied
    asynchronously into a ring of shared memory up to three rows ahead (``stages``; the ring
    within ``RING_BYTES``): the register prefetch keeps one row per block in flight, and
    at K=3000 (sm_90, ptxas) the float16 shape the H200 tuner chose runs 4 blocks of 118
    registers per multiprocessor, 24 KB in flight; ringed, the same shape takes 96 registers
    and 25 KB of shared memory, 5 blocks and 90 KB in flight, for 9% more instructions, and
    the 64-thread shape issues 1092 warp instructions per row against 1196 (unmeasured on
    a GPU when added: the tuner keeps them only where they agree with the default and time
    faster).

    For 16-bit scores each ringed shape again, ``weighted`` (see ``_cuda``: rows shifted by a
    bound of their maximum, no float max and two adds fewer per score; at K=3000 for sm_90
    the 128-thread shape keeps 96 registers and takes 264 SASS instructions per row against
    294, and on an H200 at N=1,281,167 its kernel took 2.02 ms against 2.21, 1.99 against
    2.07 on another). A weighted configuration launches its unweighted twin where the
    potentials do not fit (``fits_column_weights``), so both are in the plan."""
    extra = []
    for vec, threads, packs, *_ in candidates:
        stages = min(4, RING_BYTES // (packs * threads * vec * itemsize))
        config = (vec, threads, packs, 1, 0, 0, 0, stages)
        if vec > 1 and stages >= 2 and config not in extra:
            extra.append(config)
    ringed = extra[:3]
    return ringed + ([(*config, 1) for config in ringed] if itemsize == 2 else [])


def _elapsed(run) -> float:
    """Milliseconds for three calls of ``run`` on the current CUDA stream."""
    import cupy as cp

    start, stop = cp.cuda.Event(), cp.cuda.Event()
    start.record()
    for _ in range(3):
        run()
    stop.record()
    stop.synchronize()
    return cp.cuda.get_elapsed_time(start, stop)


def _launch_errors() -> tuple[type[BaseException], ...]:
    """What a configuration that cannot run here raises (CuPy is imported by then)."""
    import cupy as cp

    return (cp.cuda.driver.CUDADriverError, cp.cuda.compiler.CompileException)


TUNER = Tuner(_elapsed, _launch_errors)


def tuned_configs() -> dict[str, dict]:
    """The launch configurations chosen so far and those ruled out, for benchmark reports."""
    def name(key: tuple) -> str:
        dtype, n_cols, plan = key
        return f"sweep {dtype} K={n_cols} vec={plan[0][0]} ({len(plan)} candidates)"

    return TUNER.report(name)


def _blocks(x) -> Iterator[tuple[int, int]]:
    n_rows, n_cols = x.shape
    rows = max(1, BLOCK_BYTES // (4 * max(1, n_cols)))
    for start in range(0, n_rows, rows):
        yield start, min(n_rows, start + rows)


def _shifted_blocks(x, f: np.ndarray, lam: float,
                    xp=None) -> Iterator[tuple[int, Array, Array]]:
    """(first row, z - rowmax(z), rowmax(z) as a column) block by block, with
    z = lam * x + f in the compute dtype; ``xp`` is the array module (CuPy by default)."""
    if xp is None:
        import cupy

        xp = cupy

    dtype = compute_dtype(x.dtype)
    offsets = xp.asarray(f.astype(dtype))
    for start, stop in _blocks(x):
        z = x[start:stop].astype(dtype) * dtype.type(lam)
        z += offsets
        top = z.max(axis=1, keepdims=True)
        z -= top
        yield start, z, top


def _blocked_sweep_lse(x, f: np.ndarray, lam: float, xp):
    """The sweep and the log-sum-exp sum for rows too wide for the fused kernel, by plain
    array ops (``xp``: CuPy, or NumPy in tests): float64 masses with the sum appended."""
    n_cols = x.shape[1]
    totals = xp.zeros(n_cols + 1, dtype=np.float64)
    for _, z, top in _shifted_blocks(x, f, lam, xp):
        xp.exp(z, out=z)
        sums = z.sum(axis=1)
        totals[:n_cols] += (1.0 / sums) @ z
        totals[n_cols] += (top[:, 0].astype(np.float64) + xp.log(sums.astype(np.float64))).sum()
    return totals


def _split(totals: np.ndarray) -> tuple[np.ndarray, float]:
    """(masses, log-sum-exp sum) from the host copy of the masses with the sum appended."""
    return totals[:-1], float(totals[-1])
