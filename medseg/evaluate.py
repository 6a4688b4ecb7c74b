"""Score predictions against references: ``python -m medseg.evaluate pred=preds/ ref=labels/``.

Writes ``per_case.csv`` (case, class, Dice, HD95, ASD, NSD), ``summary.json`` (mean, std, median
per class and metric), a per-class Dice plot and overlay pictures. Missing or extra cases and
geometry mismatches are reported by name and left out, not crashed on.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from nibabel import orientations
from omegaconf import DictConfig

from medseg.core.config import CONF_DIR
from medseg.core.errors import MedsegError, exit_on_user_error
from medseg.core.folders import ensure_writable
from medseg.core.imagefiles import IMAGE_SUFFIXES
from medseg.core.visualize import save_overlay_png
from medseg.data.readers import LabelMap, image_loader
from medseg.metrics import report
from medseg.metrics.scoring import declared_structures, score_folders

log = logging.getLogger("medseg.evaluate")
warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")  # MONAI-internal deprecation noise


def _image_for(images: Path | None, case: str) -> Path | None:
    if images is None:
        return None
    if (images / case).is_dir():  # a DICOM series folder
        return images / case
    for suffix in IMAGE_SUFFIXES:
        for name in (f"{case}{suffix}", f"{case}_0000{suffix}"):
            if (images / name).is_file():
                return images / name
    return None


def _canonical(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The array in RAS axis order (as ``nib.as_closest_canonical``), for pictures."""
    transform = orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt("RAS"))
    return orientations.apply_orientation(array, transform)


def _overlay_writer(output: Path, images: Path | None):
    """Draws image | reference | prediction through each scored case into ``overlays/``."""
    (output / "overlays").mkdir(exist_ok=True)

    def draw(case: str, pred: LabelMap, ref: LabelMap) -> None:
        image_path = _image_for(images, case)
        image = np.zeros(ref.array.shape)
        if image_path is not None:
            loaded = image_loader(["image"])({"image": str(image_path)})["image"]
            image = np.asarray(loaded[0]) if tuple(loaded.shape[1:]) == ref.array.shape else image
        save_overlay_png(output / "overlays" / f"{case}.png", _canonical(image, ref.affine),
                         _canonical(pred.array, ref.affine), _canonical(ref.array, ref.affine), title=case)

    return draw


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Scores every case present in both folders, writes the reports and prints the table.

    Returns:
        ``{"rows": per case and class, "summary": per class, "problems": ["case: reason", ...], "notes": [...]}``.
    """
    pred_dir, ref_dir, output = Path(cfg.pred), Path(cfg.ref), Path(cfg.output)
    ensure_writable(output, "choose another output=")
    structures = declared_structures(cfg.get("regions"), cfg.get("labels"), ref_dir)
    draw = _overlay_writer(output, Path(cfg.images) if cfg.images else None) if cfg.overlays else None
    metric = str(cfg.get("metric", "standard"))
    if metric not in ("standard", "medsegbench"):
        raise MedsegError(f"metric={metric} is not a metric set; use standard or medsegbench")
    scores = score_folders(pred_dir, ref_dir, structures, cfg.nsd_tolerance_mm, on_case=draw,
                           series_dirs=[Path(cfg.images)] if cfg.images else [],  # DICOM SEGs' source series
                           medsegbench=metric == "medsegbench")
    summary = report.summarize(scores)
    msb = None
    if metric == "medsegbench":  # classes: the declared ones plus background, else the values found
        declared = max((v for vs in structures.values() for v in vs), default=0) + 1 if structures else None
        msb = scores.medsegbench(declared)
    report.write_files(scores, summary, output, cfg.nsd_tolerance_mm, msb)
    if cfg.overlays and scores.rows:
        report.dice_plot(scores, output / "dice_per_class.png")
    for line in scores.problems:
        print(f"problem: {line}", file=sys.stderr)
    for line in scores.notes:
        print(f"note: {line}", file=sys.stderr)
    print(report.table(summary))
    if msb is not None:
        print(f"MedSegBench Dice (their per-image definition): {msb[1]:.4f}")
    print(f"{scores.cases} case(s) scored; results in {output}")
    return {"rows": scores.rows, "summary": summary, "problems": scores.problems, "notes": scores.notes,
            **({"medsegbench_dice": msb[1]} if msb is not None else {})}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if evaluate(cfg)["problems"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
