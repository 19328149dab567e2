"""The comparison runner (benchmarks/compare.py): how it times one iteration, and a tiny run;
then the pytest-benchmark suite (benchmarks/bench_*.py): what its benchmarks time.

The timing tests run fake methods on a virtual clock: each fake advances the clock by the
cost it models, so the figure the runner must recover is known exactly and no test sleeps.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from conftest import requires

from benchmarks import _timing, bench_cpu, bench_solver, compare
from benchmarks import conftest as bench_conftest
from benchmarks._methods import SELA_WARM, Method, _sela_iteration, _sinklabel_pass
from benchmarks._outcome import Outcome
from benchmarks._peers import SelaLoop
from sinklabel.datasets import make_scores

#: Costs of the fake methods, in virtual seconds: set-up of a whole run, one pass, and one
#: error check (made every 10th iteration, from the first, as POT does).
SETUP, PASS, CHECK = 0.5, 0.01, 0.02
#: A JAX-like method's compile of one run length, in the same virtual seconds.
COMPILE = 5.0
#: Passes after which the fake solver has converged; with tol out of reach it keeps going.
CONVERGED = 6
OPTIONS = {"lam": 25.0, "tol": 1e-3}


class VirtualClock:
    """Stands in for the ``time`` module of benchmarks._timing."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> VirtualClock:
    virtual = VirtualClock()
    monkeypatch.setattr(_timing, "time", virtual)
    return virtual


def uneven_method(clock: VirtualClock) -> Method:
    """A solver whose fixed-length runs are not equal passes: PASS each while the solve is
    under way, PASS / 10 once it has converged, as sinklabel's flat-score passes turned cheap
    past convergence (a numba figure below the floor in the first comparison)."""

    def solve(scores, *, lam, tol, max_iter, stop):
        under_way = min(max_iter, CONVERGED)
        clock.now += SETUP + PASS * under_way + PASS / 10 * (max_iter - under_way)
        return Outcome(max_iter, 0.0, "cap")

    def one_iteration(scores, *, lam, tol, max_iter):
        clock.now += SETUP + PASS * CONVERGED

        def step() -> None:
            clock.now += PASS

        return step

    return Method("uneven", "peer", "numpy", "cpu", solve, one_iteration)


def test_one_iteration_recovers_the_pass_that_differencing_misses(clock):
    method = uneven_method(clock)
    seconds, how = compare._per_iteration(method, None, OPTIONS, 100, repeat=5)
    assert how == "one iteration"
    assert seconds == pytest.approx(PASS, rel=1e-9)
    # The difference of whole runs, however long, sees the cheap converged passes: the old
    # method (2 against 12 passes) and the runner's own robust variant both miss by > 2x.
    def run(length: int) -> int:
        return method.solve(None, lam=25.0, tol=0.0, max_iter=length, stop=False).n_iter

    old = (_timing.timed(lambda: run(12), "numpy", "cpu")[0]
           - _timing.timed(lambda: run(2), "numpy", "cpu")[0]) / 10
    assert old < PASS / 2
    robust = _timing.seconds_per_extra_iteration(run, "numpy", "cpu", short=1, stride=10,
                                                 repeat=5, max_extra=640)
    assert robust < PASS / 2


def checked_method(clock: VirtualClock, lengths: list[int]) -> Method:
    """A POT-like solver that cannot be entered midway: whole runs only, with a set-up, an
    error check on every 10th iteration from the first, 1% jitter and, on one run in five,
    a hiccup as long as the set-up (a busy shared machine)."""
    rng = np.random.default_rng(0)

    def solve(scores, *, lam, tol, max_iter, stop):
        lengths.append(max_iter)
        cost = SETUP + PASS * max_iter + CHECK * len(range(0, max_iter, 10))
        clock.now += cost * rng.normal(1.0, 0.01) + (SETUP if rng.random() < 0.2 else 0.0)
        return Outcome(max_iter, 0.0, "cap")

    return Method("checked", "peer", "numpy", "cpu", solve)


