"""Smoke tests of the examples: each fast mode runs and shows the property it is about."""

from __future__ import annotations

import importlib.util
import itertools
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import threads

sklearn_metrics = pytest.importorskip("sklearn.metrics")
normalized_mutual_info_score = sklearn_metrics.normalized_mutual_info_score
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def load_example(name: str):
    """Import ``examples/<name>.py`` by path: the examples are scripts, not an installed package."""
    module_name = f"sinklabel_example_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def self_label():
    pytest.importorskip("torch")
    return load_example("self_label_digits")


@pytest.fixture(scope="module")
def fast_report(self_label, tmp_path_factory):
    """One fast run shared by the tests below, on one torch thread: convolutions this small
    gain nothing from a second thread, and on a busy machine its spin-waits cost 3x."""
    out = tmp_path_factory.mktemp("plots") / "self_label.png"
    with threads("torch", 1):
        report = self_label.main(["--fast", "--seeds", "1", "--out", str(out)])
    return report, out


def chance_nmi(truth: np.ndarray, labels: np.ndarray, n: int = 20) -> float:
    """The NMI the same label counts reach when they carry no information (shuffled)."""
    rng = np.random.default_rng(0)
    return max(normalized_mutual_info_score(truth, rng.permutation(labels)) for _ in range(n))


def test_schedule_is_the_papers(self_label):
    epochs, m = 40, 7
    expected = sorted({round(epochs * (i / (m - 1)) ** 2) for i in range(m)})
    schedule = self_label.label_update_epochs(epochs, m)
    assert schedule == expected
    assert schedule[0] == 0 and schedule[-1] == epochs
    gaps = np.diff(schedule)
    assert np.all(np.diff(gaps) >= 0)  # denser early, when the network changes fastest


def test_matched_accuracy_is_the_best_permutation(self_label):
    rng = np.random.default_rng(3)
    truth = rng.integers(0, 4, 60)
    labels = np.where(rng.random(60) < 0.7, (truth + 1) % 4, rng.integers(0, 4, 60))
    best = max(np.mean(np.asarray(perm)[labels] == truth)
               for perm in itertools.permutations(range(4)))
    assert self_label.matched_accuracy(labels, truth) == pytest.approx(best)


def test_self_labels_are_balanced_and_informative(self_label, fast_report):
    report, _ = fast_report
    run, cfg = report.runs[0], self_label.FAST
    n, k = run.labels.shape[1], cfg.n_clusters
    assert run.labels.shape == (cfg.n_heads, cfg.n_samples)
    for labels in run.labels:
        # The Sinkhorn plan's label marginal is within tol (L1) of uniform; the hard labels
        # round the plan's split rows, so allow about one misplaced row per label on top.
        proportions = np.bincount(labels, minlength=k) / n
        assert np.abs(proportions - 1 / k).sum() <= cfg.tol + 2 * k / n
    from sklearn.datasets import load_digits

    truth = load_digits().target[:n]
    nmi = normalized_mutual_info_score(truth, run.labels[0])
    assert nmi == pytest.approx(run.nmi[-1], abs=0.2)
    assert nmi > chance_nmi(truth, run.labels[0]) + 0.2
    assert len(run.nmi) == len(run.epochs) == len(self_label.label_update_epochs(
        cfg.epochs, cfg.n_updates))
    assert len(run.n_iter) == len(run.epochs) and all(len(h) == cfg.n_heads for h in run.n_iter)


def test_relabel_takes_tensors_and_warm_starts(self_label):
    """The label step passes torch tensors straight through and reuses each head's potentials:
    on the same peaked scores a second, warm-started solve has (almost) nothing left to do."""
    import torch

    from sinklabel import SinkhornLabeler

    generator = torch.Generator().manual_seed(0)
    n, k, n_heads = 600, 10, 2
    # Peaked and unbalanced: every row is confident, and label 0 is most rows' favourite.
    logits = 8 * torch.randn(n_heads, n, k, generator=generator)
    logits[:, :, 0] += 10.0
    logp = list(torch.log_softmax(logits, dim=-1))
    labelers = [SinkhornLabeler(k) for _ in range(n_heads)]
    first = self_label.relabel(logp, labelers)
    cold = [lab.n_iter_ for lab in labelers]
    assert isinstance(first, torch.Tensor) and first.shape == (n_heads, n)
    assert first.device == logp[0].device
    for labels, lab in zip(first, labelers, strict=True):
        counts = torch.bincount(labels, minlength=k)
        assert lab.converged_
        assert counts.max() - counts.min() <= 0.05 * n / k + 2
    argmax = self_label.relabel(logp, None)
    assert torch.equal(argmax, torch.stack([p.argmax(dim=1) for p in logp]))
    assert torch.bincount(argmax[0], minlength=k).max() > 2 * n / k  # unbalanced without OT
    second = self_label.relabel(logp, labelers)
    assert all(lab.n_iter_ <= 2 < c for lab, c in zip(labelers, cold, strict=True))
    assert torch.equal(second, first)


