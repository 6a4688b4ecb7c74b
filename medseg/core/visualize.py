"""Pictures of a case: image, reference and prediction side by side, for TensorBoard and PNGs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib import colormaps


def _colorize(image2d: np.ndarray, labels2d: np.ndarray, num_classes: int = 0, alpha: float = 0.45) -> np.ndarray:
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
    if img.shape[-1] == 1:  # a 2D image: as the file shows it (rows down)
        return np.concatenate(panels, axis=1).astype(np.float32)
    # RAS array (x right->left, y posterior->anterior): transpose so y is rows, flip so anterior is up.
    return np.concatenate([np.flipud(p.transpose(1, 0, 2)) for p in panels], axis=1).astype(np.float32)


def _views(volume: np.ndarray, center: tuple[int, int, int]) -> list[np.ndarray]:
    """Axial, coronal and sagittal slices of an RAS (X, Y, Z) volume, oriented for display."""
    x, y, z = center
    return [np.flipud(volume[:, :, z].T), np.flipud(volume[:, y, :].T), np.flipud(volume[x, :, :].T)]


def save_overlay_png(
    path: str | Path,
    image: torch.Tensor | np.ndarray,
    pred: torch.Tensor | np.ndarray,
    ref: torch.Tensor | np.ndarray | None = None,
    title: str = "",
) -> None:
    """Axial / coronal / sagittal views through the structure: image | reference | prediction.

    Args:
        image: ``(X, Y, Z)`` or ``(C, X, Y, Z)`` image in RAS order (first channel shown).
        pred, ref: ``(X, Y, Z)`` or ``(1, X, Y, Z)`` label maps on the same grid; ``ref`` optional.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img, prd = np.asarray(image, dtype=np.float32), np.asarray(pred)
    img = img[0] if img.ndim == 4 else img
    prd = prd[0] if prd.ndim == 4 else prd
    refs = None if ref is None else (np.asarray(ref)[0] if np.asarray(ref).ndim == 4 else np.asarray(ref))
    mask = (refs if refs is not None and refs.any() else prd) > 0
    center = tuple(int(round(c)) for c in np.argwhere(mask).mean(0)) if mask.any() else tuple(s // 2 for s in img.shape)
    columns = [("image", np.zeros_like(prd))] + ([("reference", refs)] if refs is not None else []) + [("prediction", prd)]
    picture = img.shape[2] == 1  # a 2D image (one slice): shown as the file shows it, rows down
    views = ("image plane",) if picture else ("axial", "coronal", "sagittal")
    height = 3.2 * img.shape[0] / img.shape[1] if picture else 3.2
    fig, axes = plt.subplots(len(views), len(columns), figsize=(3.2 * len(columns), height * len(views) + 0.4), squeeze=False)
    for row, view in enumerate(views):
        for col, (name, labels) in enumerate(columns):
            plane, plane_labels = ((img[:, :, 0], labels[:, :, 0]) if picture
                                   else (_views(img, center)[row], _views(labels, center)[row]))
            axes[row, col].imshow(_colorize(plane, plane_labels, 0), aspect="equal" if picture else "auto")
            axes[row, col].set_axis_off()
            if row == 0:
                axes[row, col].set_title(name)
        axes[row, 0].text(-0.05, 0.5, view, rotation=90, va="center", ha="right", transform=axes[row, 0].transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
