"""What the network's output channels mean, chosen by ``dataset.target`` (``_target_``).

``ClassLabels``: mutually exclusive classes (softmax, argmax), channel 0 is background.
``Regions``: overlapping binary regions (sigmoid, threshold), e.g. BraTS TC/WT/ET, every channel
scored. Validation, prediction and metrics ask the target instead of branching on the task.
All methods take probabilities (``activate`` of the logits), so ensembles and test-time
augmentation can average them first.
"""

from __future__ import annotations

import torch


def class_indices(probs: torch.Tensor) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, 1, *S)`` int64 index of the largest channel, the first one on ties.

    One pass per channel instead of ``argmax(dim=1)``: on CPU argmax over the short channel axis of
    a whole CT is a slow reduction (9.5 s vs 0.3 s for 2x512x512x200), and ``max(dim=1).indices``,
    as fast, does not keep the first index on ties (zero-padded borders are all ties).
    """
    best = probs[:, :1]
    index = torch.zeros(best.shape, dtype=torch.int64, device=probs.device)
    for c in range(1, probs.shape[1]):
        better = probs[:, c:c + 1] > best
        index.masked_fill_(better, c)
        best = torch.maximum(best, probs[:, c:c + 1])
    return index


class ClassLabels:
    """Exclusive classes; the label map holds class indices."""

    include_background = False

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` logits -> probabilities."""
        return torch.softmax(logits, dim=1)

    def discretize(self, probs: torch.Tensor) -> torch.Tensor:
        """``(B, C, *S)`` probabilities -> ``(B, 1, *S)`` uint8 class indices, the form Dice scores.

        A label map instead of a float one-hot: 1 byte per voxel instead of 4 x C, which decides
        whether validating a 512x512x600 CT fits in a few GiB.
        """
        return class_indices(probs).to(torch.uint8)

    def reference(self, label: torch.Tensor, num_channels: int) -> torch.Tensor:
        """``(B, 1, *S)`` label map, as scored against :meth:`discretize`."""
        return label

    def label_map(self, probs: torch.Tensor) -> torch.Tensor:
        """``(B, 1, *S)`` class indices, the form written to disk."""
        return class_indices(probs)

    def labels_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """:meth:`label_map` of the probabilities, without computing them: softmax keeps the order."""
        return class_indices(logits)

    def background_logits(self, num_channels: int) -> torch.Tensor:
        """Logits meaning "certainly background", for voxels no window was run on."""
        return torch.tensor([30.0] + [0.0] * (num_channels - 1))

    def reference_map(self, label: torch.Tensor) -> torch.Tensor:
        return label

    def scored_names(self, label_names: dict[int, str]) -> list[str]:
        return [label_names[i] for i in sorted(label_names) if i != 0]

    def file_label_values(self, label_names: dict[int, str]) -> set[int] | None:
        """Values a label file may hold: the class indices, background included."""
        return set(label_names)


class Regions:
    """Overlapping regions; the (converted) label already has one binary channel per region.

    Args:
        threshold: probability above which a voxel belongs to a region.
        label_values: for :meth:`label_map`, the label value painted for each region channel
            (BraTS: TC as NCR, WT as ED, ET as ET).
        paint_order: channel indices in the order they are painted, later ones on top.
    """

    include_background = True

    def __init__(self, threshold: float = 0.5, label_values: list[int] | None = None, paint_order: list[int] | None = None):
        self.threshold = threshold
        self.label_values = list(label_values) if label_values is not None else None
        self.paint_order = list(paint_order) if paint_order is not None else None

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def discretize(self, probs: torch.Tensor) -> torch.Tensor:
        return (probs > self.threshold).float()

    def reference(self, label: torch.Tensor, num_channels: int) -> torch.Tensor:
        return label.float()

    def label_map(self, probs: torch.Tensor) -> torch.Tensor:
        regions = self.discretize(probs)
        out = torch.zeros_like(regions[:, :1])
        order = self.paint_order or list(range(regions.shape[1]))
        values = self.label_values or list(range(1, regions.shape[1] + 1))
        for channel in order:
            out[regions[:, channel : channel + 1] > 0] = values[channel]
        return out

    def reference_map(self, label: torch.Tensor) -> torch.Tensor:
        return self.label_map(label.float())

    def labels_from_logits(self, logits: torch.Tensor) -> torch.Tensor:
        return self.label_map(self.activate(logits))

    def background_logits(self, num_channels: int) -> torch.Tensor:
        return torch.full((num_channels,), -30.0)

    def scored_names(self, label_names: dict[int, str]) -> list[str]:
        return [label_names[i] for i in sorted(label_names)]

    def file_label_values(self, label_names: dict[int, str]) -> set[int] | None:
        """Values a label file may hold before its conversion to regions (None: not known)."""
        return {0, *self.label_values} if self.label_values is not None else None
