"""Vector building blocks of the Numba-compiled loops, and their stand-ins without numba.

Two layers compile loops with Numba: the Numba backend (``kernels/numba.py`` and
``kernels/_exp_cache.py``) and the exact solver's inner loops (``_transport_loops.py``). Both
need what Numba's own operations do not vectorise: ``max``/``min`` leave a serial scalar chain
where ``llvm.maxnum``/``minnum`` reduce in vector registers, and no Numba expression finds
the first lane of a vector equal to a value. Those operations are LLVM intrinsics here, with
the LLVM helpers the backend's own intrinsics are built from, and :func:`first_equal` is the one
scan for "the first index holding this value" that every label search uses.

Without numba the exact solver still runs its loops as plain Python, so this module then
binds the names those loops use (``njit``, :func:`parallel_loop`, ``prange``, :func:`fmax`,
:func:`fmin`, :func:`first_equal`) to plain Python with the same results; the rest (``fmaximum``,
``block_keep``, ``prefetch``) serve only the Numba backend, which is unavailable without
numba. It sits at the top of the package, not in ``kernels/``, because the exact layer uses it
and a module there is a backend whose import fails without its library.

Numba's on-disk cache is keyed by the caller's source file: after editing this module, delete
the ``__pycache__`` folders so that cached callers are compiled again.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from typing import Any

#: Why numba counts as missing where its compiler is switched off (a debugging setting): the
#: Numba backend's vector intrinsics exist only in compiled code, and the exact solver then
#: runs its plain Python loops.
JIT_DISABLED = "numba's compiler is switched off (NUMBA_DISABLE_JIT=1): unset it"

try:
    from numba import config, njit, prange, types
    from numba.core import cgutils
    from numba.extending import intrinsic

    if config.DISABLE_JIT:  # type: ignore[attr-defined]
        raise ImportError(JIT_DISABLED)
except ImportError:  # tests/test_simd.py imports this module with numba hidden
    HAVE_NUMBA = False
    prange = range  # type: ignore[misc]

    def njit(*args, **kwargs):  # type: ignore[no-redef]
        """Identity decorator standing in for numba.njit; keeps ``py_func`` for symmetry."""

        def wrap(func):
            func.py_func = func
            return func

        if args and callable(args[0]):
            return wrap(args[0])
        return wrap

else:
    HAVE_NUMBA = True
    from llvmlite import ir

#: Held while a parallel loop runs (see :func:`parallel_loop`).
_PARALLEL_REGION = threading.Lock()
#: Whether this process has run a parallel loop, and whether it is a child forked after one.
_ran_parallel = False
_forked_after_parallel = False


def _note_fork() -> None:
    """In a forked child: loops run serially if the parent ran one, under a new lock (one
    that a thread of the parent held would never be released)."""
    global _forked_after_parallel, _PARALLEL_REGION
    _forked_after_parallel = _forked_after_parallel or _ran_parallel
    _PARALLEL_REGION = threading.Lock()


if hasattr(os, "register_at_fork"):  # not on Windows, which has no fork
    os.register_at_fork(after_in_child=_note_fork)


def parallel_loop(**options: Any) -> Callable[[Callable], Callable]:
    """``njit(cache=True, parallel=True, **options)``, safe in threads and forked children.

    Numba runs parallel loops on a threading layer that two common cases break. Its workqueue
    layer (the fallback where neither TBB nor OpenMP is installed) aborts the process when two
    threads enter parallel code at once: the loops take turns here, and as each keeps every
    core busy, queueing costs nothing. Its OpenMP layer (GNU's, on Linux) kills a child forked
    after the parent ran one (a ``multiprocessing`` pool of solves): such a child runs the
    loop compiled without ``parallel``, on one thread, as a pool's worker should. ``py_func``
    is the plain Python loop.
    """

    def wrap(func: Callable) -> Callable:
        compiled = njit(cache=True, parallel=True, **options)(func)
        # Compiled in a forked child on its first call, and not cached: Numba's cache keys
        # a function by its bytecode and signature, and would not tell it from the parallel one.
        serial: list[Callable] = []

        @functools.wraps(func)
        def run(*args: Any) -> Any:
            global _ran_parallel
            if _forked_after_parallel:
                if not serial:
                    serial.append(njit(**options)(func))
                return serial[0](*args)
            _ran_parallel = HAVE_NUMBA
            with _PARALLEL_REGION:
                return compiled(*args)

        run.py_func = func  # type: ignore[attr-defined]
        return run

    return wrap


#: Scores per vector block (8 float32 fill one AVX2 register).
W = 8

#: Flags for loops with reductions: no NaN reaches them, sums may be reassociated (so they
#: vectorise), multiply-adds fused. No ``ninf``: -inf scores are legal.
FAST = {"nnan", "nsz", "reassoc", "contract", "arcp"}


def _intrinsic(python: Callable | None = None):
    """Numba's ``intrinsic`` decorator; without numba the name is bound to ``python``, the same
    operation in plain Python (given for what the exact solver's loops use)."""
    if HAVE_NUMBA:
        return intrinsic
    return lambda typer: python


# ---------------------------------------------------------------------------------------------
# LLVM helpers
# ---------------------------------------------------------------------------------------------


def block_pointer(context, builder, arrty, arr, index, lanes):
    """Pointer to ``lanes`` consecutive elements of a 1-D array, starting at ``index``."""
    data = context.make_array(arrty)(context, builder, arr).data
    element = context.get_data_type(arrty.dtype)
    return builder.bitcast(builder.gep(data, [index]), ir.VectorType(element, lanes).as_pointer())


def splat(builder, value, lanes):
    """A vector of ``lanes`` copies of ``value``."""
    vector_type = ir.VectorType(value.type, lanes)
    one = builder.insert_element(ir.Constant(vector_type, ir.Undefined), value,
                                 ir.Constant(ir.IntType(32), 0))
    mask = ir.Constant(ir.VectorType(ir.IntType(32), lanes), [0] * lanes)
    return builder.shuffle_vector(one, ir.Constant(vector_type, ir.Undefined), mask)


def llvm_function(builder, name, result, arguments):
    """The declaration of an LLVM function (an intrinsic) in the module being built."""
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(result, arguments), name)


def _suffix(llvm_type) -> str:
    return "f32" if llvm_type == ir.FloatType() else "f64"


def _float_binary(a, b, name: str, fastmath: tuple[str, ...]):
    """Typing and code of ``llvm.<name>`` on two floats of one type (None for other types,
    so that Numba reports no match)."""
    if not isinstance(a, types.Float) or a != b:
        return None

    def codegen(context, builder, sig, args):
        ty = args[0].type
        fn = llvm_function(builder, f"llvm.{name}." + _suffix(ty), ty, [ty, ty])
        return builder.call(fn, args, fastmath=fastmath)

    return a(a, b), codegen


# ---------------------------------------------------------------------------------------------
# Intrinsics
# ---------------------------------------------------------------------------------------------


@_intrinsic(python=max)
def fmax(typingctx, a, b):
    """max(a, b) as ``llvm.maxnum`` without NaN: unlike ``max``, its reductions vectorise."""
    return _float_binary(a, b, "maxnum", ("nnan", "nsz"))


@_intrinsic(python=min)
def fmin(typingctx, a, b):
    """min(a, b) as ``llvm.minnum`` without NaN, for vectorised reductions."""
    return _float_binary(a, b, "minnum", ("nnan", "nsz"))


@_intrinsic()
def fmaximum(typingctx, a, b):
    """max(a, b) that propagates NaN (``llvm.maximum``), and still vectorises."""
    return _float_binary(a, b, "maximum", ())


@_intrinsic()
def block_keep(typingctx, z, j, threshold, dst, d):
    """Copy ``z[j:j+W]`` to ``dst[d:d+W]``; 1 when any of them is >= threshold, else 0.

    With ``d`` advanced by the result, this packs the blocks that matter without a branch.
    """
    if not isinstance(z, types.Array) or z.dtype != threshold:
        return None

    def codegen(context, builder, sig, args):
        z_v, j_v, threshold_v, dst_v, d_v = args
        block = builder.load(block_pointer(context, builder, sig.args[0], z_v, j_v, W), align=1)
        builder.store(block, block_pointer(context, builder, sig.args[3], dst_v, d_v, W),
                      align=1)
        hits = builder.fcmp_ordered(">=", block, splat(builder, threshold_v, W))
        any_hit = builder.icmp_unsigned("!=", builder.bitcast(hits, ir.IntType(W)),
                                        ir.Constant(ir.IntType(W), 0))
        return builder.zext(any_hit, ir.IntType(64))

    return types.int64(z, j, threshold, dst, d), codegen


@_intrinsic()
def prefetch(typingctx, arr, index):
    """Ask the CPU to start loading the cache line holding ``arr[index]`` (``llvm.prefetch``:
    a read, kept in every cache level). A hint: it never faults and changes no result."""
    if not isinstance(arr, types.Array) or not isinstance(index, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        byte_pointer = ir.IntType(8).as_pointer()
        i32 = ir.IntType(32)
        function = builder.module.declare_intrinsic(
            "llvm.prefetch", [byte_pointer],
            ir.FunctionType(ir.VoidType(), [byte_pointer, i32, i32, i32]))
        address = builder.bitcast(builder.gep(data, [args[1]]), byte_pointer)
        read, keep_everywhere, data_cache = (ir.Constant(i32, v) for v in (0, 3, 1))
        builder.call(function, [address, read, keep_everywhere, data_cache])
        return context.get_dummy_value()

    return types.none(arr, index), codegen


def _python_block_find(z, j, value):
    for lane in range(W):
        if z[j + lane] == value:
            return lane
    return W


@_intrinsic(python=_python_block_find)
def _block_find(typingctx, z, j, value):
    """Lane (0..W-1) of the first ``z[j:j+W] == value``, or W when none is equal."""
    if not isinstance(z, types.Array) or z.dtype != value:
        return None

    def codegen(context, builder, sig, args):
        block = builder.load(block_pointer(context, builder, sig.args[0], args[0], args[1], W),
                             align=1)
        equal = builder.fcmp_ordered("==", block, splat(builder, args[2], W))
        mask = builder.zext(builder.bitcast(equal, ir.IntType(W)), ir.IntType(32))
        mask = builder.or_(mask, ir.Constant(ir.IntType(32), 1 << W))
        i32 = ir.IntType(32)
        cttz = llvm_function(builder, "llvm.cttz.i32", i32, [i32, ir.IntType(1)])
        lane = builder.call(cttz, [mask, ir.Constant(ir.IntType(1), 1)])
        return builder.sext(lane, ir.IntType(64))

    return types.int64(z, j, value), codegen


# ---------------------------------------------------------------------------------------------
# The scan
# ---------------------------------------------------------------------------------------------


@njit(inline="always", cache=True)
def first_equal(z, value, n):
    """The first index ``j < n`` with ``z[j] == value``, or ``n`` when there is none.

    ``n`` must lie in ``[0, len(z)]``. Whole blocks of W are compared in one vector compare
    each, the last ``n % W`` one at a time. A row's maximum or minimum is always found, so
    an argmax is ``first_equal(z, z.max(), len(z))``; NaN equals nothing.
    """
    full = n - n % W
    for b in range(0, full, W):
        lane = _block_find(z, b, value)
        if lane < W:
            return b + lane
    j = full
    while j < n and z[j] != value:
        j += 1
    return j
