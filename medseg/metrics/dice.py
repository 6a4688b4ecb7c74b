"""Per-class Dice on label maps, with MONAI's DiceMetric."""

from __future__ import annotations

import torch
from monai.metrics import DiceMetric
from monai.networks.utils import one_hot


class PerClassDice:
    """Accumulates Dice per foreground class over cases; background is not scored.

    A class absent from both reference and prediction of a case scores NaN there and is left out
    of that class's mean (MONAI's ``ignore_empty``), so small structures are not rewarded for
    being absent.
    """

    def __init__(self, label_names: dict[int, str]):
        self.label_names = label_names
        self.num_classes = len(label_names)
        self.metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)

    def update(self, pred_labels: torch.Tensor, ref_labels: torch.Tensor) -> None:
        """Adds a batch.

        Args:
            pred_labels: ``(B, 1, *spatial)`` integer label map.
            ref_labels: ``(B, 1, *spatial)`` integer label map of the same shape.
        """
        self.metric(one_hot(pred_labels, self.num_classes), one_hot(ref_labels.to(pred_labels.device), self.num_classes))

    def compute(self) -> dict[str, float]:
        """``{class name: dice, ..., "mean_dice": mean over classes}`` and resets the accumulator."""
        per_class = self.metric.aggregate().cpu().tolist()
        self.metric.reset()
        names = [self.label_names[i] for i in sorted(self.label_names) if i != 0]
        result = {name: float(v) for name, v in zip(names, per_class)}
        result["mean_dice"] = float(torch.tensor(per_class).nanmean())
        return result
