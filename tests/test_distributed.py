"""Distributed solves across real processes: gloo on CPU, loopback only.

Every scenario starts its ranks once (forked from a server that imported torch once) and runs
several cases in them; the oracle is a single-process solve of the concatenated rows.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.forkserver
import os
import queue
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

import sinklabel  # noqa: E402
from sinklabel._capacities import balanced_range  # noqa: E402
from sinklabel.datasets import make_scores  # noqa: E402
from sinklabel.distributed import RankFailedError  # noqa: E402
from sinklabel.sources import ArraySource  # noqa: E402

#: The group's own timeout: the bound on how long a rank waits for a peer that never comes.
GROUP_TIMEOUT_S = 20.0
#: How long a whole scenario may take before the test calls it a hang.
SCENARIO_TIMEOUT_S = 50.0



@functools.cache
def _context() -> multiprocessing.context.BaseContext:
    """Ranks fork from a server that imported torch and this module once (torch takes seconds
    to import), and no rank inherits the test process's threads."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch.distributed", "sinklabel", __name__])
    # the server must find this module under the name pytest gave it
    here = os.path.dirname(os.path.abspath(__file__))
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.path.dirname(here), saved]))
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    return context


def _run_ranks(tmp_path, world: int, worker, *args) -> dict[int, tuple]:
    """Run ``worker(rank, world, *args)`` on ``world`` gloo ranks; {rank: outcome}.

    An outcome is ("ok", value) or ("error", type name, message, seconds since the worker
    started). A rank that never reports (it died or hung) is missing from the dict.
    """
    init = f"file://{tmp_path / 'rendezvous'}"
    context = _context()
    results = context.Queue()
    ranks = [
        context.Process(target=_rank_main, args=(rank, world, init, worker, args, results))
        for rank in range(world)
    ]
    for process in ranks:
        process.start()
    outcomes: dict[int, tuple] = {}
    deadline = time.monotonic() + SCENARIO_TIMEOUT_S
    try:
        while len(outcomes) < world and time.monotonic() < deadline:
            try:
                rank, outcome = results.get(timeout=0.5)
            except queue.Empty:
                if not any(process.is_alive() for process in ranks) and results.empty():
                    break
                continue
            outcomes[rank] = outcome
    finally:
        for process in ranks:
            process.join(timeout=5)
            if process.is_alive():
                process.kill()
                process.join()
    assert time.monotonic() < deadline, f"ranks still running after {SCENARIO_TIMEOUT_S} s"
    return outcomes


def _values_of_every_rank(tmp_path, world: int, worker, *args) -> list:
    """``_run_ranks``, asserting that every rank reported and none failed: values by rank."""
    outcomes = _run_ranks(tmp_path, world, worker, *args)
    assert sorted(outcomes) == list(range(world))
    for outcome in outcomes.values():
        assert outcome[0] == "ok", outcome
    return [outcomes[rank][1] for rank in range(world)]


def _rank_main(rank, world, init, worker, args, results) -> None:
    os.environ["GLOO_SOCKET_IFNAME"] = "lo"
    dist.init_process_group(
        "gloo", init_method=init, rank=rank, world_size=world,
        timeout=timedelta(seconds=GROUP_TIMEOUT_S),
    )
    start = time.monotonic()
    try:
        results.put((rank, ("ok", worker(rank, world, *args))))
    except Exception as exc:
        results.put((rank, ("error", type(exc).__name__, str(exc), time.monotonic() - start)))
    finally:
        dist.destroy_process_group()


def _caught(call, *args, **kwargs) -> tuple:
    """("ok", value) or ("error", type name, message), so one rank can run many cases."""
    try:
        return ("ok", call(*args, **kwargs))
    except Exception as exc:
        return ("error", type(exc).__name__, str(exc))


def _shard(scores: np.ndarray, sizes: list[int], rank: int) -> np.ndarray:
    bounds = np.cumsum([0, *sizes])
    return scores[bounds[rank]:bounds[rank + 1]]


def _summary(result) -> dict:
    return {
        "potentials": result.potentials,
        "labels": np.asarray(result.labels),
        "counts": result.label_counts,
        "n_iter": result.n_iter,
        "history": result.error_history,
    }


# ---- equivalence with one process ----------------------------------------------------------

# float64 scores: in float32 the chunk boundaries alone move the potentials by ~1e-6 (the
# kernel sums each chunk in float32), in one process as much as across ranks.
FLAT = make_scores(240, 6, regime="flat", seed=1, dtype=np.float64).scores
PEAKED = make_scores(240, 6, regime="peaked", seed=2, margin=4.0, dtype=np.float64).scores
WEIGHTS = np.array([1.0, 2.0, 1.0, 1.5, 1.0, 0.5])
INIT = np.linspace(-1.0, 1.0, 6)

#: world size -> (rows per rank for the flat case, rows per rank for the peaked case)
SPLITS = {1: ([240], [240]), 2: ([37, 203], [0, 240]), 3: ([101, 0, 139], [0, 17, 223])}


