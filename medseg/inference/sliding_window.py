"""The one sliding-window path, shared by validation during training and by ``medseg.predict``."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from monai.inferers import Inferer


def autocast_context(device: torch.device, enabled: bool):
    """Mixed precision on CUDA only: CPU autocast gains nothing for these 3D convolutions."""
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    return nullcontext()


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
