"""Score predictions against references: ``python -m medseg.evaluate pred=preds/ ref=labels/``.

Writes ``per_case.csv`` (case, class, Dice, HD95, ASD, NSD), ``summary.json`` (mean, std, median
per class and metric), a per-class Dice plot and overlay pictures. Missing or extra cases and
geometry mismatches are reported by name and left out, not crashed on.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import nibabel as nib
import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from medseg.data.datalist import label_names as names_from_meta
from medseg.engine.visualize import save_overlay_png
from medseg import CONF_DIR
from medseg.errors import MedsegError, exit_on_user_error
from medseg.inference.cases import IMAGE_SUFFIXES, case_id
from medseg.metrics.surface import METRICS, mask_metrics

log = logging.getLogger("medseg.evaluate")
warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")  # MONAI-internal deprecation noise


def _label_files(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise MedsegError(f"{folder} is not a folder of label maps")
    return {case_id(p): p for p in sorted(folder.iterdir()) if p.name.endswith(IMAGE_SUFFIXES) and not p.name.startswith(".")
            and not case_id(p).endswith("_probabilities")}


def _structures(cfg: DictConfig, ref_dir: Path, values: set[int]) -> dict[str, list[int]]:
    """Name -> label values that make up the structure (one value, or several for regions)."""
    if cfg.get("regions"):
        return {str(k): [int(v) for v in vs] for k, vs in cfg.regions.items()}
    if cfg.get("labels"):
        return {str(v): [int(k)] for k, v in cfg.labels.items() if int(k) != 0}
    meta_path = ref_dir.parent / "dataset.json"
    if meta_path.is_file():
        names = names_from_meta(json.loads(meta_path.read_text()))
        return {v: [k] for k, v in names.items() if k != 0}
    return {f"label_{v}": [v] for v in sorted(values) if v != 0}


def _summary(rows: list[dict[str, Any]], structures: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in structures:
        out[name] = {}
        for metric in METRICS:
            vals = np.array([r[metric] for r in rows if r["class"] == name], dtype=float)
            vals = vals[~np.isnan(vals)]
            out[name][metric] = (
                {"mean": float(vals.mean()), "std": float(vals.std()), "median": float(np.median(vals)), "n": int(vals.size)}
                if vals.size else {"mean": None, "std": None, "median": None, "n": 0}
            )
    return out


def _dice_plot(rows: list[dict[str, Any]], structures: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = [[r["dice"] for r in rows if r["class"] == s] for s in structures]
    fig, ax = plt.subplots(figsize=(1.2 * len(structures) + 2, 4))
    ax.boxplot(data, showmeans=True)
    ax.set_xticks(range(1, len(structures) + 1), structures, rotation=30, ha="right")
    for i, d in enumerate(data, 1):
        ax.scatter(np.full(len(d), i) + np.random.default_rng(i).uniform(-0.08, 0.08, len(d)), d, s=10, alpha=0.6)
    ax.set_ylabel("Dice")
    ax.set_ylim(0, 1.02)
    ax.set_title(f"Dice per class ({len(data[0]) if data else 0} cases)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _image_for(images: Path | None, case: str) -> Path | None:
    if images is None:
        return None
    for name in (f"{case}.nii.gz", f"{case}_0000.nii.gz", f"{case}.nii"):
        if (images / name).is_file():
            return images / name
    return None


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Scores every case present in both folders.

    Returns:
        ``{"rows": per case and class, "summary": per class, "problems": ["case: reason", ...]}``.
    """
    pred_dir, ref_dir, output = Path(cfg.pred), Path(cfg.ref), Path(cfg.output)
    output.mkdir(parents=True, exist_ok=True)
    preds, refs = _label_files(pred_dir), _label_files(ref_dir)
    problems = [f"{refs[c]}: no prediction {pred_dir / (c + '.nii.gz')}" for c in sorted(set(refs) - set(preds))]
    problems += [f"{preds[c]}: no reference in {ref_dir}" for c in sorted(set(preds) - set(refs))]
    rows: list[dict[str, Any]] = []
    structures: dict[str, list[int]] | None = None
    for case in tqdm(sorted(set(preds) & set(refs)), desc="evaluate", unit="case", disable=not sys.stderr.isatty()):
        try:
            ref_img, pred_img = nib.load(str(refs[case])), nib.load(str(preds[case]))
            ref = np.asarray(ref_img.dataobj).astype(np.int64)
            pred = np.asarray(pred_img.dataobj).astype(np.int64)
        except Exception as err:
            problems.append(f"{case}: unreadable ({type(err).__name__}: {str(err)[:100]})")
            continue
        if ref.shape != pred.shape or not np.allclose(ref_img.affine, pred_img.affine, atol=1e-3):
            problems.append(f"{preds[case]}: geometry differs from {refs[case]} (shape {pred.shape} vs {ref.shape} "
                            "or affine); predict in the reference's space")
            continue
        if structures is None:
            structures = _structures(cfg, ref_dir, set(np.unique(ref).tolist()))
        spacing = ref_img.header.get_zooms()[:3]
        for name, values in structures.items():
            m = mask_metrics(np.isin(pred, values), np.isin(ref, values), spacing, cfg.nsd_tolerance_mm)
            rows.append({"case": case, "class": name, **m})
        if cfg.overlays:
            (output / "overlays").mkdir(exist_ok=True)
            canon = nib.as_closest_canonical
            image_path = _image_for(Path(cfg.images) if cfg.images else None, case)
            image = np.asarray(canon(nib.load(str(image_path))).dataobj) if image_path else np.zeros(ref.shape)
            save_overlay_png(output / "overlays" / f"{case}.png", image, np.asarray(canon(pred_img).dataobj),
                             np.asarray(canon(ref_img).dataobj), title=case)
    names = list(structures or {})
    with open(output / "per_case.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["case", "class", *METRICS])
        writer.writeheader()
        writer.writerows(rows)
    summary = _summary(rows, names)
    (output / "summary.json").write_text(json.dumps(
        {"cases": len({r["case"] for r in rows}), "nsd_tolerance_mm": cfg.nsd_tolerance_mm, "classes": summary,
         "problems": problems}, indent=2))
    if cfg.overlays and rows:
        _dice_plot(rows, names, output / "dice_per_class.png")
    for line in problems:
        print(f"problem: {line}", file=sys.stderr)
    print(f"{'class':<20} {'Dice':>14} {'HD95 mm':>14} {'ASD mm':>14} {'NSD':>14}")
    for name in names:
        cells = []
        for metric in METRICS:
            s = summary[name][metric]
            cells.append(f"{s['mean']:.3f}±{s['std']:.3f}" if s["n"] else "n/a")
        print(f"{name:<20} " + " ".join(f"{c:>14}" for c in cells))
    print(f"{len({r['case'] for r in rows})} case(s) scored; results in {output}")
    return {"rows": rows, "summary": summary, "problems": problems}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if evaluate(cfg)["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
