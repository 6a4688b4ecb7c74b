"""3D segmentation, exclusive classes or overlapping regions (``dataset.target``): patches for
training, sliding-window inference and per-class Dice (key ``mean_dice``) for validation."""

from __future__ import annotations

import numpy as np
import torch
from hydra.utils import instantiate
from monai.inferers import Inferer
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medseg.core.targets import ClassLabels, Regions
from medseg.core.visualize import overlay_slices
from medseg.data.loaders import build_segmentation_data
from medseg.engine.protocols import TrainingData
from medseg.inference.sliding_window import average_logits
from medseg.metrics.dice import PerClassDice


class SegmentationValidator:
    """Sliding-window probabilities of whole validation volumes, scored per class with Dice."""

    key = "mean_dice"

    def __init__(self, inferer: Inferer, target: ClassLabels | Regions, label_names: dict[int, str]):
        self.inferer = inferer
        self.target = target
        self.label_names = label_names
        self.metric = PerClassDice(target.scored_names(label_names), len(label_names), target.include_background)

    def __call__(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool,
                 save_scores: str | None = None) -> tuple[dict[str, float], np.ndarray | None]:
        """Dice per class over the loader's cases, and an image/reference/prediction picture."""
        picture = None
        for batch in loader:
            probs = self.target.activate(average_logits([model], batch["image"], self.inferer, device, amp))
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


class SegmentationTask:
    """Segmentation from any datalist source (MSD layout, AMOS, BraTS, ...) with fold selection,
    caching (the ``cache`` group) and patch augmentation (the ``augment`` group)."""

    def build(self, cfg: DictConfig) -> TrainingData:
        data = build_segmentation_data(cfg.dataset, cfg.get("augment"), instantiate(cfg.cache), seed=cfg.seed,
                                       check_dir=cfg.paths.cache_dir)
        validator = SegmentationValidator(instantiate(cfg.inferer), data.target, data.label_names)
        return TrainingData(data.train_loader, data.val_loader, None, data.label_names, data.split, data.task_dir,
                            validator, meta_free_training=data.meta_free_training)
