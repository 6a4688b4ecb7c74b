"""Loss wrappers the engine needs beyond MONAI's, chosen in ``conf/loss/`` by ``_target_``."""

from __future__ import annotations

import torch
from monai.losses import DeepSupervisionLoss as _MonaiDeepSupervisionLoss


class DeepSupervisionLoss(_MonaiDeepSupervisionLoss):
    """MONAI's ``DeepSupervisionLoss`` that also takes DynUNet's training output as it comes.

    DynUNet stacks its deep-supervision heads on dim 1 in training (``(B, heads, C, *S)``), while
    MONAI's loss wants a list of heads; the unbinding lives here, with the loss, so the training
    loop just calls ``loss(outputs, label)``. A single-output network passes straight through.
    """

    def forward(self, input: torch.Tensor | list[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
        if isinstance(input, torch.Tensor) and input.dim() == target.dim() + 1:
            input = list(torch.unbind(input, dim=1))
        return super().forward(input, target)
