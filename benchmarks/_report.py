"""Turning measurements into a ratio table, a JSON file and a plot."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

Record = dict[str, Any]


def add_ratios(records: list[Record], floors: dict[tuple[str, int, str], float]) -> None:
    """Per record: per-iteration time over the floor and over the best peer on its device,
    and total time over the best peer's total (among peers that reached the tolerance,
    when any did, else among those that ended without NaN or inf)."""
    for rec in records:
        key = (rec["regime"], rec["n"], rec["device"])
        peers = [r for r in records if (r["regime"], r["n"], r["device"]) == key
                 and r["family"] == "peer" and r.get("per_iter_s") is not None]
        rec["floor_s"] = floors.get(key)
        rec["iter_over_floor"] = _ratio(rec.get("per_iter_s"), rec["floor_s"])
        rec["iter_over_best_peer"] = _ratio(
            rec.get("per_iter_s"), min((p["per_iter_s"] for p in peers), default=None))
        # A run that ended in NaN or inf solved nothing: its time is no one's benchmark.
        finished = [p for p in peers if p.get("total_s") is not None
                    and p["stopped_by"] != "numerical error"]
        reached = [p for p in finished if p["stopped_by"] == "tol"] or finished
        rec["total_over_best_peer"] = _ratio(
            rec.get("total_s"), min((p["total_s"] for p in reached), default=None))


def markdown_table(records: list[Record], regime: str, n: int) -> str:
    """The comparison at one size and regime as a Markdown table."""
    rows = [r for r in records if r["regime"] == regime and r["n"] == n and "total_s" in r]
    head = ("| method | ms / iter | × floor | × best peer | iterations | stopped by | L1 error "
            "| total s | total × best peer | peak MB | note |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in rows:
        if r.get("failed") or r.get("skipped"):
            lines.append(f"| {r['method']} | {_ms(r.get('per_iter_s'))} "
                         f"| {_x(r['iter_over_floor'])} | {_x(r['iter_over_best_peer'])} "
                         f"| | | | | | | {r.get('failed') or r['skipped']} |")
            continue
        lines.append(
            f"| {r['method']} | {_ms(r['per_iter_s'])} | {_x(r['iter_over_floor'])} "
            f"| {_x(r['iter_over_best_peer'])} | {r['n_iter']} | {r['stopped_by']} "
            f"| {r['error']:.2g} | {r['total_s']:.3g} | {_x(r['total_over_best_peer'])} "
            f"| {_mb(r['peak_bytes'])} | {r['note']} |"
        )
    return "\n".join(lines)


def write_json(path: Path, config: dict[str, Any], records: list[Record],
               floors: dict[tuple[str, int, str], float]) -> None:
    floor_list = [{"regime": g, "n": n, "device": d, "floor_s": s}
                  for (g, n, d), s in floors.items()]
    report = {"config": config, "floors": floor_list, "results": records}
    path.write_text(json.dumps(_finite(report), indent=1, default=str, allow_nan=False))


def plot(path: Path, records: list[Record], floors: dict[tuple[str, int, str], float],
         title: str) -> None:
    """Time per iteration against N, one panel per regime, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({r["regime"] for r in records})
    fig, axes = plt.subplots(1, len(regimes), figsize=(6.5 * len(regimes), 5), squeeze=False,
                             sharey=True)
    for ax, regime in zip(axes[0], regimes, strict=True):
        mine = [r for r in records if r["regime"] == regime and r.get("per_iter_s")]
        for method in dict.fromkeys(r["method"] for r in mine):
            points = sorted((r["n"], r["per_iter_s"]) for r in mine if r["method"] == method)
            style = "-o" if method.startswith("sinklabel") else "--s"
            ax.plot(*zip(*points, strict=True), style, label=method, markersize=4)
        for device in sorted({d for (g, _, d) in floors if g == regime}):
            points = sorted((n, s) for (g, n, d), s in floors.items()
                            if g == regime and d == device)
            ax.plot(*zip(*points, strict=True), ":x", color="black", linewidth=2,
                    label=f"floor: one read of the scores ({device})")
        ax.set(xscale="log", yscale="log", xlabel="N (rows)", title=f"{regime} scores")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("seconds per iteration")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=3, fontsize=8, frameon=False)
    fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05 + 0.035 * math.ceil(len(labels) / 3), 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: JSON has no such numbers, and Python's
    ``NaN`` literal breaks strict readers (jq, browsers, ``json.loads`` with a strict hook)."""
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or not b or math.isnan(a):
        return None
    return a / b


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}×"


def _ms(seconds: float | None) -> str:
    return "–" if seconds is None else f"{seconds * 1e3:.3g}"


def _mb(size: int | None) -> str:
    return "–" if size is None else f"{size / 2**20:.0f}"
