"""Distributed solves as a user meets them: older torch releases, and what each rank sees.

The ranks run as in test_distributed.py (gloo on loopback, forked from a server that imported
torch once).
"""

from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
from test_distributed import _values_of_every_rank, dist

import sinklabel
from sinklabel.datasets import make_scores

SCORES = make_scores(61, 4, regime="flat", seed=5, dtype=np.float64).scores


def _torch_2_5_point_to_point() -> None:
    """``send`` and ``recv`` as torch 2.1 to 2.5 have them: peers by global rank only (the
    ``group_dst``/``group_src`` keywords came in torch 2.6)."""
    send, recv = dist.send, dist.recv

    def old_send(tensor, dst, group=None, tag=0):
        return send(tensor, dst=dst, group=group, tag=tag)

    def old_recv(tensor, src=None, group=None, tag=0):
        return recv(tensor, src=src, group=group, tag=tag)

    dist.send, dist.recv = old_send, old_recv


def _subgroup_exact_on_old_torch(rank: int, world: int) -> np.ndarray | None:
    _torch_2_5_point_to_point()
    group = dist.new_group([1, 2])  # its rank 0, which receives the rows, is global rank 1
    if rank == 0:
        return None
    rows = SCORES[:30] if rank == 1 else SCORES[30:]
    return np.asarray(sinklabel.sinkhorn(rows, 4, balance="exact", process_group=group).labels)


def test_exact_balance_sends_rows_with_the_point_to_point_calls_of_older_torch(tmp_path):
    """pyproject allows torch 2.1: sending the contested rows by ``group_dst`` raised
    TypeError on every rank before torch 2.6."""
    per_rank = _values_of_every_rank(tmp_path, 3, _subgroup_exact_on_old_torch)
    labels = np.concatenate(per_rank[1:])
    single = sinklabel.sinkhorn(SCORES, 4, balance="exact")
    assert float(SCORES[np.arange(61), labels].sum()) == pytest.approx(
        -single.certificate.primal, rel=1e-12)


def _shards_as_a_user_has_them(rank: int, world: int) -> dict:
    """Fewer rows than labels over both ranks, rank 1 without any; a progress bar asked of
    every rank; each rank's rows labelled again with the shared potentials."""
    rows = SCORES[:3, :] if rank == 0 else SCORES[:0, :]
    bar = io.StringIO()
    with contextlib.redirect_stderr(bar):
        result = sinklabel.sinkhorn(rows, 4, progress=True,
                                    distributed=True)
    return {"labels": np.asarray(result.labels), "potentials": result.potentials,
            "predicted": np.asarray(result.predict(rows)) if len(rows) else None,
            "bar": bar.getvalue()}


def test_few_rows_an_empty_rank_and_one_progress_bar(tmp_path):
    first, second = _values_of_every_rank(tmp_path, 2, _shards_as_a_user_has_them)
    single = sinklabel.sinkhorn(SCORES[:3], 4)
    np.testing.assert_array_equal(first["labels"], single.labels)
    assert second["labels"].shape == (0,)
    np.testing.assert_allclose(first["potentials"], single.potentials, atol=1e-9)
    np.testing.assert_array_equal(second["potentials"], first["potentials"])
    np.testing.assert_array_equal(first["predicted"], first["labels"])
    assert first["bar"] and not second["bar"]  # drawn by rank 0 only


BAD_OPTION_SETS = [
    {"balance": "bogus", "lam": -1.0},
    {"tol": 0.0, "label_weights": [1.0, 0.0, 1.0]},
    {"init": [1e30, 0.0, 0.0], "max_iter": 0},
    {"cache": "yes", "progress": "no"},
    {"init": [1e30, 0.0, 0.0]},
]


@pytest.mark.parametrize("bad", BAD_OPTION_SETS)
def test_a_rank_refuses_bad_options_as_one_process_does_before_reading(bad, monkeypatch):
    """One check of the options for both, so the error named first cannot drift apart, and
    a warm start too large for float32 is refused before the check pass reads the scores."""
    from sinklabel import api, distributed

    def no_pass(*args, **kwargs):
        raise AssertionError("the scores were read before the bad option was named")

    monkeypatch.setattr(api, "check_scores", no_pass)
    logp = make_scores(30, 3, seed=0).scores
    options = {"lam": 25.0, "label_weights": None, "tol": 1e-3, "max_iter": 100, "init": None,
               "chunk_size": None, "memory_limit": None, "backend": "numpy", "balance": None,
               "cache": False, "progress": False} | bad
    with pytest.raises((TypeError, ValueError)) as alone:
        sinklabel.sinkhorn(logp, 3, **options)
    with pytest.raises((TypeError, ValueError)) as rank:
        distributed._check_local(logp, 3, *[options[name] for name in (
            "lam", "label_weights", "tol", "max_iter", "init", "chunk_size", "memory_limit",
            "backend", "balance", "cache", "progress")])
    assert str(rank.value) == str(alone.value)
