"""Per-class Dice with MONAI's DiceMetric, accumulated over validation cases."""

from __future__ import annotations

import torch
from monai.metrics import DiceMetric

from medseg.core import distributed


class PerClassDice:
    """Accumulates Dice per scored channel over cases.

    A class absent from both reference and prediction of a case scores NaN there and is left out
    of that class's mean (MONAI's ``ignore_empty``), so small structures are not rewarded for
    being absent.

    Args:
        names: names of the scored channels, in order.
        num_classes: output channels, background included for exclusive classes.
        include_background: score channel 0 too (regions) or not (exclusive classes).
    """

    def __init__(self, names: list[str], num_classes: int, include_background: bool = False):
        self.names = names
        self.metric = DiceMetric(include_background=include_background, reduction="mean_batch", ignore_empty=True,
                                 num_classes=num_classes)

    def update(self, pred: torch.Tensor, ref: torch.Tensor) -> None:
        """Adds a batch: ``(B, 1, *spatial)`` class-index maps, or ``(B, C, *spatial)`` binary channels.

        MONAI compares one class at a time on label maps, so no full-volume one-hot is built.
        """
        self.metric(pred, ref.to(pred.device))

    def compute(self) -> dict[str, float]:
        """``{name: dice, ..., "mean_dice": mean over classes}``; resets the accumulator.

        Under torchrun each rank scored its own validation cases: the per-case scores of all ranks
        are gathered first, so every rank reports the same numbers.
        """
        buffer = self.metric.get_buffer()
        self.metric.reset()
        local = buffer.cpu() if buffer is not None else torch.empty(0, len(self.names))
        per_case = torch.cat([b.reshape(-1, len(self.names)) for b in distributed.all_gather(local)])
        per_class = per_case.nanmean(dim=0) if len(per_case) else torch.full((len(self.names),), float("nan"))
        result = {name: float(v) for name, v in zip(self.names, per_class.tolist())}
        result["mean_dice"] = float(per_class.nanmean())
        return result
