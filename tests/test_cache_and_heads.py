"""``cache=True`` and ``sinkhorn_heads`` as a demanding user meets them: any shape, dtype,
source and budget, interrupted solves and heads that cannot start.

Oracles: the uncached Numba kernel (a cached solve's potentials must meet the tolerance when
checked by it), and each head solved alone with the same blocks (bit for bit).
"""

from __future__ import annotations

import signal
import threading
import time
import types
import warnings

import numpy as np
import pytest
from conftest import PastTheEnd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("numba")

import sinklabel  # noqa: E402
import sinklabel.heads  # noqa: E402
from sinklabel import solver  # noqa: E402
from sinklabel.kernels import get_kernel  # noqa: E402
from sinklabel.sources import ArraySource, CallableSource  # noqa: E402
from sinklabel.sources.shared import Aborted, SharedReader  # noqa: E402

NUMBA = get_kernel("numba")


def _head_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sinklabel-head-")]


def _scores(rng: np.random.Generator, n: int, k: int, regime: str, dtype: type) -> np.ndarray:
    alpha = {"flat": 1.0, "peaked": 0.05}[regime]
    return np.log(rng.dirichlet(np.full(k, alpha), size=n) + 1e-30).astype(dtype)


# --- the cache: whole solves through every kind of source --------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n=st.integers(1, 300),
    k=st.integers(2, 30),
    lam=st.sampled_from([2.0, 25.0, 60.0]),
    regime=st.sampled_from(["flat", "peaked"]),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    streamed=st.booleans(),
    budget=st.one_of(st.none(), st.integers(60_000, 400_000)),
    init_scale=st.sampled_from([0.0, 1.0, 30.0]),
    seed=st.integers(0, 999),
)
def test_a_cached_solve_meets_the_tolerance_by_the_uncached_kernel(
    n, k, lam, regime, dtype, streamed, budget, init_scale, seed
):
    """Small caps (tight budgets), far warm starts and streamed blocks: the cached solve
    converges where the uncached one does, to potentials the uncached kernel accepts, and
    leaves the caller's scores alone."""
    rng = np.random.default_rng(seed)
    scores = _scores(rng, n, k, regime, dtype)
    kept = scores.copy()
    init = init_scale * rng.standard_normal(k) if init_scale else None
    tol = 1e-8 if dtype == np.float64 else 1e-3
    options = dict(lam=lam, tol=tol, max_iter=300, init=init, backend="numba",
                   memory_limit=budget)

    def source():
        if not streamed:
            return scores
        return CallableSource(lambda a, b: scores[a:b].copy(), scores.shape, dtype=scores.dtype)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = sinklabel.sinkhorn(source(), k, **options)
        try:
            cached = sinklabel.sinkhorn(source(), k, cache=True, **options)
        except ValueError as error:  # the tables' share of the budget holds no entry a row
            assert "cache=True" in str(error)
            return
    np.testing.assert_array_equal(scores, kept)
    assert cached.converged or not plain.converged
    if cached.converged:
        mass, _ = solver.dual_terms(ArraySource(scores), NUMBA, cached.potentials, lam, 64)
        assert np.abs(mass - 1 / k).sum() <= 10 * tol + 1e-6
    np.testing.assert_array_equal(np.bincount(cached.labels, minlength=k), cached.label_counts)


# --- heads: each one as if solved alone ---------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    n=st.integers(1, 200),
    ks=st.lists(st.integers(1, 12), min_size=1, max_size=4),
    lam=st.sampled_from([1.0, 25.0, 100.0]),
    dtype=st.sampled_from([np.float32, np.float64]),
    rows=st.integers(1, 90),
    backend=st.sampled_from(["numba", "numpy"]),
    seed=st.integers(0, 999),
)
def test_every_head_is_its_columns_solved_alone_with_the_same_blocks(
    n, ks, lam, dtype, rows, backend, seed
):
    """Potentials, iterations, labels and warnings of each head, with per-head warm starts
    and weights, against sinkhorn on a copy of its columns; no head thread outlives the call."""
    rng = np.random.default_rng(seed)
    scores = (3 * rng.standard_normal((n, sum(ks)))).astype(dtype)
    inits = [rng.standard_normal(k) if t % 2 == 0 else None for t, k in enumerate(ks)]
    weights = [rng.random(k) + 0.1 if t % 2 == 1 else None for t, k in enumerate(ks)]
    options = dict(lam=lam, chunk_size=rows, backend=backend, max_iter=40)
    with warnings.catch_warnings(record=True) as shown:
        warnings.simplefilter("always")
        heads = sinklabel.sinkhorn_heads(scores, ks, init=inits, label_weights=weights,
                                         **options)
    assert not _head_threads()
    first = 0
    for t, k in enumerate(ks):
        columns = np.ascontiguousarray(scores[:, first:first + k])
        first += k
        with warnings.catch_warnings(record=True) as alone_shown:
            warnings.simplefilter("always")
            alone = sinklabel.sinkhorn(columns, k, init=inits[t], label_weights=weights[t],
                                       **options)
        assert heads[t].n_iter == alone.n_iter
        np.testing.assert_array_equal(heads[t].potentials, alone.potentials)
        np.testing.assert_array_equal(heads[t].labels, alone.labels)
        assert (sorted(str(w.message) for w in shown if str(w.message).startswith(f"head {t}:"))
                == sorted(f"head {t}: {w.message}" for w in alone_shown))


# --- heads: stopping ----------------------------------------------------------------------------


class _Interrupted(Exception):
    """What the test's signal handler raises in the main thread, as Ctrl-C would."""


