"""What the network's output channels mean, chosen by ``dataset.target`` (``_target_``).

``ClassLabels``: mutually exclusive classes (softmax, argmax), channel 0 is background.
``Regions``: overlapping binary regions (sigmoid, threshold), e.g. BraTS TC/WT/ET, every channel
scored. Validation, prediction and metrics ask the target instead of branching on the task.
"""

from __future__ import annotations

import torch
from monai.networks.utils import one_hot


class ClassLabels:
    """Exclusive classes; the label map holds class indices."""

    include_background = False

    def discretize(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` logits -> ``(B, C, *S)`` one-hot prediction."""
        return one_hot(logits.argmax(dim=1, keepdim=True), logits.shape[1])

    def reference(self, label: torch.Tensor, num_channels: int) -> torch.Tensor:
        """``(B, 1, *S)`` label map -> ``(B, C, *S)`` one-hot."""
        return one_hot(label, num_channels)

    def label_map(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *S)`` class indices, the form written to disk."""
        return logits.argmax(dim=1, keepdim=True)

    def scored_names(self, label_names: dict[int, str]) -> list[str]:
        return [label_names[i] for i in sorted(label_names) if i != 0]


class Regions:
    """Overlapping regions; the (converted) label already has one binary channel per region.

    Args:
        threshold: probability above which a voxel belongs to a region.
        label_values: for :meth:`label_map`, the label value painted for each region, last wins
            (BraTS 2021: WT=2, TC=1, ET=4 painted in the order WT, TC, ET).
        paint_order: channel indices in the order they are painted.
    """

    include_background = True

    def __init__(self, threshold: float = 0.5, label_values: list[int] | None = None, paint_order: list[int] | None = None):
        self.threshold = threshold
        self.label_values = label_values
        self.paint_order = paint_order

    def discretize(self, logits: torch.Tensor) -> torch.Tensor:
        return (torch.sigmoid(logits) > self.threshold).float()

    def reference(self, label: torch.Tensor, num_channels: int) -> torch.Tensor:
        return label.float()

    def label_map(self, logits: torch.Tensor) -> torch.Tensor:
        regions = self.discretize(logits)
        out = torch.zeros_like(regions[:, :1])
        order = self.paint_order or list(range(regions.shape[1]))
        values = self.label_values or list(range(1, regions.shape[1] + 1))
        for channel in order:
            out[regions[:, channel : channel + 1] > 0] = values[channel]
        return out

    def scored_names(self, label_names: dict[int, str]) -> list[str]:
        return [label_names[i] for i in sorted(label_names)]
