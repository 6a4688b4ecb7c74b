"""How a task is validated: the engine calls a validator and never asks which task it is running.

``SegmentationValidator``: sliding-window inference and per-class Dice (key ``mean_dice``).
``ClassificationValidator``: one forward pass per batch and the MedMNIST paper's AUC / ACC
(key ``auc``), computed with the ``medmnist`` package's own metric functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer
from torch.utils.data import DataLoader

from medseg.engine import distributed
from medseg.engine.visualize import overlay_slices
from medseg.inference.sliding_window import autocast_context, predict_probabilities
from medseg.metrics.dice import PerClassDice


class SegmentationValidator:
    key = "mean_dice"

    def __init__(self, inferer: Inferer, target, label_names: dict[int, str]):
        self.inferer = inferer
        self.target = target
        self.label_names = label_names
        self.metric = PerClassDice(target.scored_names(label_names), len(label_names), target.include_background)

    @staticmethod
    def loss_inputs(outputs: torch.Tensor | list[torch.Tensor], target: torch.Tensor):
        """DynUNet stacks its deep-supervision heads on dim 1 in training; losses want a list."""
        if isinstance(outputs, torch.Tensor) and outputs.dim() == target.dim() + 1:
            return list(torch.unbind(outputs, dim=1))
        return outputs

    def __call__(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool,
                 save_scores: str | None = None) -> tuple[dict[str, float], np.ndarray | None]:
        """Dice per class over the loader's cases, and an image/reference/prediction picture."""
        picture = None
        for batch in loader:
            probs = predict_probabilities([model], batch["image"], self.inferer, device, self.target.activate, amp)
            label = batch["label"].to(probs.device)
            if picture is None:
                picture = overlay_slices(batch["image"][0].cpu(), self.target.reference_map(label)[0].cpu(),
                                         self.target.label_map(probs)[0].cpu(), num_classes=len(self.label_names))
            prediction = self.target.discretize(probs)
            del probs  # whole-volume probabilities are the largest tensor here (C x float32 per voxel)
            self.metric.update(prediction, self.target.reference(label, len(self.label_names)))
        return self.metric.compute(), picture

    def describe(self, metrics: dict[str, float]) -> str:
        parts = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if k != "mean_dice")
        return f"mean validation Dice: {metrics['mean_dice']:.4f} ({parts})"


class ClassificationValidator:
    """AUC and ACC as defined by MedMNIST v2 for its four task types.

    Args:
        task_type: ``multi-class``, ``binary-class``, ``ordinal-regression`` (scored as
            multi-class, as in the paper) or ``multi-label, binary-class``.
    """

    key = "auc"

    def __init__(self, task_type: str):
        self.task_type = task_type
        self.multilabel = task_type.startswith("multi-label")

    def loss_inputs(self, outputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return outputs

    @torch.inference_mode()
    def scores(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool) -> tuple[np.ndarray, np.ndarray]:
        """``(y_true, y_score)`` over the loader: probabilities per class (sigmoid for multi-label)."""
        model.eval()
        trues, scores = [], []
        for batch in loader:
            with autocast_context(device, amp):
                logits = model(batch["image"].to(device)).float()
            scores.append((torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)).cpu().numpy())
            trues.append(batch["label"].cpu().numpy())
        return np.concatenate(trues), np.concatenate(scores)

    def __call__(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool,
                 save_scores: str | None = None) -> tuple[dict[str, float], None]:
        from medmnist.evaluator import getACC, getAUC

        y_true, y_score = self.scores(model, loader, device, amp)
        if save_scores and distributed.is_main():
            np.save(save_scores, y_score)
        return {"auc": float(getAUC(y_true, y_score, self.task_type)), "acc": float(getACC(y_true, y_score, self.task_type))}, None

    def describe(self, metrics: dict[str, Any]) -> str:
        return f"validation AUC: {metrics['auc']:.4f}, ACC: {metrics['acc']:.4f}"
