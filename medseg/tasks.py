"""Task kinds, chosen by ``dataset.task`` (``_target_``): each builds its data and its validator.

The engine (training loop, checkpoints, logging, resume, run folder) is the same for both; only
what a task builds differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from monai.data import DataLoader, Dataset
from omegaconf import DictConfig

from medseg.data.loaders import build_segmentation_data
from medseg.data.medmnist import medmnist_dataset, npz_path
from medseg.data.transforms import augmentation
from medseg.engine import distributed
from medseg.engine.validators import ClassificationValidator, SegmentationValidator


@dataclass
class TaskData:
    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader | None  # labelled test split (MedMNIST); None where labels are withheld (MSD)
    label_names: dict[int, str]
    split: dict[str, Any]
    source: Path
    validator: Any
    meta_free_training: bool = False  # training batches need no MetaTensor metadata (see the trainer)


class SegmentationTask:
    """3D segmentation from an MSD-layout (or converted) datalist."""

    def build(self, cfg: DictConfig) -> TaskData:
        data = build_segmentation_data(cfg.dataset, cfg.get("augment"), seed=cfg.seed)
        validator = SegmentationValidator(instantiate(cfg.inferer), data.target, data.label_names)
        return TaskData(data.train_loader, data.val_loader, None, data.label_names, data.split, data.task_dir, validator,
                        meta_free_training=data.meta_free_training)


class ClassificationTask:
    """MedMNIST classification (2D or 3D) on the official splits.

    Args:
        flag: MedMNIST flag (``pathmnist``, ``organmnist3d``, ...).
        size: image size (28, 64, 128, 224; 3D: 28, 64).
        task_type: the flag's ``task`` from ``medmnist.INFO``.
    """

    def __init__(self, flag: str, size: int, task_type: str):
        self.flag, self.size, self.task_type = flag, size, task_type

    def build(self, cfg: DictConfig) -> TaskData:
        from medmnist import INFO

        path = npz_path(cfg.paths.data_dir, self.flag, self.size)
        multilabel = self.task_type.startswith("multi-label")
        train = medmnist_dataset(path, "train", multilabel, augmentation(cfg.get("augment")))
        # torchrun: each rank trains on its shard; every rank scores the (small) full val/test splits
        n_train = len(train)
        train = Dataset(distributed.shard(list(train.data), even=True), train.transform)
        val, test = (medmnist_dataset(path, s, multilabel) for s in ("val", "test"))
        d = cfg.dataset
        loader = lambda ds, shuffle: DataLoader(ds, batch_size=d.batch_size, shuffle=shuffle, num_workers=d.num_workers)
        names = {int(k): v for k, v in INFO[self.flag]["label"].items()}
        split = {"train": n_train, "val": len(val), "test": len(test), "file": str(path)}
        return TaskData(loader(train, True), loader(val, False), loader(test, False), names, split, path,
                        ClassificationValidator(self.task_type), meta_free_training=True)