def test_difference_of_whole_runs_is_robust_and_counts_the_checks(clock):
    lengths: list[int] = []
    seconds, how = compare._per_iteration(checked_method(clock, lengths), None, OPTIONS, 100,
                                          repeat=5)
    assert how == "difference"
    assert seconds == pytest.approx(PASS + CHECK / 10, rel=0.05)
    # Both lengths hold the same share of checks, and the extra iterations outlast the set-up.
    assert {length % 10 for length in lengths} == {1}
    assert (max(lengths) - 1) * (PASS + CHECK / 10) >= SETUP


def test_fast_calls_are_batched_per_sample(clock):
    calls = []

    def step() -> None:
        calls.append(1)
        clock.now += 1e-4

    assert _timing.seconds_per_call(step, "numpy", "cpu", repeat=3) == pytest.approx(1e-4)
    batch = _timing.MIN_SAMPLE / 1e-4
    assert len(calls) == pytest.approx(2 + 3 * batch, abs=3)


def test_sela_loop_steps_match_a_plain_sinkhorn():
    """Each step's error is the L1 label-marginal error of the plan diag(c) P diag(r), built
    in full here; the timed iteration continues the same loop after SELA_WARM steps."""
    scores = make_scores(300, 7, regime="flat", seed=3).scores.astype(np.float64)
    lam, n, k = 25.0, 300, 7
    P = np.exp(lam * scores)
    c, expected = np.full(n, 1.0 / n), []
    for _ in range(SELA_WARM + 2):
        r = (1.0 / k) / (P.T @ c)
        c = (1.0 / n) / (P @ r)
        expected.append(np.abs((c[:, None] * P * r).sum(axis=0) - 1.0 / k).sum())
    identity = lambda x: x  # noqa: E731
    loop = SelaLoop(scores, cast=identity, lam=lam)
    got = [loop.step() for _ in range(SELA_WARM + 2)]
    np.testing.assert_allclose(got, expected, rtol=1e-9)
    step = _sela_iteration(scores, cast=identity, lam=lam, tol=1e-3, max_iter=100)
    assert step() == pytest.approx(expected[SELA_WARM], rel=1e-9)


def compiling_method(clock: VirtualClock, lengths: list[int], with_prepare: bool) -> Method:
    """A JAX-like solver: a run of a length it has not compiled first compiles it (COMPILE,
    far longer than its set-up), unless ``prepare`` compiled that length beforehand. Its runs'
    lengths are appended to ``lengths``."""
    compiled: set[int] = set()

    def compile_once(max_iter: int) -> None:
        if max_iter not in compiled:
            compiled.add(max_iter)
            clock.now += COMPILE

    def solve(scores, *, lam, tol, max_iter, stop):
        lengths.append(max_iter)
        compile_once(max_iter)
        clock.now += SETUP + PASS * max_iter
        return Outcome(max_iter, 0.0, "cap")

    def prepare(scores, *, lam, tol, max_iter, stop):
        compile_once(max_iter)

    return Method("compiling", "peer", "numpy", "cpu", solve,
                  prepare=prepare if with_prepare else None)


@pytest.mark.parametrize("with_prepare", [True, False])
def test_compiles_are_prepared_before_any_clock_sees_them(clock, with_prepare):
    """OTT-JAX compiles each iteration cap anew. Timed, the compile of the first long run made
    an iteration look costly, so too few extra iterations were run to outlast the set-up's
    noise; and the whole solve's time held a compile that a training loop pays once."""
    lengths: list[int] = []
    method = compiling_method(clock, lengths, with_prepare)
    seconds, how = compare._per_iteration(method, None, OPTIONS, 100, repeat=5)
    assert how == "difference" and seconds == pytest.approx(PASS, rel=1e-9)
    outlasts_set_up = (max(lengths) - 1) * PASS >= SETUP
    args = argparse.Namespace(lam=25.0, tol=1e-3, max_iter=100, repeat=3, budget=1e9)
    record = compare._measure(method, np.zeros((10, 2)), args, "flat", full=True)
    whole_solve = SETUP + PASS * record["n_iter"]
    assert (outlasts_set_up, record["total_s"] == pytest.approx(whole_solve)) == (
        with_prepare, with_prepare)


#: OTT-JAX imports JAXopt, which warns on import that it is no longer maintained.
JAXOPT_RETIRED = "ignore:JAXopt is no longer maintained:DeprecationWarning"