def _equivalence_cases(rank: int, world: int) -> dict:
    flat_sizes, peaked_sizes = SPLITS[world]
    out = {}
    flat = _shard(FLAT, flat_sizes, rank)
    out["flat"] = _summary(sinklabel.sinkhorn(flat, 6, chunk_size=16, distributed=True))
    peaked = _shard(PEAKED, peaked_sizes, rank)
    out["peaked"] = _summary(sinklabel.sinkhorn(
        peaked, 6, lam=10.0, label_weights=WEIGHTS, init=INIT, chunk_size=50,
        process_group=dist.group.WORLD,
    ))
    labeler = sinklabel.SinkhornLabeler(6, lam=5.0, distributed=True)
    labeler.fit(peaked)
    first = labeler.n_iter_
    labeler.partial_fit(peaked)
    out["estimator"] = {**_summary(labeler.result_), "first_n_iter": first}
    if world == 3:
        group = dist.new_group([1, 2])
        if rank in (1, 2):
            out["subgroup"] = _summary(sinklabel.sinkhorn(flat, 6, lam=5.0, process_group=group))
            narrower = flat[:, :5] if rank == 2 else flat
            out["subgroup K"] = _caught(sinklabel.sinkhorn, narrower, narrower.shape[1],
                                        process_group=group)
            nan = flat.copy()
            nan[:1, 0] = np.nan if rank == 2 else 0.0
            out["subgroup NaN"] = _caught(sinklabel.sinkhorn, nan, 6, process_group=group)
        else:
            out["outsider"] = _caught(sinklabel.sinkhorn, flat, 6, process_group=group)
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_match_one_process_on_the_concatenated_rows(tmp_path, world):
    per_rank = _values_of_every_rank(tmp_path, world, _equivalence_cases)

    flat_sizes, peaked_sizes = SPLITS[world]
    references = {
        "flat": sinklabel.sinkhorn(FLAT, 6),
        "peaked": sinklabel.sinkhorn(PEAKED, 6, lam=10.0, label_weights=WEIGHTS, init=INIT),
    }
    labeler = sinklabel.SinkhornLabeler(6, lam=5.0).fit(PEAKED)
    first_n_iter = labeler.n_iter_
    references["estimator"] = labeler.partial_fit(PEAKED).result_

    for case, sizes in (("flat", flat_sizes), ("peaked", peaked_sizes),
                        ("estimator", peaked_sizes)):
        reference = references[case]
        runs = [ranked[case] for ranked in per_rank]
        for run, size in zip(runs, sizes, strict=True):
            assert run["labels"].shape == (size,)
            # identical state on every rank, bit for bit: they took the same steps
            np.testing.assert_array_equal(run["potentials"], runs[0]["potentials"])
            np.testing.assert_array_equal(run["history"], runs[0]["history"])
            np.testing.assert_array_equal(run["counts"], runs[0]["counts"])
        np.testing.assert_allclose(runs[0]["potentials"], reference.potentials, atol=1e-6)
        assert runs[0]["n_iter"] == reference.n_iter
        labels = np.concatenate([run["labels"] for run in runs])
        np.testing.assert_array_equal(labels, reference.labels)
        # counts are global: the histogram of every rank's labels together
        np.testing.assert_array_equal(runs[0]["counts"], np.bincount(labels, minlength=6))
    assert per_rank[0]["estimator"]["first_n_iter"] == first_n_iter
    assert per_rank[0]["estimator"]["n_iter"] < first_n_iter  # the warm start was global too

    if world == 3:
        subgroup = [per_rank[rank]["subgroup"] for rank in (1, 2)]
        rows = np.concatenate([_shard(FLAT, SPLITS[3][0], rank) for rank in (1, 2)])
        reference = sinklabel.sinkhorn(rows, 6, lam=5.0)
        np.testing.assert_allclose(subgroup[0]["potentials"], reference.potentials, atol=1e-6)
        np.testing.assert_array_equal(subgroup[1]["potentials"], subgroup[0]["potentials"])
        labels = np.concatenate([run["labels"] for run in subgroup])
        np.testing.assert_array_equal(labels, reference.labels)
        outsider = per_rank[0]["outsider"]
        assert outsider[:2] == ("error", "ValueError") and "not a member" in outsider[2]
        # messages name the group's ranks and, where they differ, the global ones
        for rank in (1, 2):
            assert per_rank[rank]["subgroup K"] == ("error", "ValueError", (
                "ranks disagree on K: K=6 on rank 0 (global rank 1), K=5 on rank 1 (global rank "
                "2); every rank must pass the same K, lam, tol, max_iter, dtype, label_weights, "
                "init, balance"))
        assert per_rank[2]["subgroup NaN"][:2] == ("error", "ValueError")
        assert per_rank[1]["subgroup NaN"][:2] == ("error", "RankFailedError")
        assert per_rank[1]["subgroup NaN"][2].startswith(
            "rank 1 (global rank 2) (ValueError) failed checking its input")


# ---- disagreement and bad input: the same error everywhere, before any work ------------------


def _disagreement_cases(rank: int, world: int) -> list[tuple]:
    scores = make_scores(30, 5, seed=rank).scores
    mine = scores[:, :4] if rank == 1 else scores
    nan = scores.copy()
    nan[3, 2] = np.nan
    empty = scores[:0]
    return [
        _caught(sinklabel.sinkhorn, mine, mine.shape[1], distributed=True),
        _caught(sinklabel.sinkhorn, scores, 5, lam=25.0 if rank == 0 else 20.0, distributed=True),
        _caught(sinklabel.sinkhorn, scores.astype(np.float64) if rank == 1 else scores, 5,
                distributed=True),
        _caught(sinklabel.sinkhorn, scores, 5, init=None if rank == 0 else np.zeros(5),
                distributed=True),
        _caught(sinklabel.sinkhorn, nan if rank == 1 else scores, 5, distributed=True),
        _caught(sinklabel.sinkhorn, empty, 5, distributed=True),
        # arguments checked before the solve starts, bad on one rank only
        _caught(sinklabel.sinkhorn, scores, 5, balance="exakt" if rank == 1 else None,
                distributed=True),
        _caught(sinklabel.sinkhorn, scores, 5, progress="no" if rank == 1 else False,
                distributed=True),
        _caught(lambda: sinklabel.sinkhorn(scores, 5, distributed=True).label_counts.sum()),
        _caught(sinklabel.sinkhorn, scores[:2], 5, balance="exact", distributed=True),
        _caught(lambda: sinklabel.sinkhorn(scores[:3], 5, balance="exact", distributed=True)
                .label_counts.tolist()),
        # label 2 should take 1.9 points and has one finite row, on rank 0
        *(_caught(lambda balance=balance: sinklabel.sinkhorn(
            SHORT_BY_LESS_THAN_A_POINT[:3] if rank == 0 else SHORT_BY_LESS_THAN_A_POINT[3:], 3,
            label_weights=[0.31, 0.31, 0.38], balance=balance, max_iter=100,
            distributed=True).label_counts.tolist()) for balance in ("exact", None)),
    ]


