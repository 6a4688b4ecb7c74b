"""Per-case, per-class segmentation metrics on label maps with MONAI's metric functions.

Conventions for empty structures (those of nnU-Net and the Metrics Reloaded recommendations):
- reference and prediction both empty: Dice 1, NSD 1, HD95 and ASD undefined (NaN);
- exactly one empty: Dice 0, NSD 0, HD95 and ASD undefined (NaN).
Surface distances are in millimetres, using the reference's voxel spacing.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)

METRICS = ("dice", "iou", "hd95", "asd", "nsd")


def mask_metrics(pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float], nsd_tolerance_mm: float = 1.0) -> dict[str, float]:
    """Dice, IoU, HD95, ASD and normalised surface Dice of two binary masks (``(X, Y, Z)`` or ``(H, W)``)."""
    p, r = bool(pred.any()), bool(ref.any())
    if not p and not r:
        return {"dice": 1.0, "iou": 1.0, "hd95": math.nan, "asd": math.nan, "nsd": 1.0}
    if not p or not r:
        return {"dice": 0.0, "iou": 0.0, "hd95": math.nan, "asd": math.nan, "nsd": 0.0}
    yp = torch.from_numpy(pred.astype(np.float32))[None, None]
    yr = torch.from_numpy(ref.astype(np.float32))[None, None]
    spacing = [float(s) for s in spacing]
    dice = float(compute_dice(yp, yr, include_background=True)[0, 0])
    return {
        "dice": dice,
        "iou": dice / (2.0 - dice),
        "hd95": float(compute_hausdorff_distance(yp, yr, include_background=True, percentile=95, spacing=spacing)[0, 0]),
        "asd": float(compute_average_surface_distance(yp, yr, include_background=True, symmetric=True, spacing=spacing)[0, 0]),
        "nsd": float(compute_surface_dice(yp, yr, class_thresholds=[nsd_tolerance_mm], include_background=True, spacing=spacing)[0, 0]),
    }
