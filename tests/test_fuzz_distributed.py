"""Distributed solves over streamed shards, differentially: every rank reads its rows through a
different source kind, backend and chunking, and the ranks together give the single-process
solve of the concatenated rows; a rank whose input is bad stops every rank, without a hang.

The ranks run as in test_distributed.py (gloo on loopback, forked from a server that imported
torch once); each scenario starts them once and runs all its cases in them.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_distributed import GROUP_TIMEOUT_S, _caught, _shard, _summary, _values_of_every_rank

import sinklabel
from sinklabel.datasets import make_scores
from sinklabel.distributed import RankFailedError, _no_labels
from sinklabel.kernels import resolve_kernel
from sinklabel.sources import CallableSource, checked

h5py = pytest.importorskip("h5py")

K = 5
#: Scaled so that lam=25 solves in tens of passes; float64 so that the chunking of each rank
#: moves the potentials by float64 rounding only.
FLAT = 0.2 * make_scores(150, K, regime="flat", seed=4, dtype=np.float64).scores
PEAKED = 0.2 * make_scores(150, K, regime="peaked", seed=3, dtype=np.float64).scores
#: Rows per rank: uneven, with empty ranks and ranks of a single row.
SPLITS = {2: ([0, 150], [149, 1]), 3: ([50, 0, 100], [1, 148, 1])}
KINDS = ("npy", "h5py", "callable", "array")


def _streamed(kind: str, rows: np.ndarray, path: Path):
    """This rank's rows through one source kind (a file written for it under ``path``)."""
    if kind == "npy":
        np.save(path.with_suffix(".npy"), rows)
        return path.with_suffix(".npy")
    if kind == "h5py":
        file = h5py.File(path.with_suffix(".h5"), "w")
        if not len(rows):  # HDF5 chunks need at least one row
            return file.create_dataset("s", data=rows)
        return file.create_dataset("s", data=rows, chunks=(max(1, len(rows) // 2), K),
                                   compression="gzip")
    if kind == "callable":
        return CallableSource(lambda a, b: rows[a:b], rows.shape, rows.dtype)
    return rows


def _settings(case: int, rank: int) -> dict:
    """Source kind, backend, chunking and cache of one case: they differ between ranks."""
    turn = case + rank
    backend = ("numpy", "numba")[turn % 2]
    chunking = ({"chunk_size": (1, 3, 7, 1000)[turn % 4]} if case % 2 == 0
                else {"memory_limit": 40_000 + 999 * rank})
    return {"kind": KINDS[turn % len(KINDS)], "backend": backend,
            "cache": backend == "numba" and case >= 2, **chunking}


def _streamed_cases(rank: int, world: int, directory: str) -> dict:
    out = {}
    for name, scores, sizes in (("flat", FLAT, SPLITS[world][0]),
                                ("peaked", PEAKED, SPLITS[world][1])):
        rows = _shard(scores, sizes, rank)
        for case in range(len(KINDS)):
            options = _settings(case, rank)
            source = _streamed(options.pop("kind"), rows,
                               Path(directory) / f"{name}-{case}-rank{rank}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # an argmax may leave a label empty
                plain = sinklabel.sinkhorn(source, K, distributed=True, **options)
                exact = sinklabel.sinkhorn(source, K, distributed=True, balance="exact",
                                           **options)
            out[name, case] = {**_summary(plain), "exact": np.asarray(exact.labels),
                               "exact counts": exact.label_counts,
                               "primal": exact.certificate.primal,
                               "optimal": exact.certificate.optimal}
            if hasattr(source, "file"):
                source.file.close()
    return out


@pytest.mark.parametrize("world", [2, 3])
def test_streamed_shards_give_the_single_process_solve(tmp_path, world):
    per_rank = _values_of_every_rank(tmp_path, world, _streamed_cases, str(tmp_path))
    for (name, case), _ in per_rank[0].items():
        scores = FLAT if name == "flat" else PEAKED
        runs = [ranked[name, case] for ranked in per_rank]
        reference = sinklabel.sinkhorn(scores, K)
        for run in runs:  # the same reductions, so the same numbers, on every rank
            np.testing.assert_array_equal(run["potentials"], runs[0]["potentials"])
            np.testing.assert_array_equal(run["counts"], runs[0]["counts"])
        np.testing.assert_allclose(runs[0]["potentials"], reference.potentials, atol=1e-8)
        labels = np.concatenate([run["labels"] for run in runs])
        np.testing.assert_array_equal(labels, reference.labels)
        np.testing.assert_array_equal(runs[0]["counts"], np.bincount(labels, minlength=K))

        exact = sinklabel.sinkhorn(scores, K, balance="exact")
        labels = np.concatenate([run["exact"] for run in runs])
        assert labels.shape == (scores.shape[0],)
        np.testing.assert_array_equal(np.bincount(labels, minlength=K), exact.label_counts)
        np.testing.assert_array_equal(runs[0]["exact counts"], exact.label_counts)
        assert all(run["optimal"] for run in runs)
        cost = -scores[np.arange(labels.size), labels].sum()  # the primal is a cost, C = -S
        assert cost == pytest.approx(exact.certificate.primal, rel=1e-12)
        assert runs[0]["primal"] == pytest.approx(exact.certificate.primal, rel=1e-12)


# ---- a rank whose input is bad: every rank raises, nobody waits --------------------------------


def _timed(call, *args, **kwargs) -> tuple:
    start = time.monotonic()
    return (*_caught(call, *args, **kwargs), time.monotonic() - start)


def _bad_input_cases(rank: int, world: int) -> list[tuple]:
    scores = FLAT[50 * rank:50 * rank + 50]
    labeler = sinklabel.SinkhornLabeler(distributed=True).fit(scores)
    nan = scores.copy()
    nan[37, 2] = np.nan
    return [
        # the estimator's own check, on one rank: a continued fit with another K
        _timed(labeler.partial_fit, scores[:, :4] if rank == 1 else scores),
        # K cannot be inferred on one rank
        _timed(sinklabel.SinkhornLabeler(distributed=True).fit,
               scores[:, 0] if rank == 1 else scores),
        # a NaN in a streamed block, found in the first pass of the solve itself
        _timed(sinklabel.sinkhorn,
               CallableSource(lambda a, b: nan[a:b], nan.shape, nan.dtype) if rank == 1
               else scores, K, chunk_size=16, distributed=True),
        # a function returning a block of the wrong shape, on rank 0
        _timed(sinklabel.sinkhorn,
               CallableSource(lambda a, b: scores[a:b, :4] if a >= 32 else scores[a:b],
                              scores.shape, scores.dtype) if rank == 0 else scores,
               K, chunk_size=16, distributed=True, balance="exact"),
        # and the group is still in step
        _caught(lambda: labeler.partial_fit(scores).result_.label_counts.sum()),
    ]


def test_a_rank_with_bad_input_stops_every_rank(tmp_path):
    per_rank = _values_of_every_rank(tmp_path, 2, _bad_input_cases)
    # (failing rank, its error, what it says, how the others name it)
    expected = [
        (1, "ValueError", "partial_fit continues the previous fit, which had 5 labels",
         "rank 1 (ValueError) failed checking its input"),
        (1, "ValueError", "logp must be 2-D (N, K) to infer n_labels",
         "rank 1 (ValueError) failed checking its input"),
        (1, "ValueError", "logp contains NaN (row 37)", "rank 1 (ValueError) failed during"),
        (0, "SourceError", "rows [32, 48) on pass 1: wrong shape: expected (16, 5), got (16, 4)",
         "rank 0 (RuntimeError) failed during"),
    ]
    for case, (bad, kind, message, named) in enumerate(expected):
        own, other = per_rank[bad][case], per_rank[1 - bad][case]
        assert own[:2] == ("error", kind) and message in own[2], own
        assert other[:2] == ("error", RankFailedError.__name__) and named in other[2], other
        assert other[3] < GROUP_TIMEOUT_S / 2  # told by the bad rank, not by a timeout
    assert per_rank[0][4] == per_rank[1][4] == ("ok", 100)


def test_a_rank_without_rows_labels_on_its_streams_device():
    """A rank with no rows never sees a block, so its empty labels take the device of the
    source underneath the checking layer (here the meta device stands in for a GPU)."""
    torch = pytest.importorskip("torch")
    from sinklabel.sources.device import DeviceStreamSource

    stream = DeviceStreamSource(np.zeros((0, K), np.float32), "meta")
    labels = _no_labels(checked(stream), resolve_kernel("auto", "torch"))
    assert labels.dtype == torch.int64 and labels.shape == (0,)
    assert labels.device.type == "meta"
    function = CallableSource(lambda a, b: None, (0, K), "float32", library="torch")
    assert isinstance(_no_labels(checked(function), resolve_kernel("auto", "torch")),
                      torch.Tensor)