#: Five points: label 2 has a finite score in one row, while weights 0.31, 0.31, 0.38 ask it
#: to take 1.9 points (balance="exact" rounds that to 1 or 2).
SHORT_BY_LESS_THAN_A_POINT = np.array([
    [0.0, 0.4, -np.inf], [0.0, -np.inf, 0.0], [0.1, 0.0, -np.inf], [0.4, 0.2, -np.inf],
    [0.3, 0.1, -np.inf]])


def test_disagreeing_ranks_raise_the_same_error_without_hanging(tmp_path):
    first, second = _values_of_every_rank(tmp_path, 2, _disagreement_cases)
    expected = [
        "ranks disagree on K: K=5 on rank 0, K=4 on rank 1",
        "ranks disagree on lam: lam=25.0 on rank 0, lam=20.0 on rank 1",
        "ranks disagree on dtype: dtype=float32 on rank 0, dtype=float64 on rank 1",
        "ranks disagree on init: init=None on rank 0",
    ]
    for case, text in enumerate(expected):
        assert first[case] == second[case], case  # the very same error on both ranks
        assert first[case][1] == "ValueError" and text in first[case][2], first[case]
    # a rank whose own input is bad says why; the other names it
    assert second[4][:2] == ("error", "ValueError") and "NaN (row 3)" in second[4][2]
    assert first[4][:2] == ("error", RankFailedError.__name__)
    assert "rank 1 (ValueError) failed checking its input" in first[4][2]
    assert first[5] == second[5]
    assert first[5][1] == "ValueError" and "every rank passed 0 rows" in first[5][2]
    for case, kind, text in ((6, "ValueError", "balance must be one of"),
                             (7, "TypeError", "progress must be True or False")):
        assert second[case][:2] == ("error", kind) and text in second[case][2], second[case]
        assert first[case][:2] == ("error", RankFailedError.__name__), first[case]
        assert f"rank 1 ({kind}) failed checking its input" in first[case][2]
    # and the group is still in step: a good solve afterwards sees all 60 rows
    assert first[8] == second[8] == ("ok", 60)
    # exact balancing counts the points of every rank: 4 rows for 5 labels is too few, 6 not
    assert first[9] == second[9]
    assert first[9][1] == "ValueError" and "N=4 < K=5" in first[9][2]
    assert first[10] == second[10] and first[10][0] == "ok"
    assert sorted(first[10][1]) == [1, 1, 1, 1, 2]
    # the rounded sizes of balance="exact" can be met; the plan's 1.9 points cannot
    assert first[11] == second[11] and first[11][0] == "ok" and first[11][1][2] == 1
    assert first[12] == second[12] and first[12][1] == "ValueError", first[12]
    assert "label 2 should take 1.9 points" in first[12][2]


# ---- a rank failing mid-solve stops every rank ---------------------------------------------


class FlakySource(ArraySource):
    """In-memory rows that fail on one pass: raising, or yielding a block the kernel rejects."""

    def __init__(self, array: np.ndarray, fail_on_pass: int, how: str):
        super().__init__(array)
        self.fail_on_pass = fail_on_pass
        self.how = how
        self.passes = 0

    def chunks(self, rows):
        self.passes += 1
        for start, stop, block in super().chunks(rows):
            if self.passes == self.fail_on_pass:
                if self.how == "raise":
                    raise OSError("disk gone")
                if self.how == "die":
                    os._exit(3)
                block = np.zeros((stop - start, block.shape[1] + 1), dtype=block.dtype)
            yield start, stop, block


def _failure_cases(rank: int, world: int, how: str) -> list[tuple]:
    scores = make_scores(60, 4, regime="flat", seed=rank).scores
    outcomes = []
    # pass 1 checks the scores; passes 2.. iterate; with max_iter=3, pass 5 labels the rows
    for fail_on_pass in (3, 5):
        mine = FlakySource(scores, fail_on_pass, how) if rank == 1 else scores
        start = time.monotonic()
        # NumPy kernels: this test is about the failure flag, and only they reject a
        # malformed block themselves (compiled kernels trust the checked sources' shapes).
        outcome = _caught(sinklabel.sinkhorn, mine, 4, tol=1e-12, max_iter=3, chunk_size=16,
                          distributed=True, backend="numpy")
        outcomes.append((*outcome, time.monotonic() - start))
    outcomes.append(_caught(lambda: sinklabel.sinkhorn(scores, 4, distributed=True).n_iter))
    return outcomes


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
@pytest.mark.parametrize("how", ["raise", "bad block"])
def test_a_rank_failing_mid_solve_stops_every_rank(tmp_path, how):
    per_rank = _values_of_every_rank(tmp_path, 3, _failure_cases, how)
    failing = "OSError" if how == "raise" else "ValueError"
    for case in range(2):
        own = per_rank[1][case]
        assert own[:2] == ("error", failing), own
        for rank in (0, 2):
            other = per_rank[rank][case]
            assert other[:2] == ("error", RankFailedError.__name__), other
            assert f"rank 1 ({failing}) failed during the solve" in other[2]
            assert other[3] < GROUP_TIMEOUT_S / 2  # stopped by the flag, not by a timeout
    finals = [cases[2] for cases in per_rank]
    assert finals[0][0] == "ok" and finals.count(finals[0]) == 3