@pytest.mark.skipif(importlib.util.find_spec("ott") is None, reason="OTT-JAX is not installed")
@pytest.mark.filterwarnings(JAXOPT_RETIRED)
def test_ott_runs_are_a_plain_log_domain_sinkhorn():
    """OTT-JAX's iteration, written here in float64: the label potentials g, then the row
    potentials f, on ``lam * scores``; the error is the plan's label-marginal L1 distance."""
    from scipy.special import logsumexp

    from benchmarks._methods import place
    from benchmarks._peers import ott_solve

    scores = make_scores(500, 7, regime="flat", seed=0).scores
    lam, (n, k) = 25.0, scores.shape
    z, f = lam * scores.astype(np.float64), np.zeros(n)
    expected = {}
    for iteration in range(1, 21):
        g = np.log(1.0 / k) - logsumexp(z + f[:, None], axis=0)
        f = np.log(1.0 / n) - logsumexp(z + g, axis=1)
        expected[iteration] = np.abs(np.exp(z + f[:, None] + g).sum(axis=0) - 1.0 / k).sum()
    x = place(scores, "jax", "cpu")
    for length in (10, 20):
        outcome = ott_solve(x, anderson=0, lam=lam, tol=1e-300, max_iter=length, stop=False)
        assert (outcome.n_iter, outcome.stopped_by) == (length, "cap")
        assert outcome.error == pytest.approx(expected[length], rel=1e-4)
    done = ott_solve(x, anderson=5, lam=lam, tol=1e-3, max_iter=300, stop=True)
    assert done.stopped_by == "tol" and done.error <= 1e-3


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sela_set_up_holds_one_array_of_its_exp(dtype):
    """The original raises its softmax outputs to the power lam in place: the reference's
    set-up may allocate its ``P`` (exp(lam * S), to float rounding), not a second N x K."""
    import tracemalloc

    scores = make_scores(4000, 64, regime="flat", seed=1).scores
    cast = lambda x: x.astype(dtype, copy=False)  # noqa: E731
    tracemalloc.start()
    try:
        loop = SelaLoop(scores, cast=cast, lam=25.0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert loop.P.dtype == dtype
    np.testing.assert_allclose(loop.P, np.exp(25.0 * scores.astype(np.float64)), rtol=1e-5,
                               atol=np.finfo(dtype).tiny)
    assert peak < 1.2 * loop.P.nbytes


def test_sinklabel_pass_is_the_solvers_pass_at_its_solution(backend):
    """One timed pass returns the label marginal and mean log-sum-exp of
    softmax(lam * S + f), computed here in float64, f being the potentials of the solve."""
    import sinklabel

    host = make_scores(500, 9, regime="peaked", seed=4).scores
    scores = host
    if backend == "torch":
        import torch

        scores = torch.from_numpy(host)
    lam = 25.0
    f = sinklabel.sinkhorn(scores, 9, lam=lam, tol=1e-3, max_iter=100, backend=backend).potentials
    assert np.abs(f).max() > 1.0  # the potentials of the solution, not the start
    mass, lse = _sinklabel_pass(scores, backend=backend, lam=lam, tol=1e-3, max_iter=100)()
    z = lam * host.astype(np.float64) + f
    top = z.max(axis=1, keepdims=True)
    row_lse = top[:, 0] + np.log(np.exp(z - top).sum(axis=1))
    np.testing.assert_allclose(mass, np.exp(z - row_lse[:, None]).mean(axis=0),
                               rtol=1e-4, atol=1e-6)
    assert lse == pytest.approx(row_lse.mean(), rel=1e-5)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.filterwarnings(JAXOPT_RETIRED)
def test_a_tiny_run_reports_and_plots_the_direct_figures(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    names = ["sinklabel numba (numpy)", "SeLa reference float32 (numpy)"]
    if importlib.util.find_spec("ot") is not None:
        names.append("POT sinkhorn (numpy)")
    if importlib.util.find_spec("ott") is not None:
        names.append("OTT sinkhorn (jax)")
    assert compare.main(["--n", "600", "--k", "8", "--sizes", "300", "--max-iter", "40",
                         "--repeat", "3", "--out", str(tmp_path), "--methods", *names]) == 0
    report = json.loads((tmp_path / "compare.json").read_text())
    results = report["results"]
    assert {(r["method"], r["n"], r["regime"]) for r in results} == {
        (m, n, g) for m in names for n in (300, 600) for g in ("flat", "peaked")}
    for r in results:
        assert r["per_iter_s"] > 0
        assert r["per_iter_timing"] == ("difference" if r["method"].startswith(("POT", "OTT"))
                                        else "one iteration")
        assert r["iter_over_floor"] == pytest.approx(r["per_iter_s"] / r["floor_s"])
    table = capsys.readouterr().out
    full = [r for r in results if r["n"] == 600]
    for r in full:
        assert f"| {r['method']} | {r['per_iter_s'] * 1e3:.3g} |" in table
    assert (tmp_path / "compare.png").stat().st_size > 10_000


def test_without_matplotlib_the_run_says_so_first_and_writes_the_rest(tmp_path, capsys,
                                                                     monkeypatch):
    """The plot came last, so a missing matplotlib ended a long run in an ImportError."""
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    said = []
    monkeypatch.setattr(compare, "make_scores",
                        lambda *a, **kw: said.append(capsys.readouterr().err) or make_scores(
                            *a, **kw))
    assert compare.main(["--n", "200", "--k", "4", "--sizes", "--max-iter", "20", "--repeat",
                         "1", "--out", str(tmp_path), "--methods", "sinklabel numpy"]) == 0
    assert "matplotlib is not installed" in said[0]
    assert json.loads((tmp_path / "compare.json").read_text())["results"]
    assert not (tmp_path / "compare.png").exists()
    assert f"wrote {tmp_path / 'compare.json'}\n" in capsys.readouterr().out


class RecordingBenchmark:
    """Stands in for pytest-benchmark's fixture: runs the target once, records the untimed
    warm-up rounds each pedantic benchmark asked for."""

    def __init__(self) -> None:
        self.warmup_rounds: list[int] = []

    def __call__(self, target, *args):
        return target(*args)

    def pedantic(self, target, args=(), kwargs=None, rounds=1, iterations=1, warmup_rounds=0):
        self.warmup_rounds.append(warmup_rounds)
        return target(*args, **(kwargs or {}))


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_whole_solves_are_timed_after_an_untimed_one():
    """The first solve in a process loads the compiled kernels (1.2 s against 16 ms for the
    solve itself, measured): it must not be a timed round."""
    benchmark = RecordingBenchmark()
    scores = make_scores(300, 6, regime="flat", seed=0).scores
    bench_cpu.test_solve(benchmark, scores, "numpy")
    bench_solver.test_to_tolerance(benchmark, ("numpy", "numpy", "cpu"), (300, 6), "peaked",
                                   "float32", 2)
    assert len(benchmark.warmup_rounds) == 2
    assert min(benchmark.warmup_rounds) >= 1


def test_one_pass_is_timed_at_the_potentials_of_the_solution():
    """The timed pass is made where the solver's passes are: the plan it computes has the
    uniform label marginal to within the default tolerance (float64 here)."""
    scores = make_scores(2000, 16, regime="peaked", seed=0).scores
    f = bench_cpu.solved_potentials(scores)
    z = bench_cpu.LAM * scores.astype(np.float64) + f
    plan = np.exp(z - z.max(axis=1, keepdims=True))
    marginal = (plan / plan.sum(axis=1, keepdims=True)).mean(axis=0)
    assert np.abs(marginal - 1.0 / 16).sum() <= 1e-3


def test_a_bench_file_named_on_the_command_line_is_left_to_pytest():
    """pytest collects a file it is given whatever its name; the suite's own collector must
    not collect it a second time."""
    parent = types.SimpleNamespace(
        session=types.SimpleNamespace(isinitpath=lambda path: True),
        config=types.SimpleNamespace(getini=lambda name: ["test_*.py"]),
    )
    assert bench_conftest.pytest_collect_file(Path("benchmarks/bench_cpu.py"), parent) is None


@pytest.mark.slow
def test_the_documented_smoke_run_runs_each_benchmark_once():
    """``pytest benchmarks/bench_cpu.py --benchmark-disable`` (docs/benchmarks.md)."""
    root = Path(__file__).resolve().parents[1]
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "benchmarks/bench_cpu.py", "--benchmark-disable", "-q",
         "-p", "no:cacheprovider", "--collect-only"],
        cwd=root, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    ids = [line for line in run.stdout.splitlines() if "::" in line]
    assert ids and len(ids) == len(set(ids))


def _record(method: str, family: str, **fields) -> dict:
    return {"regime": "flat", "n": 100, "k": 4, "method": method, "family": family,
            "library": "numpy", "device": "cpu", **fields}


def test_a_peer_that_ended_in_nan_is_nobodys_best_total():
    """SeLa's float32 loop at a large lam gives NaN after one quick iteration: that run solved
    nothing and must not become the best peer's total that every other method divides by."""
    from benchmarks._report import add_ratios

    records = [
        _record("sinklabel numba (numpy)", "sinklabel", per_iter_s=1e-3, total_s=0.02,
                stopped_by="tol"),
        _record("SeLa reference float32 (numpy)", "peer", per_iter_s=1e-4, total_s=1e-4,
                stopped_by="numerical error"),
        _record("POT sinkhorn (numpy)", "peer", per_iter_s=2e-4, total_s=0.04, stopped_by="cap"),
    ]
    add_ratios(records, {("flat", 100, "cpu"): 1e-4})
    assert records[0]["total_over_best_peer"] == pytest.approx(0.5)  # against POT's 0.04 s


def _fake_pot(monkeypatch, niter: int, errors: list, column_error: float, failed: bool):
    """An ``ot`` module whose sinkhorn returns a plan with that L1 label-marginal error."""
    import warnings

    def sinkhorn(a, b, cost, reg, **options):
        if failed:
            warnings.warn("Warning: numerical errors at iteration 12", stacklevel=2)  # POT's
        plan = np.outer(a, b)
        plan[0, 0] += column_error / 2
        plan[0, 1] -= column_error / 2
        return plan, {"niter": niter, "err": errors}

    monkeypatch.setitem(sys.modules, "ot", types.SimpleNamespace(sinkhorn=sinkhorn))


@pytest.mark.parametrize("niter, errors, column_error, failed, expected", [
    (12, [1e-2, 1e-2], 0.5, True, (12, "numerical error")),  # the plan of 12, not 13
    (299, [1e-2], 1e-2, False, (300, "cap")),
    (299, [1e-2], 1e-4, False, (300, "tol")),  # at the cap, but within the tolerance
    (300, [1e-2, 1e-4], 1e-2, False, (301, "own rule")),  # L2 rule on the last check
    (40, [1e-2, 1e-4], 1e-4, False, (41, "tol")),
])
def test_pot_outcomes_name_what_ended_the_run(monkeypatch, niter, errors, column_error, failed,
                                              expected):
    from benchmarks._peers import pot_solve

    _fake_pot(monkeypatch, niter, errors, column_error, failed)
    scores = np.zeros((10, 4))
    outcome = pot_solve(scores, method="sinkhorn", lam=25.0, tol=1e-3,
                        max_iter=expected[0] if expected[1] == "own rule" else 300, stop=True)
    assert (outcome.n_iter, outcome.stopped_by) == expected
    assert outcome.error == pytest.approx(column_error)


def test_the_json_holds_no_nan_for_strict_readers(tmp_path):
    """A NaN error (a run that ended in NaN) was written as the bare word NaN: not JSON."""
    from benchmarks._report import write_json

    def strict(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    record = _record("SeLa reference float32 (numpy)", "peer", per_iter_s=1e-4, total_s=1e-4,
                     error=float("nan"), stopped_by="numerical error", ratios=[float("inf")])
    write_json(tmp_path / "compare.json", {"lam": 200.0}, [record], {("flat", 100, "cpu"): 1e-4})
    report = json.loads((tmp_path / "compare.json").read_text(), parse_constant=strict)
    assert report["results"][0]["error"] is None and report["results"][0]["ratios"] == [None]
    assert report["results"][0]["total_s"] == 1e-4 and report["config"] == {"lam": 200.0}


#: The Numba benchmarks compile Numba kernels of their own.
NEEDS_NUMBA = requires("numba")


@NEEDS_NUMBA
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_cpu_iteration_benchmark_times_transposed_scores_by_both_routes(dtype, capsys):
    """The transposed layout's extra row is the route it replaced, built from the backend's
    own functions (a row that swapped out a removed method broke the script, untested)."""
    from benchmarks import cpu_iteration

    cpu_iteration.main(["--n", "3000", "--k", "40", "--rounds", "1", "--numpy-rounds", "0",
                        "--no-sela", "--no-cache", "--layout", "transposed", "--dtype", dtype])
    printed = capsys.readouterr().out
    extra = "numba (chunk copy)" if dtype == "float32" else "numba (copy)"
    assert re.search(rf"^{re.escape(extra)}\s+\d", printed, re.MULTILINE), printed
    assert re.search(r"^numba\s+\d", printed, re.MULTILINE), printed


@pytest.mark.parametrize(("script", "argv", "message"), [
    pytest.param("cpu_iteration", ["--rounds", "0"], "--rounds",  # printed NaN medians
                 marks=NEEDS_NUMBA),
    pytest.param("cpu_iteration", ["--n", "0"], "--n", marks=NEEDS_NUMBA),
    pytest.param("cpu_iteration", ["--numpy-rounds", "-1"], "--numpy-rounds", marks=NEEDS_NUMBA),
    ("cpu_cached_solve", ["--regimes", "peakd"], "invalid choice"),  # after the header
    ("cpu_cached_solve", ["--k", "0"], "--k"),
    pytest.param("numba_exp", ["--calls", "0"], "--calls",  # ZeroDivisionError after the table
                 marks=NEEDS_NUMBA),
    ("convergence", ["--max-iter", "0"], "--max-iter"),
    ("solver_host", ["--rounds", "0"], "--rounds"),
    ("solver_host", ["--ks", "3000", "0"], "--ks"),
    ("solver_host", ["--tol", "0"], "--tol"),
])
def test_benchmark_scripts_refuse_bad_options_before_any_work(script, argv, message, capsys,
                                                              monkeypatch):
    module = importlib.import_module(f"benchmarks.{script}")
    for name in ("make_scores", "_points"):
        if hasattr(module, name):
            monkeypatch.setattr(module, name, lambda *a, **kw: pytest.fail("worked"))
    with pytest.raises(SystemExit) as stopped:
        module.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(("argv", "message"), [
    (["--lam", "0"], "--lam"),  # every sinklabel method failed, the SeLa loop ran on
    (["--tol", "-1"], "--tol"),
    (["--sizes", "-5"], "--sizes"),  # sliced N - 5 rows and filed them under no floor
])
def test_compare_refuses_bad_options_before_any_work(argv, message, monkeypatch, tmp_path):
    monkeypatch.setattr(compare, "make_scores", lambda *a, **kw: pytest.fail("worked"))
    with pytest.raises(SystemExit, match=message):
        compare.main(["--quick", "--out", str(tmp_path), *argv])


def test_solver_host_times_the_gaps_between_a_solves_sweeps(capsys):
    """One gap per pass after the first, each the host's time between two sweeps; the timed
    kernel sweeps as the NumPy kernel does."""
    from benchmarks import solver_host
    from sinklabel import solver
    from sinklabel.kernels import get_kernel
    from sinklabel.sources import ArraySource

    scores = make_scores(200, 50, regime="flat", seed=50).scores  # no label starves
    kernel, marks = solver_host.stopwatch_kernel()
    f = np.linspace(-1.0, 1.0, 50)
    mass, lse = kernel.sweep_lse(scores, f, 25.0)
    plain_mass, plain_lse = get_kernel("numpy").sweep_lse(scores, f, 25.0)
    np.testing.assert_array_equal(mass, plain_mass)
    assert lse == plain_lse and len(marks) == 1 and marks[0][0] <= marks[0][1]

    gaps = solver_host.host_gaps_us(scores, 1e-3, 25.0)
    passes = solver.solve(ArraySource(scores), get_kernel("numpy"), lam=25.0,
                          label_weights=np.full(50, 0.02), tol=1e-3, max_iter=300, init=None,
                          rows=200, progress=False).n_iter
    assert passes > 2 and gaps.shape == (passes - 1,) and np.all(gaps > 0)

    assert solver_host.main(["--ks", "1", "50", "--rows", "200", "--rounds", "1"]) == 0
    table = capsys.readouterr().out
    assert "| 1 | flat | 1 | no second pass |" in table
    assert f"| 50 | flat | {passes} | " in table
