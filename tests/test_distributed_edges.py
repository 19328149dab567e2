"""Edges of the distributed solve: what one rank's rows look like, what they are held in,
and the certificate and exact balancing at their limits.

Multi-rank scenarios run as in test_distributed.py (gloo on loopback, forked from a server
that imported torch once); the oracle is one process on the concatenated rows, or
scipy's linear_sum_assignment on label columns repeated to their sizes.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment
from test_distributed import _caught, _shard, _summary, _values_of_every_rank

import sinklabel
from sinklabel import _distributed_exact
from sinklabel.collective import LOCAL
from sinklabel.datasets import make_scores
from sinklabel.kernels import resolve_kernel
from sinklabel.sources import as_source

torch = pytest.importorskip("torch")

K = 5
N = 90
PEAKED = make_scores(N, K, regime="peaked", seed=8, margin=3.0, dtype=np.float64).scores
FLAT = make_scores(N, K, regime="flat", seed=7, dtype=np.float64).scores
#: Logits of both signs: rank by rank, the rows near +1e6 and those near -1e6 cancel.
SIGNED = np.where(np.arange(N)[:, None] < N // 2, 1e6, -1e6) + PEAKED
#: Rows per rank: the signs split between ranks, and an empty rank.
SIZES = {2: [45, 45], 3: [0, 45, 45]}
#: A label whose share rounds to 0 rows of 80: its size is exactly 0.
TINY_WEIGHTS = np.array([1.0, 1.0, 1.0, 1e-20])


def _optimum(scores: np.ndarray) -> np.ndarray:
    """Labels of the exactly balanced optimum (N / K rows per label), from an assignment
    of the rows to label columns repeated N / K times."""
    per_label = scores.shape[0] // scores.shape[1]
    _, columns = linear_sum_assignment(-np.repeat(scores, per_label, axis=1))
    return columns // per_label


def _cheapest_worse(scores: np.ndarray, labels: np.ndarray, at_least: float):
    """The swap of two rows' labels that costs least, but at least ``at_least``: the labels
    and how much worse they are."""
    rows = np.arange(scores.shape[0])
    own = scores[rows, labels]
    swapped = scores[:, labels]  # [i, j]: row i at row j's label
    cost = own[:, None] + own[None, :] - swapped - swapped.T
    cost[cost < at_least] = np.inf
    i, j = np.unravel_index(np.argmin(cost), cost.shape)
    worse = labels.copy()
    worse[i], worse[j] = labels[j], labels[i]
    return worse, float(cost[i, j])


def _mixed_dtypes(world: int) -> np.ndarray:
    """PEAKED as the ranks hold it in the mixed-dtype case: rank 0's rows rounded to
    float32."""
    mixed = PEAKED.copy()
    first = SIZES[world][0]
    mixed[:first] = mixed[:first].astype(np.float32)
    return mixed


def _tied_and_tiny(scores) -> sinklabel.SinkhornResult:
    """Constant rows (every label ties) with a label of size 0, stopped at the cold start
    (tol above its error) so that every price is 0 and every row is tied."""
    return sinklabel.sinkhorn(scores, 4, label_weights=TINY_WEIGHTS, tol=0.6, backend="numpy")


# ---- in this process ---------------------------------------------------------------------


def test_a_label_of_size_zero_takes_no_tied_rows(monkeypatch):
    """Its cap was min(lower, upper - 1) = -1, which dealt it -1 tied rows: the reduced
    problem then had room for one row in a label of size 0, and the labelling it returned
    failed its own certificate ("this is a bug")."""
    monkeypatch.setattr(_distributed_exact, "MAX_CONTESTED_FRACTION", 0.0)
    monkeypatch.setattr(_distributed_exact, "SMALL_BYTES", 10 * 4 * 8)  # 10 rows contested
    scores = np.zeros((80, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sinkhorn = _tied_and_tiny(scores)
    np.testing.assert_array_equal(sinkhorn.potentials, np.zeros(4))
    source = as_source(scores)
    result = _distributed_exact.balance_across_ranks(
        source, resolve_kernel("numpy", source.library), sinkhorn, 64, LOCAL)
    counts = np.bincount(np.asarray(result.labels), minlength=4)
    assert counts[3] == 0 and sorted(counts[:3]) == [26, 27, 27]  # floor or ceil of 80 / 3
    assert result.certificate.optimal


def test_sinkhorn_heads_refuses_distributed_by_name():
    """Heads share one read per pass; distributed=True is an option of sinkhorn alone."""
    with pytest.raises(TypeError, match="distributed"):
        sinklabel.sinkhorn_heads(np.zeros((4, 6)), [3, 3], distributed=True)


# ---- across ranks ------------------------------------------------------------------------


def _edge_cases(rank: int, world: int, optimum: np.ndarray, worse: np.ndarray,
                prices: np.ndarray, optimum_mixed: np.ndarray, prices_mixed: np.ndarray) -> dict:
    warnings.simplefilter("ignore")  # argmax labels may leave a label empty
    sizes = SIZES[world]
    flat, peaked, signed = (_shard(scores, sizes, rank) for scores in (FLAT, PEAKED, SIGNED))
    out = {}
    solved = sinklabel.sinkhorn(flat, K, chunk_size=7, distributed=True)
    if len(flat):  # no rows: nothing to label (predict refuses empty input, as documented)
        out["local"] = (np.asarray(solved.predict(flat)), solved.soft_assignments(flat),
                        np.asarray(solved.labels))
    out["cache"] = _summary(sinklabel.sinkhorn(peaked, K, lam=10.0, distributed=True,
                                               cache=True, memory_limit="20KB"))
    mixed = torch.from_numpy(peaked) if rank == 0 else peaked
    out["mixed"] = _summary(sinklabel.sinkhorn(mixed, K, lam=10.0, distributed=True))
    out["mixed exact"] = np.asarray(sinklabel.sinkhorn(
        mixed, K, lam=10.0, distributed=True, balance="exact").labels)
    out["dtypes"] = _caught(sinklabel.sinkhorn, peaked.astype(np.float16 if rank == 0
                                                               else np.float32),
                            K, distributed=True)
    for name, labels in (("optimum", optimum), ("worse", worse)):
        for chunk_size in (1, None):
            # As a list on one pass: an empty rank's [] reads as float64, still no labels.
            mine = _shard(labels, sizes, rank)
            out[name, chunk_size] = sinklabel.duality_gap(
                signed, mine.tolist() if chunk_size == 1 else mine, prices,
                chunk_size=chunk_size if rank == world - 1 else 7, distributed=True)
    # float32 rows on rank 0, float64 on the others: the certificate takes both
    mixed_rows = _shard(PEAKED, sizes, rank)
    out["mixed dtypes"] = sinklabel.duality_gap(
        mixed_rows.astype(np.float32) if rank == 0 else mixed_rows,
        _shard(optimum_mixed, sizes, rank), prices_mixed, distributed=True)
    exact = sinklabel.sinkhorn(signed, K, lam=10.0, distributed=True, balance="exact")
    out["signed exact"] = (np.asarray(exact.labels), exact.certificate)
    labeler = sinklabel.SinkhornLabeler(K, lam=10.0, distributed=True)
    out["epochs"] = []
    for epoch in range(3):
        labeler.partial_fit(_shard(PEAKED + 0.3 * epoch * FLAT, sizes, rank))
        out["epochs"].append((labeler.n_iter_, labeler.potentials_, np.asarray(labeler.labels_)))
    # 80 tied rows over two ranks (none on a third), 10 contested at most
    _distributed_exact.MAX_CONTESTED_FRACTION, _distributed_exact.SMALL_BYTES = 0.0, 320
    out["tied"] = _caught(lambda: np.asarray(sinklabel.sinkhorn(
        np.zeros((40 if rank < 2 else 0, 4)), 4, label_weights=TINY_WEIGHTS, tol=0.6,
        backend="numpy", balance="exact", distributed=True).labels))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_edges_across_ranks_match_one_process(tmp_path, world):
    optimum = _optimum(SIGNED)
    worse, extra = _cheapest_worse(SIGNED, optimum, at_least=1e-3)
    prices = sinklabel.solve_exact(SIGNED, K, method="highs").prices
    mixed = _mixed_dtypes(world)
    optimum_mixed = _optimum(mixed)
    prices_mixed = sinklabel.solve_exact(mixed, K, method="highs").prices
    per_rank = _values_of_every_rank(tmp_path, world, _edge_cases, optimum, worse, prices,
                                     optimum_mixed, prices_mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        flat = sinklabel.sinkhorn(FLAT, K, chunk_size=7)
        peaked = sinklabel.sinkhorn(PEAKED, K, lam=10.0)

    # predict and soft_assignments are local: each rank's rows as one process labels them
    local = [ranked["local"] for ranked in per_rank if "local" in ranked]
    np.testing.assert_array_equal(np.concatenate([part[0] for part in local]), flat.labels)
    np.testing.assert_array_equal(np.concatenate([part[2] for part in local]), flat.labels)
    np.testing.assert_allclose(np.concatenate([part[1] for part in local]),
                               flat.soft_assignments(FLAT), atol=1e-12)

    # a cache within a small memory_limit, and a torch tensor beside NumPy arrays
    for case in ("cache", "mixed"):
        runs = [ranked[case] for ranked in per_rank]
        np.testing.assert_allclose(runs[0]["potentials"], peaked.potentials, atol=1e-9)
        np.testing.assert_array_equal(np.concatenate([run["labels"] for run in runs]),
                                      peaked.labels)
    single = sinklabel.sinkhorn(PEAKED, K, lam=10.0, balance="exact")
    labels = np.concatenate([ranked["mixed exact"] for ranked in per_rank])
    assert PEAKED[np.arange(N), labels].sum() == pytest.approx(-single.certificate.primal,
                                                                rel=1e-12)
    # float16 on one rank, float32 on another: the same refusal everywhere
    refusals = [ranked["dtypes"] for ranked in per_rank]
    assert refusals.count(refusals[0]) == world and refusals[0][1] == "ValueError"
    assert "ranks disagree on dtype: dtype=float16 on rank 0" in refusals[0][2]

    # Cancelling logits split across ranks, any chunking: the optimum is certified, a
    # labelling worse by a thousandth is not, by its full gap.
    for chunk_size in (1, None):
        certificates = [ranked["optimum", chunk_size] for ranked in per_rank]
        assert certificates.count(certificates[0]) == world
        assert certificates[0].optimal, certificates[0]
        worse_one = per_rank[0]["worse", chunk_size]
        assert not worse_one.optimal and worse_one.feasible
        assert worse_one.gap == pytest.approx(extra, abs=2 * worse_one.rounding)
    certificates = [ranked["mixed dtypes"] for ranked in per_rank]
    assert certificates.count(certificates[0]) == world
    assert certificates[0].optimal, certificates[0]
    assert certificates[0].primal == pytest.approx(-mixed[np.arange(N), optimum_mixed].sum(),
                                                   rel=1e-12)
    labels = np.concatenate([ranked["signed exact"][0] for ranked in per_rank])
    assert per_rank[0]["signed exact"][1].optimal
    assert SIGNED[np.arange(N), labels].sum() == pytest.approx(
        SIGNED[np.arange(N), optimum].sum(), abs=1e-6)

    # warm starts across epochs follow one process's partial_fit
    labeler = sinklabel.SinkhornLabeler(K, lam=10.0)
    for epoch in range(3):
        labeler.partial_fit(PEAKED + 0.3 * epoch * FLAT)
        n_iter, potentials, _ = per_rank[0]["epochs"][epoch]
        assert n_iter == labeler.n_iter_
        np.testing.assert_allclose(potentials, labeler.potentials_, atol=1e-9)
        np.testing.assert_array_equal(
            np.concatenate([ranked["epochs"][epoch][2] for ranked in per_rank]),
            labeler.labels_)

    # tied rows and a label of size 0, past rank 0's limit: the tied rows settle elsewhere
    tied = [ranked["tied"] for ranked in per_rank]
    assert all(outcome[0] == "ok" for outcome in tied), tied
    counts = np.bincount(np.concatenate([outcome[1] for outcome in tied]), minlength=4)
    assert counts[3] == 0 and sorted(counts[:3]) == [26, 27, 27]


@pytest.mark.parametrize("options, told", [
    ({"distributed": True}, True), ({"process_group": "the group"}, True), ({}, False),
])
def test_a_labeler_that_cannot_read_its_scores_stops_its_peers(options, told, monkeypatch,
                                                               tmp_path):
    """The labeler reads K from the scores before the solve: a rank that fails there tells
    the others (waiting in the solve's first exchange) through fail_with_peers, whether it
    was given distributed=True or a process group; a single process just raises."""
    from sinklabel import distributed

    groups = []

    def recorded(error, process_group=None):
        groups.append(process_group)
        raise error

    monkeypatch.setattr(distributed, "fail_with_peers", recorded)
    with pytest.raises(FileNotFoundError):
        sinklabel.SinkhornLabeler(**options).fit(tmp_path / "missing.npy")
    assert groups == ([options.get("process_group")] if told else [])