def test_ablation_collapses(self_label, fast_report):
    report, _ = fast_report
    balanced, argmax = report.runs[0].labels, report.ablations[0].labels
    k = self_label.FAST.n_clusters
    largest = [np.bincount(y, minlength=k).max() / len(y) for y in argmax]
    assert min(largest) > 2 / k  # some cluster holds more than twice its share
    assert self_label.largest_cluster_ratio(argmax, k) > 2 * self_label.largest_cluster_ratio(
        balanced, k)
    used = [len(np.unique(y)) for y in argmax]
    assert max(used) < k  # clusters have vanished


def test_report_table_and_plot(fast_report):
    report, out = fast_report
    for name, values in report.table.items():
        assert len(values) == 1 and np.isfinite(values[0]), name
    assert 0.6 < report.table["k-means raw pixels NMI"][0] < 0.9
    assert out.stat().st_size > 10_000
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def kmeans():
    return load_example("balanced_kmeans")


def test_balanced_kmeans_beats_kmeans_on_size_spread(kmeans):
    table = kmeans.main(["--fast"])
    ours, theirs = table["balanced k-means"], table["KMeans"]
    assert ours["size spread"][0] < theirs["size spread"][0] / 5
    assert ours["NMI"][0] > 0.6


def test_balanced_kmeans_equalises_unequal_blobs(kmeans):
    rng = np.random.default_rng(0)
    sizes, k = [300, 60, 40], 3
    centers = np.array([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]])
    x = np.concatenate([c + rng.standard_normal((s, 2)) for c, s in zip(centers, sizes,
                                                                       strict=True)])
    result = kmeans.balanced_kmeans(x, k, seed=0)
    counts = np.bincount(result.labels, minlength=k)
    assert counts.max() - counts.min() <= 0.01 * len(x) + 2
    assert np.allclose(result.centers, [x[result.labels == j].mean(0) for j in range(k)])


def test_balanced_kmeans_recovers_equal_blobs(kmeans):
    rng = np.random.default_rng(1)
    centers = np.array([[0.0, 0.0], [8.0, 0.0], [0.0, 8.0], [8.0, 8.0]])
    truth = np.repeat(np.arange(4), 50)
    x = centers[truth] + rng.standard_normal((200, 2))
    result = kmeans.balanced_kmeans(x, 4, seed=2)
    assert normalized_mutual_info_score(truth, result.labels) == pytest.approx(1.0)
    assert result.n_iter < 100


def test_balanced_kmeans_takes_at_least_one_iteration(kmeans):
    """With none it would have no labelling to return: asked for, it says so."""
    x = np.random.default_rng(3).standard_normal((20, 2))
    with pytest.raises(ValueError, match="max_iter must be at least 1, got 0"):
        kmeans.balanced_kmeans(x, 2, max_iter=0)
    assert kmeans.balanced_kmeans(x, 2, max_iter=1).n_iter == 1


