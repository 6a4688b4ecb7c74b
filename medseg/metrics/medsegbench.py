"""MedSegBench's Dice (Kuş & Aydin, Scientific Data 2024), so a result can sit next to their table.

Their numbers are computed per image, differently from nnU-Net's convention (medseg's default):

- binary tasks: Dice of the foreground per image; an image whose reference and prediction are
  both empty scores NaN and is left out of the mean; an empty reference with any false positive
  scores 0.
- multi-class tasks: per image, the mean over classes *including background*; a class absent
  from both reference and prediction scores 1.

The dataset score is the mean over images of those per-image values (NaN left out).
"""

from __future__ import annotations

import math

import numpy as np

Counts = dict[int, tuple[int, int, int]]  # class -> (predicted pixels, reference pixels, overlap)


def class_counts(pred: np.ndarray, ref: np.ndarray) -> Counts:
    """Per class value present in either map: predicted, reference and overlapping pixel counts
    (enough to score any set of classes later, background included)."""
    pred, ref = np.asarray(pred), np.asarray(ref)
    values = np.union1d(np.unique(pred), np.unique(ref))
    return {int(v): (int((pred == v).sum()), int((ref == v).sum()), int(((pred == v) & (ref == v)).sum())) for v in values}


def score_counts(counts: Counts, num_classes: int) -> float:
    """One image's MedSegBench Dice from :func:`class_counts` (see the module docstring)."""
    def dice(c: int) -> float:
        p, r, both = counts.get(c, (0, 0, 0))
        return 2.0 * both / (p + r) if p + r else math.nan

    if num_classes <= 2:
        foreground = [counts.get(c, (0, 0, 0)) for c in counts if c != 0]
        p, r, both = (sum(x[i] for x in foreground) for i in range(3))
        return 2.0 * both / (p + r) if p + r else math.nan  # both empty: NaN (dropped); one empty: 0
    return float(np.mean([1.0 if math.isnan(dice(c)) else dice(c) for c in range(num_classes)]))


def medsegbench_dice(pred: np.ndarray, ref: np.ndarray, num_classes: int) -> float:
    """One image's MedSegBench Dice.

    Args:
        pred, ref: label maps of class indices, same shape.
        num_classes: classes including background; 2 is their binary case.

    Returns:
        The image's score; NaN for a binary image with an empty reference and prediction.
    """
    return score_counts(class_counts(pred, ref), num_classes)


def dataset_score(per_image: list[float]) -> float:
    """Mean over images, NaN (binary images empty in both) left out."""
    values = np.asarray(per_image, dtype=float)
    return float(np.nanmean(values)) if np.isfinite(values).any() else math.nan
