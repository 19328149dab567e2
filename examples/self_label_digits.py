"""Self-labelling a small conv net on scikit-learn's 8x8 digits, with no labels.

The loop of "Self-labelling via simultaneous clustering and representation learning"
(Asano et al., ICLR 2020): train the network with cross-entropy on its current pseudo-labels,
and now and then replace the pseudo-labels by the balanced assignment that agrees best with
the network's predictions (the Sinkhorn step, done here by ``sinklabel``). Several clustering
heads share one trunk; each has its own labels and its own warm-started potentials.

The true classes are used only to score the pseudo-labels (NMI, Hungarian-matched accuracy),
never for training. The ablation replaces the balanced step by a plain argmax and collapses.

    python examples/self_label_digits.py --seeds 3 --out self_label_digits.png
    python examples/self_label_digits.py --fast --seeds 1   # smoke test, ~11 CPU s (7 importing)
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score
from torch import nn

from sinklabel import SinkhornLabeler
from sinklabel.api import DEFAULT_LAM, DEFAULT_TOL


@dataclass
class Config:
    """Everything a run depends on; ``--fast`` swaps in a smaller one."""

    epochs: int = 20
    n_updates: int = 30  # M, the number of label optimisations
    n_heads: int = 5  # T, clustering heads sharing one trunk
    n_clusters: int = 10  # K
    width: int = 16  # channels of the first conv layer (then 2x, 4x)
    batch_size: int = 32
    lr: float = 3e-3
    lam: float = DEFAULT_LAM  # the paper's 25
    tol: float = DEFAULT_TOL  # L1 error of the label marginal at which the solve stops
    shift: float = 1.0  # pixels, uniform in [-shift, shift]
    rotate: float = 15.0  # degrees
    zoom: float = 0.1  # relative scale change
    noise: float = 0.1  # std of additive Gaussian noise (pixels in [0, 1])
    n_samples: int | None = None  # use only the first n images (fast mode)


FAST = Config(epochs=4, n_updates=4, n_heads=2, n_samples=600)


@dataclass
class Run:
    """What one training run produced, for the table and the plot."""

    epochs: list[int] = field(default_factory=list)  # when each label update happened
    nmi: list[float] = field(default_factory=list)  # mean over heads, at each update
    accuracy: list[float] = field(default_factory=list)
    labels: np.ndarray = field(  # (n_heads, N) final pseudo-labels
        default_factory=lambda: np.empty((0, 0), np.int64))
    features: np.ndarray = field(  # (N, d) trunk features of the clean images
        default_factory=lambda: np.empty((0, 0), np.float32))
    seconds: float = 0.0  # wall time of the run
    cpu_seconds: float = 0.0  # process time: steadier than wall time on a shared machine
    label_seconds: float = 0.0  # process time of the label steps (forward pass + Sinkhorn)
    sinkhorn_seconds: float = 0.0  # process time of the Sinkhorn solves alone
    n_iter: list[list[int]] = field(default_factory=list)  # passes per update, one per head


class Net(nn.Module):
    """A three-layer conv trunk and ``n_heads`` linear clustering heads on its features."""

    def __init__(self, n_heads: int, n_clusters: int, width: int):
        super().__init__()

        def block(c_in: int, c_out: int) -> list[nn.Module]:
            return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

        self.trunk = nn.Sequential(
            *block(1, width), *block(width, 2 * width), nn.MaxPool2d(2),
            *block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.heads = nn.ModuleList(nn.Linear(4 * width, n_clusters) for _ in range(n_heads))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        features = self.trunk(x)
        return features, [head(features) for head in self.heads]


def label_update_epochs(epochs: int, n_updates: int) -> list[int]:
    """Epochs at whose start the labels are re-optimised: t_i = (i / (M-1))^2 of training.

    The schedule of the paper's appendix A.1, dense early when the network changes fastest.
    An update at ``epochs`` happens after the last epoch and labels the trained network.
    """
    fractions = (np.arange(n_updates) / max(n_updates - 1, 1)) ** 2
    return sorted({int(round(t * epochs)) for t in fractions})


def augment(x: torch.Tensor, cfg: Config) -> torch.Tensor:
    """Random shift, rotation and zoom (an 8x8 random crop) plus Gaussian noise."""
    n = x.shape[0]

    def uniform(scale: float) -> torch.Tensor:
        return (2 * torch.rand(n, device=x.device) - 1) * scale

    angle = uniform(np.deg2rad(cfg.rotate))
    scale = 1 + uniform(cfg.zoom)
    shift = 2 * cfg.shift / x.shape[-1]  # affine_grid coordinates span [-1, 1]
    theta = torch.stack([
        torch.stack([scale * torch.cos(angle), -scale * torch.sin(angle), uniform(shift)], 1),
        torch.stack([scale * torch.sin(angle), scale * torch.cos(angle), uniform(shift)], 1),
    ], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    warped = F.grid_sample(x, grid, align_corners=False)
    return warped + cfg.noise * torch.randn_like(warped)


@torch.no_grad()
def predict(net: Net, images: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Trunk features and each head's log-probabilities on the clean images, on their device."""
    net.eval()
    features, logits = net(images)
    net.train()
    return features, [F.log_softmax(z, dim=1) for z in logits]