def test_squared_distances_match_direct_formula(kmeans):
    rng = np.random.default_rng(2)
    x, c = rng.standard_normal((30, 5)), rng.standard_normal((4, 5))
    direct = ((x[:, None, :] - c[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(kmeans.squared_distances(x, c), direct, atol=1e-10)


def test_torchrun_example_on_two_gloo_ranks():
    """The launch example as users run it: torchrun, two CPU ranks, labels exactly balanced."""
    import os
    import re
    import subprocess

    pytest.importorskip("torch.distributed")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "",
           "PYTHONPATH": os.pathsep.join([str(EXAMPLES.parent), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(EXAMPLES / "distributed_torchrun.py"), "--rows", "3001", "--labels", "20",
         "--exact"],
        capture_output=True, text=True, timeout=240, env=env,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    digests = re.findall(r"potentials sha256 ([0-9a-f]{12})", run.stdout)  # lines may interleave
    assert len(digests) == 2 and digests[0] == digests[1]  # identical potentials on both ranks
    sizes = re.search(r"exactly balanced: rows per label (\d+)\.\.(\d+), optimal True", run.stdout)
    assert sizes, run.stdout
    assert (int(sizes[1]), int(sizes[2])) == (150, 151)  # 3001 rows over 20 labels


@pytest.mark.parametrize(("argv", "message"), [
    (["--rows", "10", "--labels", "20", "--exact"], "needs --rows >= --labels"),
    (["--rows", "0"], "must be at least 1"),
])
def test_torchrun_example_refuses_bad_sizes_before_joining_the_group(argv, message, capsys,
                                                                   monkeypatch):
    """--exact with fewer rows than labels failed on rank 0 after the whole first solve."""
    pytest.importorskip("torch.distributed")
    example = load_example("distributed_torchrun")
    monkeypatch.setattr(example.dist, "init_process_group",
                        lambda *args, **kwargs: pytest.fail("joined the group"))
    with pytest.raises(SystemExit) as stopped:
        example.main(argv)
    assert stopped.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "-1"], ["--epochs", "-1"]])
def test_self_label_bad_options_stop_before_training(self_label, argv, capsys, monkeypatch):
    monkeypatch.setattr(self_label, "run_all", lambda *args: pytest.fail("trained"))
    with pytest.raises(SystemExit) as stopped:
        self_label.main(["--fast", *argv])
    assert stopped.value.code == 2
    assert argv[0] in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--seeds", "0"], ["--seeds", "-2"]])
def test_balanced_kmeans_bad_options_stop_before_clustering(kmeans, argv, capsys, monkeypatch):
    monkeypatch.setattr(kmeans, "compare", lambda *args: pytest.fail("clustered"))
    with pytest.raises(SystemExit) as stopped:
        kmeans.main(argv)
    assert stopped.value.code == 2
    assert "--seeds" in capsys.readouterr().err


def test_balanced_kmeans_clusters_points_that_sit_on_centres(kmeans):
    """As many distinct points as clusters: every point is a k-means++ centre, the nearest-centre
    temperature is 0, and the scores must not become NaN (they did: -0/0)."""
    rng = np.random.default_rng(0)
    truth = np.repeat(np.arange(5), 20)
    x = rng.standard_normal((5, 2))[truth]
    result = kmeans.balanced_kmeans(x, 5, seed=0)
    assert np.isfinite(result.temperature) and result.temperature > 0
    assert normalized_mutual_info_score(truth, result.labels) == pytest.approx(1.0)
    np.testing.assert_array_equal(np.bincount(result.labels, minlength=5), 20)


@pytest.mark.parametrize("missing", ["matplotlib", "folder"])
def test_self_label_unwritable_plot_stops_before_training(self_label, missing, tmp_path, capsys,
                                                          monkeypatch):
    """A plot that cannot be saved is found before the minutes of training, not after them."""
    monkeypatch.setattr(self_label, "run_all", lambda *args: pytest.fail("trained"))
    out = tmp_path / "plot.png"
    if missing == "matplotlib":
        monkeypatch.setitem(sys.modules, "matplotlib", None)
    else:
        out = tmp_path / "no such folder" / "plot.png"
    with pytest.raises(SystemExit) as stopped:
        self_label.main(["--fast", "--out", str(out)])
    assert stopped.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["plot.xyz", "plot", "."])
def test_self_label_plot_name_matplotlib_cannot_write_stops_before_training(
        self_label, name, tmp_path, capsys, monkeypatch):
    """An unknown extension failed in ``savefig`` after the training; no extension saved to
    ``plot.png`` while the script said ``plot``; a folder name did either."""
    pytest.importorskip("matplotlib")
    monkeypatch.setattr(self_label, "run_all", lambda *args: pytest.fail("trained"))
    with pytest.raises(SystemExit) as stopped:
        self_label.main(["--fast", "--out", str(tmp_path / name)])
    assert stopped.value.code == 2
    assert "--out" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["plot.png", "plot.PDF", "plot.svg"])
def test_self_label_plot_names_matplotlib_writes_are_accepted(self_label, name, tmp_path):
    pytest.importorskip("matplotlib")
    assert self_label.plot_problem(str(tmp_path / name)) is None


@pytest.mark.filterwarnings("ignore:.*labels received no points")
def test_balanced_kmeans_survives_clusters_left_empty_by_tied_points(kmeans):
    """Fewer distinct points than clusters: identical rows all go to one label, two clusters
    stay empty, and their mean of nothing (NaN) made the next solve raise on NaN scores."""
    truth = np.repeat([0, 1], 50)
    x = np.array([[0.0, 0.0], [1.0, 1.0]])[truth]
    result = kmeans.balanced_kmeans(x, 4, seed=0)
    assert np.all(np.isfinite(result.centers))
    assert normalized_mutual_info_score(truth, result.labels) == pytest.approx(1.0)
