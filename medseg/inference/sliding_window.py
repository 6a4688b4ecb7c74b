"""The one sliding-window path, shared by validation during training and by ``medseg.predict``."""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
from monai.inferers import Inferer

from medseg.core.utils import autocast_context


@torch.inference_mode()
def predict_logits(
    model: torch.nn.Module,
    image: torch.Tensor,
    inferer: Inferer,
    device: torch.device,
    amp: bool = False,
) -> torch.Tensor:
    """Logits for whole volumes by sliding-window inference.

    Args:
        model: network in eval mode (set here) returning ``(B, C, *spatial)`` logits.
        image: ``(B, in_channels, *spatial)`` preprocessed volume(s), on any device.
        inferer: configured ``SlidingWindowInferer``; its ``device`` decides where windows are
            stitched (``cpu`` for volumes too big for GPU memory).
        device: where the network runs.
        amp: fp16 autocast on CUDA.

    Returns:
        ``(B, num_classes, *spatial)`` float logits on the inferer's output device.
    """
    model.eval()
    with autocast_context(device, amp):
        logits = inferer(image.to(device), model)
    return logits.float()


def mirror_flips(spatial_dims: int, axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every combination of flips over ``axes`` (spatial indices), identity first: 8 for 3 axes."""
    axes = list(range(spatial_dims)) if axes is None else list(axes)
    return [tuple(a + 2 for a in combo) for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.inference_mode()
def predict_probabilities(
    models: Sequence[torch.nn.Module],
    image: torch.Tensor,
    inferer: Inferer,
    device: torch.device,
    activate,
    amp: bool = False,
    mirror_axes: Sequence[int] | None = (),
) -> torch.Tensor:
    """Class/region probabilities averaged over an ensemble and mirrored copies (test-time augmentation).

    Args:
        models: one network, or several (e.g. the 5 cross-validation folds) to average.
        image: ``(B, in_channels, *spatial)`` preprocessed volume(s).
        activate: logits -> probabilities (softmax for classes, sigmoid for regions).
        mirror_axes: spatial axes to mirror over (``None`` = all, ``()`` = no TTA).

    Returns:
        ``(B, C, *spatial)`` probabilities on the inferer's output device.
    """
    flips = mirror_flips(image.dim() - 2, mirror_axes)
    total = None
    for model in models:
        for dims in flips:
            x = torch.flip(image, dims) if dims else image
            probs = activate(predict_logits(model, x, inferer, device, amp))
            probs = torch.flip(probs, dims) if dims else probs
            total = probs if total is None else total + probs
    return total.div_(len(models) * len(flips))  # in place: a whole-volume copy less