def _allocation_failure_case(rank: int, world: int) -> tuple:
    """Rank 1 cannot allocate its label vector (out of memory, say) after a solve that went
    well everywhere."""
    from sinklabel.kernels.numpy import NumpyKernel

    scores = make_scores(60, 4, regime="flat", seed=rank).scores
    if rank == 1:
        allocate = NumpyKernel.empty_labels

        def out_of_memory(self, n, like):
            if n == len(scores):  # the whole vector; a chunk's stand-in still fits
                raise MemoryError("cannot allocate the labels")
            return allocate(self, n, like)
        NumpyKernel.empty_labels = out_of_memory
    start = time.monotonic()
    outcome = _caught(sinklabel.sinkhorn, scores, 4, chunk_size=16, distributed=True,
                      backend="numpy")
    return (*outcome, time.monotonic() - start)


def test_a_rank_that_cannot_allocate_its_labels_stops_every_rank(tmp_path):
    """The label vector is allocated after the solve's last reduction: a rank that fails
    there must still reach the next one (the label counts), or the others wait for it until
    the group's timeout."""
    outcomes = _values_of_every_rank(tmp_path, 3, _allocation_failure_case)
    assert outcomes[1][:2] == ("error", "MemoryError"), outcomes[1]
    for rank in (0, 2):
        status, kind, message, seconds = outcomes[rank]
        assert (status, kind) == ("error", RankFailedError.__name__), outcomes[rank]
        assert "rank 1 (MemoryError)" in message
        assert seconds < GROUP_TIMEOUT_S / 2  # stopped by the flag, not by a timeout


def _death_case(rank: int, world: int) -> tuple:
    scores = make_scores(60, 4, regime="flat", seed=rank).scores
    mine = FlakySource(scores, 3, "die") if rank == 1 else scores
    start = time.monotonic()
    outcome = _caught(sinklabel.sinkhorn, mine, 4, tol=1e-12, max_iter=5, distributed=True)
    return (*outcome, time.monotonic() - start)


def test_a_rank_that_dies_makes_the_others_fail_within_the_group_timeout(tmp_path):
    outcomes = _run_ranks(tmp_path, 2, _death_case)
    assert 1 not in outcomes  # it died without a word
    status, kind, message, seconds = outcomes[0][1]
    assert (status, kind) == ("error", RankFailedError.__name__), outcomes[0]
    assert "all-reduce across the process group failed" in message
    assert seconds < GROUP_TIMEOUT_S + 5


# ---- cache=True across ranks ---------------------------------------------------------------


def _cached_cases(rank: int, world: int) -> dict:
    flat_sizes, peaked_sizes = SPLITS[world]
    out = {
        "flat": _summary(sinklabel.sinkhorn(_shard(FLAT, flat_sizes, rank), 6, chunk_size=16,
                                            distributed=True, cache=True)),
        "peaked": _summary(sinklabel.sinkhorn(
            _shard(PEAKED, peaked_sizes, rank), 6, lam=10.0, label_weights=WEIGHTS, init=INIT,
            chunk_size=50, distributed=True, cache=True,
        )),
    }
    # A CPU tensor's tables are the Numba backend's on its view: the same bits.
    tensor = sinklabel.sinkhorn(
        torch.from_numpy(_shard(PEAKED, peaked_sizes, rank)), 6, lam=10.0,
        label_weights=WEIGHTS, init=INIT, chunk_size=50, distributed=True, cache=True)
    out["peaked tensor"] = (_summary(tensor), type(tensor.labels).__name__)
    balanced = sinklabel.sinkhorn(_shard(FLAT, flat_sizes, rank), 6, chunk_size=16,
                                  distributed=True, cache=True, balance="exact")
    out["balanced"] = (np.asarray(balanced.labels), balanced.certificate.primal,
                       balanced.certificate.optimal)
    # Pass 1 checks the in-memory rows; pass 2 builds the tables, reading the rows: rank 1
    # fails there, inside the cache, and every rank must still stop at the next reduction.
    scores = make_scores(60, 4, regime="flat", seed=rank).scores
    mine = FlakySource(scores, 2, "raise") if rank == 1 else scores
    start = time.monotonic()
    outcome = _caught(sinklabel.sinkhorn, mine, 4, chunk_size=16, distributed=True, cache=True)
    out["failure"] = (*outcome, time.monotonic() - start)
    # Label 0 has a finite score in one row of all: the failed solve counts the raw scores
    # behind the cache, over both ranks, to say so.
    masked = make_scores(60, 4, regime="flat", seed=rank).scores
    masked[rank:, 0] = -np.inf
    out["unreachable"] = _caught(sinklabel.sinkhorn, masked, 4, chunk_size=16, max_iter=300,
                                 distributed=True, cache=True)
    return out


def test_cached_ranks_match_one_uncached_process_and_fail_together(tmp_path):
    per_rank = _values_of_every_rank(tmp_path, 2, _cached_cases)
    references = {
        "flat": sinklabel.sinkhorn(FLAT, 6),
        "peaked": sinklabel.sinkhorn(PEAKED, 6, lam=10.0, label_weights=WEIGHTS, init=INIT),
    }
    for case, reference in references.items():
        runs = [ranked[case] for ranked in per_rank]
        np.testing.assert_array_equal(runs[1]["potentials"], runs[0]["potentials"])
        np.testing.assert_allclose(runs[0]["potentials"], reference.potentials, atol=1e-6)
        labels = np.concatenate([run["labels"] for run in runs])
        np.testing.assert_array_equal(labels, reference.labels)
        np.testing.assert_array_equal(runs[0]["counts"], reference.label_counts)
    for ranked in per_rank:
        tensor, kind = ranked["peaked tensor"]
        assert kind == "Tensor"
        for key in ("potentials", "labels", "counts"):
            np.testing.assert_array_equal(tensor[key], ranked["peaked"][key])
    # The exact step reads the raw scores behind the cache, across both ranks.
    exact = sinklabel.sinkhorn(FLAT, 6, balance="exact")
    labels = np.concatenate([ranked["balanced"][0] for ranked in per_rank])
    np.testing.assert_array_equal(np.bincount(labels, minlength=6), exact.label_counts)
    assert all(ranked["balanced"][2] for ranked in per_rank)
    assert per_rank[0]["balanced"][1] == pytest.approx(exact.certificate.primal, rel=1e-9)
    own, other = per_rank[1]["failure"], per_rank[0]["failure"]
    assert own[:3] == ("error", "OSError", "disk gone"), own
    assert other[:2] == ("error", RankFailedError.__name__), other
    assert "rank 1 (OSError) failed during the solve" in other[2]
    assert other[3] < GROUP_TIMEOUT_S / 2
    for ranked in per_rank:
        assert ranked["unreachable"][:2] == ("error", "ValueError"), ranked["unreachable"]
        assert "label 0 should take 30 points" in ranked["unreachable"][2]
        assert "only 1 rows have a finite score" in ranked["unreachable"][2]