def matched_accuracy(labels: np.ndarray, truth: np.ndarray) -> float:
    """Accuracy after the best one-to-one matching of clusters to classes (Hungarian)."""
    k = int(max(labels.max(), truth.max())) + 1
    counts = np.zeros((k, k))
    np.add.at(counts, (labels, truth), 1)
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(truth))


def relabel(
    logp: list[torch.Tensor], labelers: list[SinkhornLabeler] | None
) -> torch.Tensor:
    """New pseudo-labels, shape (n_heads, N), on the scores' device: each head's balanced
    assignment by Sinkhorn.

    The log-probability tensors go to sinklabel as they are (CPU or CUDA; no copy to NumPy)
    and the labels come back as a tensor on the same device. ``partial_fit`` starts each
    head's solve from its previous potentials (the paper keeps alpha and beta between
    updates). ``labelers=None`` is the ablation: the plain argmax.
    """
    if labelers is None:
        return torch.stack([p.argmax(dim=1) for p in logp])
    return torch.stack([lab.partial_fit(p).labels_ for lab, p in zip(labelers, logp, strict=True)])


def train(
    images: torch.Tensor, truth: np.ndarray, cfg: Config, seed: int, *, balanced: bool = True
) -> Run:
    """Self-label from scratch; ``balanced=False`` is the ablation (argmax pseudo-labels
    after the first, balanced labelling)."""
    torch.manual_seed(seed)
    net = Net(cfg.n_heads, cfg.n_clusters, cfg.width).to(images.device)
    optimizer = torch.optim.Adam(net.parameters(), lr=cfg.lr)
    labelers = [SinkhornLabeler(cfg.n_clusters, lam=cfg.lam, tol=cfg.tol)
                for _ in range(cfg.n_heads)]
    updates = label_update_epochs(cfg.epochs, cfg.n_updates)
    run, start, cpu = Run(), time.perf_counter(), time.process_time()
    for epoch in range(cfg.epochs + 1):
        if epoch in updates:
            tic = time.process_time()
            _, logp = predict(net, images)
            solve = time.process_time()
            # The ablation starts from the same Sinkhorn labels, then takes plain argmaxes.
            sinkhorn = balanced or epoch == 0
            targets = relabel(logp, labelers if sinkhorn else None)
            done = time.process_time()
            run.label_seconds += done - tic
            if sinkhorn:
                run.sinkhorn_seconds += done - solve
                run.n_iter.append([lab.n_iter_ for lab in labelers])
            labels = targets.cpu().numpy()  # for scoring only
            run.epochs.append(epoch)
            run.nmi.append(float(np.mean([normalized_mutual_info_score(truth, y)
                                          for y in labels])))
            run.accuracy.append(float(np.mean([matched_accuracy(y, truth) for y in labels])))
        if epoch == cfg.epochs:
            break
        for batch in torch.randperm(len(images), device=images.device).split(cfg.batch_size):
            _, logits = net(augment(images[batch], cfg))
            losses = (F.cross_entropy(z, y[batch]) for z, y in zip(logits, targets, strict=True))
            loss = sum(losses, torch.zeros((), device=images.device))  # 0 + l: l exactly
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    run.features = predict(net, images)[0].cpu().numpy()
    run.labels = labels
    run.seconds = time.perf_counter() - start
    run.cpu_seconds = time.process_time() - cpu
    return run


def largest_cluster_ratio(labels: np.ndarray, n_clusters: int) -> float:
    """Largest cluster over the balanced size N/K, mean over heads: 1 balanced, K collapsed."""
    largest = [np.bincount(y, minlength=n_clusters).max() for y in labels]
    return float(np.mean(largest) * n_clusters / labels.shape[1])


def kmeans_nmi(x: np.ndarray, truth: np.ndarray, k: int, seed: int) -> float:
    labels = KMeans(k, n_init=10, random_state=seed).fit_predict(x)
    return normalized_mutual_info_score(truth, labels)