def test_an_interrupted_heads_solve_returns_only_once_every_head_has_stopped(monkeypatch):
    """A signal while the caller waits for the heads (Ctrl-C) stopped the heads, but on
    Python 3.11 the interrupted ``join`` marked head 0 as stopped while it still ran: the
    second ``join`` returned at once and the call raised with head 0 still running on the
    caller's scores."""
    scores = np.random.default_rng(0).standard_normal((4000, 30))
    calls = []

    def read(start: int, stop: int) -> np.ndarray:
        calls.append(start)
        if len(calls) == 7:  # mid-solve, while the main thread waits for the heads
            signal.pthread_kill(threading.main_thread().ident, signal.SIGUSR1)
            time.sleep(0.1)
        return scores[start:stop]

    solve = sinklabel.heads.sinkhorn

    def slow_to_stop(view, k, **options):
        """Head 0 is busy for a while before it notices the others stopped."""
        try:
            return solve(view, k, **options)
        except Exception:  # the Aborted read, as the head's checked source reports it
            if k == 10:
                time.sleep(0.5)
            raise

    def interrupt(signum, frame):
        raise _Interrupted

    monkeypatch.setattr(sinklabel.heads, "sinkhorn", slow_to_stop)
    previous = signal.signal(signal.SIGUSR1, interrupt)
    try:
        with pytest.raises(_Interrupted):
            sinklabel.sinkhorn_heads(CallableSource(read, scores.shape, dtype=scores.dtype),
                                     [10, 20], chunk_size=500, tol=1e-12, max_iter=50)
        still_running = _head_threads()
    finally:
        signal.signal(signal.SIGUSR1, previous)
    for thread in still_running:
        thread.join(5.0)  # let a head left running finish before the next test
    assert not still_running
    assert len(calls) < 16  # the heads stopped within the pass they were in


@pytest.mark.parametrize(("ending", "message"), [
    ("extra rows", r"yielded rows beyond N=600: \[600, 610\)"),
    ("raises", "raised OSError after its last block: after the end"),
])
def test_heads_let_a_shared_source_check_its_end(ending, message):
    """The heads' one read of a pass asks the source for one more item after its last block,
    as a lone solve's pass does, so the checking layer still sees a source go wrong there."""
    scores = _scores(np.random.default_rng(8), 600, 12, "flat", np.float32)
    with pytest.raises(sinklabel.sources.SourceError,
                       match=rf"rows \[600, 600\) on pass 1: the source {message}"):
        sinklabel.sinkhorn_heads(PastTheEnd(scores, ending), [5, 7], chunk_size=200)
    for thread in _head_threads():
        thread.join(5.0)


@pytest.mark.parametrize(("asks", "named"), [
    ([(50, 0, 50), (25, 0, 25)], "[(25, 0), (50, 0)]"),  # different rows per block
    ([(50, 50, 100)], "[(50, 50)]"),                        # a pass that does not start at 0
])
def test_consumers_out_of_step_are_stopped_by_name(asks, named):
    """The heads' shared reader serves a block once every consumer asks for it; consumers
    that ask for different blocks would wait for each other forever, so all of them stop
    with the reader's error naming the blocks asked for."""
    reader = SharedReader(ArraySource(np.zeros((100, 6))), len(asks))
    stopped = []

    def ask(consumer: int, rows: int, start: int, stop: int) -> None:
        try:
            reader.get(consumer, rows, start, stop)
        except Aborted as error:
            stopped.append(error)

    # daemon threads: a consumer left waiting must not hold up the tests
    threads = [threading.Thread(target=ask, args=(consumer, *asked), daemon=True)
               for consumer, asked in enumerate(asks)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(5.0)
    assert not any(thread.is_alive() for thread in threads)
    assert len(stopped) == len(asks)
    assert f"asked for different blocks {named}" in str(reader.error)


def test_a_head_that_cannot_start_stops_the_others(monkeypatch):
    """``Thread.start`` failing (no more threads) for head 1 raised, but head 0 waited for
    head 1's first read forever."""

    class NoSecondThread(threading.Thread):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.daemon = True  # a head left waiting must not keep the tests from ending

        def start(self) -> None:
            if self.name.endswith("-1"):
                raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(sinklabel.heads, "threading",
                        types.SimpleNamespace(Thread=NoSecondThread, Event=threading.Event))
    with pytest.raises(RuntimeError, match="can't start new thread"):
        sinklabel.sinkhorn_heads(np.zeros((100, 6)), [3, 3])
    for thread in _head_threads():
        thread.join(5.0)
    assert not _head_threads()


def test_heads_blocks_and_every_layers_fingerprints_fit_the_budget():
    """Each block is fingerprinted once per head and once more for a stream, but the
    budget counted ceil(layers * N / rows) fingerprints, not layers * ceil(N / rows): even
    at the least budget its own refusal named, the blocks overshot it by up to a KiB each."""
    from sinklabel import _budget, heads
    from sinklabel.kernels import resolve_kernel
    from sinklabel.sources import as_source

    n, ks = 3000, [6, 6]
    scores = np.zeros((n, sum(ks)), np.float32)
    source = as_source(CallableSource(lambda a, b: scores[a:b], scores.shape, np.float32))
    kernel = resolve_kernel("numpy", "numpy")
    per_row = source.bytes_per_row() + sum(kernel.workspace_bytes_per_row(k, 4) for k in ks)
    fixed = sum(_budget.fixed_bytes(n, k) for k in ks)
    layers = len(ks) + 1
    for budget in range(190_000, 260_000, 997):
        try:
            rows = heads._shared_rows(source, ks, None, budget, "numpy")
        except ValueError:
            continue
        used = fixed + rows * per_row + layers * _budget.BYTES_PER_BLOCK * -(-n // rows)
        assert used <= budget, (budget, rows, used)
