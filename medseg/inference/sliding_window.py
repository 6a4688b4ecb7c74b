"""The one sliding-window path, shared by validation during training and by ``medseg.predict``."""

from __future__ import annotations

import itertools
from typing import Sequence

import torch
from monai.data.utils import dense_patch_slices
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
        amp: autocast on CUDA (bf16 where supported, else fp16).

    Returns:
        ``(B, num_classes, *spatial)`` float logits on the inferer's output device.
    """
    model.eval()
    with autocast_context(device, amp, inference=True):
        logits = inferer(image.to(device), model)
    return logits.float()


def mirror_flips(spatial_dims: int, axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Every combination of flips over ``axes`` (spatial indices), identity first: 8 for 3 axes."""
    axes = list(range(spatial_dims)) if axes is None else list(axes)
    return [tuple(a + 2 for a in combo) for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.inference_mode()
def average_logits(
    models: Sequence[torch.nn.Module],
    image: torch.Tensor,
    inferer: Inferer,
    device: torch.device,
    amp: bool = False,
    mirror_axes: Sequence[int] | None = (),
) -> torch.Tensor:
    """Logits averaged over an ensemble and mirrored copies (test-time augmentation).

    Logits, not probabilities, are averaged and later resampled to the scan's grid, as nnU-Net
    and the MONAI tutorials do: a single model's labels are then exactly those of the tutorial's
    ``sliding_window_inference`` -> ``Invertd`` -> argmax path at the same window settings.

    Args:
        models: one network, or several (e.g. the 5 cross-validation folds) to average.
        image: ``(B, in_channels, *spatial)`` preprocessed volume(s).
        mirror_axes: spatial axes to mirror over (``None`` = all, ``()`` = no TTA).

    Returns:
        ``(B, C, *spatial)`` logits on the inferer's output device.
    """
    flips = mirror_flips(image.dim() - 2, mirror_axes)
    total = None
    for model in models:
        for dims in flips:
            x = torch.flip(image, dims) if dims else image
            logits = predict_logits(model, x, inferer, device, amp)
            logits = torch.flip(logits, dims) if dims else logits
            total = logits if total is None else total.add_(logits)
    return total.div_(len(models) * len(flips))  # in place: a whole-volume copy less


def window_aligned_box(nonzero: torch.Tensor, roi_size: Sequence[int], overlap: float) -> tuple[slice, ...]:
    """The sub-volume made of exactly the sliding windows that touch ``nonzero`` voxels.

    ``sliding_window_inference`` on this box runs the same windows, at the same places, as on the
    whole volume for every window that sees the nonzero region (scan air, skull-stripped
    background and padding are zero after preprocessing), so the logits there are the same;
    windows that see only zeros are skipped.

    Args:
        nonzero: ``(*spatial)`` bool mask of the voxels that carry signal.
        roi_size: window size; overlap: the inferer's (one value for all axes).
    """
    size = tuple(nonzero.shape)
    if not nonzero.any():
        return tuple(slice(0, n) for n in size)
    box = []
    for axis, (n, roi) in enumerate(zip(size, roi_size)):
        if n <= roi:
            box.append(slice(0, n))
            continue
        hits = torch.nonzero(nonzero.any(dim=tuple(a for a in range(nonzero.dim()) if a != axis))).flatten()
        first, last = int(hits[0]), int(hits[-1])
        interval = max(int(roi * (1 - overlap)), 1)  # as sliding_window_inference computes it
        starts = [window[0].start for window in dense_patch_slices((n,), (roi,), (interval,))]
        touching = [s for s in starts if s <= last and s + roi > first]
        box.append(slice(touching[0], touching[-1] + roi))
    return tuple(box)


def logits_where_signal(
    models: Sequence[torch.nn.Module],
    image: torch.Tensor,
    inferer: Inferer,
    device: torch.device,
    background: torch.Tensor,
    amp: bool = False,
    mirror_axes: Sequence[int] | None = (),
) -> torch.Tensor:
    """:func:`average_logits` of one ``(C, *spatial)`` volume, run only on :func:`window_aligned_box`
    of its signal; every other voxel gets the ``background`` logits ``(num_classes,)``.

    Signal is any voxel neither 0 nor its channel's minimum after preprocessing: background is 0
    (a [0, 1] CT window, skull-stripped MRI) or the clipped minimum (a z-scored CT window).
    """
    plain = torch.as_tensor(image)
    low = plain.amin(dim=tuple(range(1, plain.dim())), keepdim=True)
    signal = ((plain != 0) & (plain != low)).any(dim=0)
    overlap = inferer.overlap[0] if isinstance(inferer.overlap, (list, tuple)) else inferer.overlap
    box = (slice(None), *window_aligned_box(signal, inferer.roi_size, float(overlap)))
    inside = average_logits(models, image[None][(slice(None), *box)], inferer, device, amp, mirror_axes)[0]
    logits = background.to(inside).view(-1, *[1] * (plain.dim() - 1)).repeat(1, *plain.shape[1:])
    logits[box] = inside  # stays where it was stitched (GPU: resampled there)
    return logits