# ---- the duality-gap certificate across ranks ----------------------------------------------

CAPACITY_CASES = {
    "default": None,
    "fixed": np.full(6, 40),
    "range": (np.full(6, 30), np.full(6, 50)),
}


def _certificate_cases(rank: int, world: int, labellings: dict, prices: dict) -> dict:
    sizes = SPLITS[world][0]
    rows = _shard(FLAT, sizes, rank)
    out = {}
    for name, labels in labellings.items():
        mine = _shard(labels, sizes, rank)
        for capacity_name, capacities in CAPACITY_CASES.items():
            out[name, capacity_name] = sinklabel.duality_gap(
                rows, mine, prices[name], capacities, chunk_size=16, distributed=True,
            )
    # float32 rows as torch tensors, through the process_group argument
    mine = torch.from_numpy(_shard(labellings["optimal"], sizes, rank))
    out["float32"] = sinklabel.duality_gap(
        torch.from_numpy(rows.astype(np.float32)), mine, prices["optimal"],
        process_group=dist.group.WORLD,
    )
    return out


def _certificate_labellings() -> tuple[dict, dict]:
    """Labellings of FLAT and prices to certify them with: optimal, feasible but not optimal,
    and infeasible (one point moved from label 0 to label 1: every rank's share looks fine,
    only the global counts break the sizes)."""
    rng = np.random.default_rng(7)
    optimal = sinklabel.solve_exact(FLAT, 6, capacities=np.full(6, 40))
    labels = np.asarray(optimal.labels)
    moved = labels.copy()
    moved[np.flatnonzero(labels == 0)[-1]] = 1
    labellings = {
        "optimal": labels,
        "shuffled": rng.permutation(np.repeat(np.arange(6), 40)),
        "moved": moved,
    }
    prices = {"optimal": optimal.prices, "shuffled": rng.normal(size=6),
              "moved": optimal.prices}
    return labellings, prices


def _assert_same_certificate(got, want) -> None:
    assert got.feasible == want.feasible
    assert got.primal == pytest.approx(want.primal, rel=1e-9)
    assert got.dual == pytest.approx(want.dual, rel=1e-9)
    assert got.gap == pytest.approx(want.gap, abs=1e-9 * abs(want.primal))
    # The summation's bound depends on the chunks and the ranks, which differ here.
    assert want.rounding / 2 <= got.rounding <= 2 * want.rounding


@pytest.mark.parametrize("world", [1, 2, 3])
def test_certificate_across_ranks_matches_one_process_on_the_concatenated_rows(tmp_path, world):
    labellings, prices = _certificate_labellings()
    per_rank = _values_of_every_rank(tmp_path, world, _certificate_cases, labellings, prices)
    for case, certificate in per_rank[0].items():
        # every rank holds the very same global certificate
        assert all(ranked[case] == certificate for ranked in per_rank), case
        name, capacity_name = case if case != "float32" else ("optimal", "default")
        if case == "float32":
            reference = sinklabel.duality_gap(FLAT.astype(np.float32), labellings[name],
                                              prices[name])
        else:
            reference = sinklabel.duality_gap(FLAT, labellings[name], prices[name],
                                              CAPACITY_CASES[capacity_name])
        _assert_same_certificate(certificate, reference)
    for capacity_name in ("default", "fixed"):  # 40 points per label, as solved for
        optimal = per_rank[0]["optimal", capacity_name]
        assert optimal.optimal and abs(optimal.gap) <= optimal.rounding
    # looser sizes admit cheaper labellings: still feasible, but no longer proved optimal
    assert per_rank[0]["optimal", "range"].feasible
    assert per_rank[0]["optimal", "range"].gap > 1.0
    for capacity_name in CAPACITY_CASES:
        assert per_rank[0]["shuffled", capacity_name].feasible
        assert per_rank[0]["shuffled", capacity_name].gap > 1.0
    assert per_rank[0]["float32"].optimal
    # 41 points on label 1: over the fixed size 40, within the range 30..50
    assert not per_rank[0]["moved", "fixed"].feasible
    assert not per_rank[0]["moved", "default"].feasible
    assert per_rank[0]["moved", "range"].feasible


def _certificate_failure_cases(rank: int, world: int) -> list[tuple]:
    sizes = [50, 0, 70]
    rows = _shard(FLAT[:120], sizes, rank)
    labels = np.arange(rows.shape[0]) % 6
    prices = np.linspace(0.0, 1.0, 6)
    capacities = np.full(6, 20)

    def gap(scores=rows, y=labels, v=prices, sizes=capacities, **options):
        return _caught(sinklabel.duality_gap, scores, y, v, sizes, distributed=True, **options)

    bad_labels = labels + 6 if rank == 2 else labels
    flaky = FlakySource(rows, 1, "raise") if rank == 2 else rows
    return [
        gap(v=prices + (rank == 1)),
        gap(scores=rows[:, :5], y=labels % 5, v=prices[:5]) if rank == 0 else gap(),
        gap(sizes=(np.full(6, 10), np.full(6, 30)) if rank == 2 else capacities),
        gap(sizes=np.full(6, 21)),
        gap(y=bad_labels),
        gap(scores=flaky, backend="numpy"),
        gap(scores=rows[:0], y=labels[:0]),
        _caught(sinklabel.sinkhorn, rows, 6, balance="exact" if rank == 1 else None,
                distributed=True),
        gap(),
    ]