def plot_problem(path: str) -> str | None:
    """Why the plot could not be saved to ``path``, checked before minutes of training."""
    if importlib.util.find_spec("matplotlib") is None:
        return "saving the plot needs matplotlib (pip install 'sinklabel[examples]')"
    target = Path(path).resolve()
    if not target.parent.is_dir():
        return f"no folder {target.parent}"
    if target.is_dir():
        return f"{target} is a folder, not a file name"
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # matplotlib picks the format from the extension (and adds ".png" when there is none).
    formats = FigureCanvasAgg.get_supported_filetypes()
    if target.suffix[1:].lower() not in formats:
        return f"name an image file, such as plot.png (extensions: {', '.join(sorted(formats))})"
    return None


def plot(runs: list[Run], ablations: list[Run], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True)
    for metric, ax in zip(("nmi", "accuracy"), axes, strict=True):
        for i, run in enumerate(runs):
            ax.plot(run.epochs, getattr(run, metric), "o-", color="C0",
                    label="self-labels (Sinkhorn)" if i == 0 else None)
        for i, run in enumerate(ablations):
            ax.plot(run.epochs, getattr(run, metric), "x--", color="C3",
                    label="ablation: argmax labels" if i == 0 else None)
        ax.set_xlabel("epoch (markers: label updates)")
        ax.set_ylabel("pseudo-label NMI" if metric == "nmi" else "pseudo-label accuracy")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="lower right")
    fig.suptitle("Self-labelling on 8x8 digits (mean over heads, one line per seed)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


@dataclass
class Report:
    """The final table (one value per seed in each row) and the runs behind it."""

    table: dict[str, list[float]]
    runs: list[Run]
    ablations: list[Run]


def run_all(cfg: Config, seeds: list[int], device: str) -> Report:
    """Per seed: self-label, the argmax ablation, and k-means on pixels and on features."""
    digits = load_digits()
    x, truth = digits.data[: cfg.n_samples] / 16.0, digits.target[: cfg.n_samples]
    images = torch.as_tensor(x, dtype=torch.float32, device=device).reshape(-1, 1, 8, 8)
    report = Report({}, [], [])
    for seed in seeds:
        run = train(images, truth, cfg, seed)
        ablation = train(images, truth, cfg, seed, balanced=False)
        rows = {
            "self-labels NMI": run.nmi[-1],
            "self-labels accuracy": run.accuracy[-1],
            "self-labels largest/(N/K)": largest_cluster_ratio(run.labels, cfg.n_clusters),
            "k-means raw pixels NMI": kmeans_nmi(x, truth, cfg.n_clusters, seed),
            "k-means learned features NMI": kmeans_nmi(run.features, truth, cfg.n_clusters, seed),
            "ablation (argmax) NMI": ablation.nmi[-1],
            "ablation largest/(N/K)": largest_cluster_ratio(ablation.labels, cfg.n_clusters),
            "ablation clusters used": float(np.mean([len(np.unique(y))
                                                      for y in ablation.labels])),
            "self-label wall seconds": run.seconds,
            "self-label CPU seconds": run.cpu_seconds,
            "  of which label steps": run.label_seconds,
            "  of which Sinkhorn": run.sinkhorn_seconds,
            "Sinkhorn passes per head-update": float(np.mean(run.n_iter)),
            "  max": float(np.max(run.n_iter)),
        }
        for name, value in rows.items():
            report.table.setdefault(name, []).append(value)
        report.runs.append(run)
        report.ablations.append(ablation)
        print(f"seed {seed}: self-label NMI {run.nmi[-1]:.3f} ({run.seconds:.0f} s), "
              f"ablation NMI {ablation.nmi[-1]:.3f}")
    return report


def main(argv: list[str] | None = None) -> Report:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="tiny run for a smoke test")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0, 1, ...)")
    parser.add_argument("--epochs", type=int, help="training epochs (default: 20, fast: 4)")
    parser.add_argument("--out", help="where to save the PNG plot (default: no plot)")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.epochs is not None and args.epochs < 0:
        parser.error("--epochs must be at least 0")
    if args.out:
        problem = plot_problem(args.out)
        if problem:
            parser.error(f"--out {args.out}: {problem}")
    cfg = FAST if args.fast else Config()
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    start = time.perf_counter()
    report = run_all(cfg, list(range(args.seeds)), device)
    print(f"\n{'':30s} {'mean':>7s} {'std':>7s}   ({args.seeds} seeds on {device}, "
          f"{time.perf_counter() - start:.0f} s in all)")
    for name, values in report.table.items():
        print(f"{name:30s} {np.mean(values):7.3f} {np.std(values):7.3f}")
    if args.out:
        plot(report.runs, report.ablations, args.out)
        print(f"plot saved to {args.out}")
    return report


if __name__ == "__main__":
    main()
