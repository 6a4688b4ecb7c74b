"""Turning :class:`~medseg.metrics.scoring.Scores` into what people read: ``per_case.csv``,
``summary.json``, a Dice box plot, and a table on the terminal."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from medseg.metrics.scoring import Scores
from medseg.metrics.surface import METRICS


def summarize(scores: Scores) -> dict[str, Any]:
    """Mean, standard deviation, median and count per structure and metric (undefined values left out)."""
    out: dict[str, Any] = {}
    for name in scores.structures:
        out[name] = {}
        for metric in METRICS:
            vals = np.array([r[metric] for r in scores.rows if r["class"] == name], dtype=float)
            vals = vals[~np.isnan(vals)]
            out[name][metric] = (
                {"mean": float(vals.mean()), "std": float(vals.std()), "median": float(np.median(vals)), "n": int(vals.size)}
                if vals.size else {"mean": None, "std": None, "median": None, "n": 0}
            )
    return out


def write_files(scores: Scores, summary: dict[str, Any], output: Path, nsd_tolerance_mm: float,
                medsegbench: tuple[dict[str, float], float] | None = None) -> None:
    """``per_case.csv`` and ``summary.json``; with ``medsegbench`` (per case, dataset score) also
    ``per_case_medsegbench.csv`` and the score in the summary."""
    with open(output / "per_case.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "class", *METRICS])
        writer.writeheader()
        writer.writerows(scores.rows)
    extra = {}
    if medsegbench is not None:
        per_case, overall = medsegbench
        with open(output / "per_case_medsegbench.csv", "w", newline="") as f:
            csv.writer(f).writerows([["case", "medsegbench_dice"], *[[c, v] for c, v in per_case.items()]])
        extra = {"medsegbench_dice": overall,
                 "medsegbench_definition": "per image; binary: foreground Dice, images empty in both dropped; "
                                           "multi-class: mean over classes incl. background, absent from both = 1"}
    (output / "summary.json").write_text(json.dumps(
        {"cases": scores.cases, "nsd_tolerance_mm": nsd_tolerance_mm, "classes": summary, **extra,
         "problems": scores.problems, "notes": scores.notes}, indent=2))


def dice_plot(scores: Scores, path: Path) -> None:
    """Box plot of Dice per structure with the cases as points."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = scores.structures
    data = [[r["dice"] for r in scores.rows if r["class"] == s] for s in names]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right")
    for i, d in enumerate(data, 1):
        ax.scatter(np.full(len(d), i) + np.random.default_rng(i).uniform(-0.08, 0.08, len(d)), d, s=10, alpha=0.6)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Dice per class ({len(data[0]) if data else 0} cases)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def table(summary: dict[str, Any]) -> str:
    """``mean±std`` per structure and metric, one row per structure."""
    lines = [f"{'class':<20} {'Dice':>14} {'IoU':>14} {'HD95 mm':>14} {'ASD mm':>14} {'NSD':>14}"]
    for name, metrics in summary.items():
        cells = [f"{s['mean']:.3f}±{s['std']:.3f}" if s["n"] else "n/a" for s in (metrics[m] for m in METRICS)]
        lines.append(f"{name:<20} " + " ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)
