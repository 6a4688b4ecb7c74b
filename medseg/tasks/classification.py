"""MedMNIST classification (2D or 3D) on the official splits, validated with the MedMNIST v2
paper's AUC / ACC (key ``auc``), computed with the ``medmnist`` package's own metric functions."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medseg.core import distributed
from medseg.core.utils import autocast_context
from medseg.data.loaders import make_loaders
from medseg.data.medmnist import medmnist_dataset, npz_path
from medseg.data.transforms import augmentation
from medseg.engine.protocols import TrainingData


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


class ClassificationTask:
    """Reads ``dataset.flag``, ``dataset.size`` and ``dataset.task_type`` (from ``medmnist.INFO``)."""

    def build(self, cfg: DictConfig) -> TrainingData:
        from medmnist import INFO

        d = cfg.dataset
        path = npz_path(cfg.paths.data_dir, d.flag, d.size)
        multilabel = str(d.task_type).startswith("multi-label")
        cached, random = augmentation(cfg.get("augment"))
        train = medmnist_dataset(path, "train", multilabel, Compose([*cached.transforms, *random.transforms]))
        # torchrun: each rank trains on its shard; every rank scores the (small) full val/test splits
        n_train = len(train)
        train = Dataset(distributed.shard(list(train.data), even=True), train.transform)
        val, test = (medmnist_dataset(path, s, multilabel) for s in ("val", "test"))
        train_loader, val_loader, test_loader = make_loaders(d, train, val, test)
        names = {int(k): v for k, v in INFO[d.flag]["label"].items()}
        split = {"train": n_train, "val": len(val), "test": len(test), "file": str(path)}
        return TrainingData(train_loader, val_loader, test_loader, names, split, path,
                            ClassificationValidator(str(d.task_type)), meta_free_training=True)
