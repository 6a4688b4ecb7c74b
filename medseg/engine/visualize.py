"""Pictures of a case: image, reference and prediction side by side, for TensorBoard and PNGs."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib import colormaps


def _colorize(image2d: np.ndarray, labels2d: np.ndarray, num_classes: int, alpha: float = 0.45) -> np.ndarray:
    lo, hi = np.percentile(image2d, [0.5, 99.5])
    grey = np.clip((image2d - lo) / max(hi - lo, 1e-6), 0, 1)
    rgb = np.repeat(grey[..., None], 3, axis=-1)
    colors = colormaps["tab10"](np.arange(10))[:, :3]
    for c in np.unique(labels2d):
        if c <= 0:
            continue
        mask = labels2d == c
        rgb[mask] = (1 - alpha) * rgb[mask] + alpha * colors[(int(c) - 1) % len(colors)]
    return rgb


def overlay_slices(
    image: torch.Tensor, label: torch.Tensor, pred: torch.Tensor, num_classes: int
) -> np.ndarray:
    """Axial slice through the most reference foreground: image | reference | prediction.

    Args:
        image: ``(C, X, Y, Z)`` preprocessed image (first channel shown).
        label: ``(1, X, Y, Z)`` reference label map.
        pred: ``(1, X, Y, Z)`` predicted label map.

    Returns:
        ``(Y, 3 * X, 3)`` float RGB in [0, 1], rows anterior-up as radiologists view axial slices.
    """
    img, ref, prd = (np.asarray(t.detach().cpu())[0] for t in (image, label, pred))
    z = int(np.argmax((ref > 0).sum(axis=(0, 1)))) if (ref > 0).any() else img.shape[-1] // 2
    panels = [_colorize(img[..., z], np.zeros_like(ref[..., z]), num_classes),
              _colorize(img[..., z], ref[..., z], num_classes),
              _colorize(img[..., z], prd[..., z], num_classes)]
    # RAS array (x right->left, y posterior->anterior): transpose so y is rows, flip so anterior is up.
    return np.concatenate([np.flipud(p.transpose(1, 0, 2)) for p in panels], axis=1).astype(np.float32)