def test_certificate_ranks_that_disagree_or_fail_raise_on_every_rank(tmp_path):
    cases = list(zip(*_values_of_every_rank(tmp_path, 3, _certificate_failure_cases),
                     strict=True))
    same_everywhere = [
        "ranks disagree on prices: prices=<vector A> on ranks 0, 2, prices=<vector B> on rank 1",
        "ranks disagree on K: K=5 on rank 0, K=6 on ranks 1, 2",
        "ranks disagree on capacities:",
        "capacities must sum to N=120, got 126",
    ]
    for case, text in enumerate(same_everywhere):
        first = cases[case][0]
        assert cases[case].count(first) == 3, cases[case]  # the very same error everywhere
        assert first[:2] == ("error", "ValueError") and text in first[2], first
    labels_case, pass_case, empty_case, balance_case, good_case = cases[4:]
    # a rank whose labels are bad says why; the others name it
    assert labels_case[2][:2] == ("error", "ValueError") and "[0, 6)" in labels_case[2][2]
    for rank in (0, 1):
        assert labels_case[rank][:2] == ("error", RankFailedError.__name__)
        assert "rank 2 (ValueError) failed checking its input" in labels_case[rank][2]
    # a rank whose pass fails stops the others at the one sum after the pass
    assert pass_case[2] == ("error", "OSError", "disk gone")
    for rank in (0, 1):
        assert pass_case[rank][:2] == ("error", RankFailedError.__name__)
        assert "rank 2 (OSError) failed" in pass_case[rank][2]
    assert empty_case.count(empty_case[0]) == 3 and "every rank passed 0 rows" in empty_case[0][2]
    assert balance_case.count(balance_case[0]) == 3, balance_case
    assert balance_case[0][:2] == ("error", "ValueError")
    assert ("ranks disagree on balance: balance=None on ranks 0, 2, balance='exact' on rank 1"
            in balance_case[0][2])
    # and the group is still in step: the certificate of all 120 rows, on every rank
    assert good_case[0][0] == "ok" and good_case.count(good_case[0]) == 3
    reference = sinklabel.duality_gap(
        FLAT[:120], np.concatenate([np.arange(n) % 6 for n in (50, 0, 70)]),
        np.linspace(0.0, 1.0, 6), np.full(6, 20),
    )
    _assert_same_certificate(good_case[0][1], reference)


# ---- balance="exact" across ranks ---------------------------------------------------------

#: (scores, rows per rank for world sizes 1, 2, 3, sinkhorn options, first contested rows)
EXACT_CASES = {
    # N = 240 = 40 K: fixed sizes; small enough that all rows are contested at once
    "flat": (FLAT, {world: sizes[0] for world, sizes in SPLITS.items()}, {}, None),
    # N = 239: sizes 39 or 40, the solve choosing which label takes the extra row; too few
    # contested rows at first and loose Sinkhorn prices (tol=0.9: the first pass), so settled
    # rows move and the round is repeated
    "flat 239, retried": (FLAT[:239], {1: [239], 2: [120, 119], 3: [0, 150, 89]},
                          {"tol": 0.9}, 1),
    "peaked, weights, retried": (
        PEAKED, {1: [240], 2: [0, 240], 3: [17, 0, 223]},
        {"lam": 10.0, "label_weights": WEIGHTS}, 1,
    ),
}


def _exact_cases(rank: int, world: int) -> dict:
    from sinklabel import _distributed_exact

    solves = []
    outcome = _distributed_exact._reduced_outcome

    def counted(table, n_rows, *args):
        solves.append(n_rows)
        return outcome(table, n_rows, *args)

    _distributed_exact._reduced_outcome = counted
    out = {}
    for name, (scores, splits, options, first) in EXACT_CASES.items():
        _distributed_exact.MIN_CONTESTED = first or 4096
        _distributed_exact.CONTESTED_PER_LABEL = 0 if first else 16
        solves.clear()
        rows = _shard(scores, splits[world], rank)
        if name.startswith("peaked"):  # float32 torch tensors, through process_group
            rows = torch.from_numpy(rows.astype(np.float32))
        result = sinklabel.sinkhorn(rows, 6, balance="exact", chunk_size=16, distributed=True,
                                    **options)
        out[name] = {**_summary(result), "certificate": result.certificate,
                     "prices": result.prices, "solves": list(solves),
                     "torch": isinstance(result.labels, torch.Tensor)}
    if world == 3:  # ranks 1 and 2 alone, in a group where they are ranks 0 and 1 (and with
        # the last case's small first round, so rows go point to point in several rounds)
        group = dist.new_group([1, 2])
        if rank in (1, 2):
            rows = _shard(FLAT[:239], [0, 150, 89], rank)
            result = sinklabel.sinkhorn(rows, 6, balance="exact", process_group=group)
            out["subgroup"] = (np.asarray(result.labels), result.certificate)
    return out


@pytest.mark.parametrize("world", [1, 2, 3])
def test_exact_balance_across_ranks_is_the_optimum_of_all_rows(tmp_path, world):
    per_rank = _values_of_every_rank(tmp_path, world, _exact_cases)
    for name, (scores, splits, options, first) in EXACT_CASES.items():
        runs = [ranked[name] for ranked in per_rank]
        for run, size in zip(runs, splits[world], strict=True):
            assert run["labels"].shape == (size,)
            # the same global state on every rank
            for key in ("prices", "counts", "potentials", "solves"):
                np.testing.assert_array_equal(run[key], runs[0][key])
            assert run["certificate"] == runs[0]["certificate"]
            assert run["torch"] == name.startswith("peaked")
        if name.startswith("peaked"):
            scores = scores.astype(np.float32)
        labels = np.concatenate([run["labels"] for run in runs])
        N, K = scores.shape
        lower, upper = balanced_range(N, np.asarray(options.get("label_weights", np.ones(K)))
                                      / np.sum(options.get("label_weights", np.ones(K))))
        counts = np.bincount(labels, minlength=K)
        np.testing.assert_array_equal(counts, runs[0]["counts"])
        assert np.all((lower <= counts) & (counts <= upper)), name
        certificate = runs[0]["certificate"]
        assert certificate.optimal, (name, certificate)
        objective = float(scores[np.arange(N), labels].astype(np.float64).sum())
        single = sinklabel.sinkhorn(scores, K, balance="exact", **options)
        highs = sinklabel.solve_exact(scores, K, capacities=(lower, upper), method="highs")
        assert objective == pytest.approx(-single.certificate.primal, rel=1e-9), name
        assert objective == pytest.approx(-highs.objective, rel=1e-9), name
        assert -certificate.primal == pytest.approx(objective, rel=1e-12), name
        solves = runs[0]["solves"]
        if first is None:
            assert solves == [N], name  # small: every row contested, one round
        else:
            assert len(solves) >= 2 and solves[-1] < N, (name, solves)  # retried, never all
    if world == 3:
        (first_labels, certificate), (second_labels, other) = (
            per_rank[rank]["subgroup"] for rank in (1, 2))
        assert certificate == other and certificate.optimal
        labels = np.concatenate([first_labels, second_labels])
        single = sinklabel.sinkhorn(FLAT[:239], 6, balance="exact")
        assert float(FLAT[np.arange(239), labels].sum()) == pytest.approx(
            -single.certificate.primal, rel=1e-9)


def _exact_failure_cases(rank: int, world: int) -> list[tuple]:
    """Rank 1's rows fail on each pass of the exact stage, then rank 0's reduced solve fails,
    then rank 1's scan of its settled rows; a solve afterwards shows the group is still in
    step."""
    from sinklabel import _transport

    scores = _shard(FLAT[:239], [80, 90, 69], rank)
    outcomes = []
    # passes 1-5: check, 3 iterations, labels; 6: margins; 7: contested rows; 8: check; 9:
    # certificate
    for fail_on_pass in (6, 7, 8, 9):
        mine = FlakySource(scores, fail_on_pass, "raise") if rank == 1 else scores
        start = time.monotonic()
        outcome = _caught(sinklabel.sinkhorn, mine, 6, tol=1e-12, max_iter=3, balance="exact",
                          distributed=True)
        outcomes.append((*outcome, time.monotonic() - start))
    solve = _transport.solve_transport
    if rank == 0:
        def out_of_memory(*args, **kwargs):
            raise MemoryError("no room for the contested rows")

        _transport.solve_transport = out_of_memory
    start = time.monotonic()
    outcome = _caught(sinklabel.sinkhorn, scores, 6, balance="exact", distributed=True)
    outcomes.append((*outcome, time.monotonic() - start))
    _transport.solve_transport = solve
    # rank 1's check of its settled rows fails in the scan itself, not in reading its rows
    from sinklabel import _distributed_exact

    scan = _distributed_exact._scan
    if rank == 1:
        def failing_check(source, chunk_rows, v, labels=None):
            if labels is not None:
                raise MemoryError("no room to check the settled rows")
            return scan(source, chunk_rows, v)

        _distributed_exact._scan = failing_check
    start = time.monotonic()
    outcome = _caught(sinklabel.sinkhorn, scores, 6, balance="exact", distributed=True)
    outcomes.append((*outcome, time.monotonic() - start))
    _distributed_exact._scan = scan
    result = sinklabel.sinkhorn(scores, 6, balance="exact", distributed=True)
    outcomes.append(("ok", int(result.label_counts.sum()), result.certificate.optimal))
    return outcomes


@pytest.mark.filterwarnings("ignore::sinklabel.ConvergenceWarning")
def test_exact_balance_a_rank_failing_stops_every_rank(tmp_path):
    per_rank = _values_of_every_rank(tmp_path, 3, _exact_failure_cases)
    cases = list(zip(*per_rank, strict=True))
    for case in cases[:4]:
        assert case[1][:3] == ("error", "OSError", "disk gone"), case
        for rank in (0, 2):
            assert case[rank][:2] == ("error", RankFailedError.__name__), case
            assert "rank 1 (OSError) failed during the solve" in case[rank][2]
            assert case[rank][3] < GROUP_TIMEOUT_S / 2  # stopped by the flag, not a timeout
    solve_case = cases[4]
    assert solve_case[0][:3] == ("error", "MemoryError", "no room for the contested rows")
    for rank in (1, 2):
        assert solve_case[rank][:2] == ("error", RankFailedError.__name__), solve_case
        assert "rank 0 (MemoryError) failed during the solve" in solve_case[rank][2]
        assert solve_case[rank][3] < GROUP_TIMEOUT_S / 2
    check_case = cases[5]  # its stand-in scan keeps rank 1 in step until the next sum
    assert check_case[1][:3] == ("error", "MemoryError", "no room to check the settled rows")
    for rank in (0, 2):
        assert check_case[rank][:2] == ("error", RankFailedError.__name__), check_case
        assert "rank 1 (MemoryError) failed during the solve" in check_case[rank][2]
        assert check_case[rank][3] < GROUP_TIMEOUT_S / 2
    assert cases[6] == (("ok", 239, True),) * 3


def _exact_death_case(rank: int, world: int) -> tuple:
    """Rank 1 dies just as it would send its contested rows to rank 0."""
    scores = _shard(FLAT[:239], [120, 119], rank)
    if rank == 1:
        dist.send = lambda *args, **kwargs: os._exit(3)
    start = time.monotonic()
    outcome = _caught(sinklabel.sinkhorn, scores, 6, balance="exact", distributed=True)
    return (*outcome, time.monotonic() - start)


def test_exact_balance_a_rank_that_dies_while_sending_rows_makes_rank_0_fail(tmp_path):
    outcomes = _run_ranks(tmp_path, 2, _exact_death_case)
    assert 1 not in outcomes
    status, kind, message, seconds = outcomes[0][1]
    assert (status, kind) == ("error", RankFailedError.__name__), outcomes[0]
    assert "sending rows to rank 0 failed" in message
    assert seconds < GROUP_TIMEOUT_S + 5


# ---- in this process -----------------------------------------------------------------------


def test_distributed_without_a_process_group_says_how_to_start_one():
    scores = make_scores(10, 3).scores
    with pytest.raises(RuntimeError, match="init_process_group"):
        sinklabel.sinkhorn(scores, 3, distributed=True)
    with pytest.raises(RuntimeError, match="init_process_group"):
        sinklabel.SinkhornLabeler(3, distributed=True).fit(scores)


def test_distributed_without_torch_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.distributed", None)
    with pytest.raises(ImportError, match=r"pip install 'sinklabel\[torch\]'"):
        sinklabel.sinkhorn(make_scores(10, 3).scores, 3, distributed=True)


def test_importing_sinklabel_distributed_does_not_import_torch():
    code = "import sys, sinklabel, sinklabel.distributed; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=os.path.dirname(os.path.dirname(__file__)))
    assert out.stdout.strip() == "False"


def _exact_gather_cases(rank: int, world: int) -> list[tuple]:
    """Rank 0 cannot allocate the contested rows; then a solve on the same group; then tied
    rows (a zero-initialised head) past rank 0's limit, and float16 rows sent as they are;
    then rank 1's streamed source fails to read."""
    from sinklabel import _distributed_exact, distributed
    from sinklabel.sources import CallableSource

    scores = _shard(FLAT[:239], [80, 90, 69], rank)
    outcomes = []
    allocate = distributed._root_table
    if rank == 0:
        def out_of_memory(counts, block):
            raise MemoryError("no room for the contested rows")

        distributed._root_table = out_of_memory
    start = time.monotonic()
    outcomes.append((*_caught(sinklabel.sinkhorn, scores, 6, balance="exact",
                              distributed=True), time.monotonic() - start))
    distributed._root_table = allocate
    result = sinklabel.sinkhorn(scores, 6, balance="exact", distributed=True)
    outcomes.append(("ok", int(result.label_counts.sum()), result.certificate.optimal))

    _distributed_exact.MAX_CONTESTED_FRACTION = 0.0
    _distributed_exact.SMALL_BYTES = 40 * 6 * 8  # 40 rows of float64, of 240
    tied = sinklabel.sinkhorn(np.full((80, 6), -np.log(6.0)), 6, balance="exact",
                              distributed=True)
    outcomes.append(("ok", tied.label_counts.tolist(), tied.certificate.optimal))
    _distributed_exact.SMALL_BYTES = 256 << 20
    half = _shard(PEAKED, [0, 17, 223], rank).astype(np.float16)
    sent = []
    gather = distributed.TorchCollective.gather_rows

    def recorded(self, block):
        sent.append(block.dtype.name)
        return gather(self, block)

    distributed.TorchCollective.gather_rows = recorded
    result = sinklabel.sinkhorn(half, 6, balance="exact", distributed=True)
    outcomes.append(("ok", np.asarray(result.labels), result.certificate.optimal, set(sent)))

    def unreadable(start, stop):
        raise OSError("disk gone")

    source = CallableSource(unreadable if rank == 1 else lambda a, b: scores[a:b],
                            scores.shape, "float64")
    outcomes.append(_caught(sinklabel.sinkhorn, source, 6, distributed=True))
    return outcomes


@pytest.mark.filterwarnings("ignore:.*labels received no points:UserWarning")
def test_exact_balance_rank_0_out_of_memory_gathering_rows_stops_every_rank(tmp_path):
    per_rank = _values_of_every_rank(tmp_path, 3, _exact_gather_cases)
    cases = list(zip(*per_rank, strict=True))
    failed = cases[0]
    assert failed[0][:3] == ("error", "MemoryError", "no room for the contested rows"), failed
    for rank in (1, 2):
        assert failed[rank][:2] == ("error", RankFailedError.__name__), failed
        assert "rank 0 (MemoryError) failed during the solve" in failed[rank][2]
        assert failed[rank][3] < GROUP_TIMEOUT_S / 2  # stopped by the flag, not a timeout
    assert cases[1] == (("ok", 239, True),) * 3  # the group is still in step
    assert cases[2] == (("ok", [40] * 6, True),) * 3  # tied rows: exact sizes, optimal
    labels = np.concatenate([case[1] for case in cases[3]])
    assert all(case[2] and case[3] == {"float16"} for case in cases[3]), cases[3]
    half = PEAKED.astype(np.float16)
    single = sinklabel.sinkhorn(half, 6, balance="exact")
    assert float(half[np.arange(240), labels].astype(np.float64).sum()) == pytest.approx(
        -single.certificate.primal, rel=1e-9)
    unreadable = cases[4]
    assert unreadable[1][:2] == ("error", "SourceError") and "disk gone" in unreadable[1][2]
    for rank in (0, 2):
        assert "rank 1 (OSError) failed during the solve" in unreadable[rank][2], unreadable
