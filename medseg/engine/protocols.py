"""What the training engine needs from a task kind, and nothing more: the engine never asks which
task it is running. Task kinds (``medseg.tasks``) build these; the trainer consumes them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch.utils.data import DataLoader


class Validator(Protocol):
    """Scores a network on a loader; ``key`` names the metric that picks the best epoch."""

    key: str

    def __call__(self, model: torch.nn.Module, loader: DataLoader, device: torch.device, amp: bool,
                 save_scores: str | None = None) -> tuple[dict[str, float], np.ndarray | None]:
        """``({metric: value}, picture or None)``; ``save_scores`` keeps raw scores (test split)."""
        ...

    def describe(self, metrics: dict[str, float]) -> str:
        """One line for the log and the terminal."""
        ...


@dataclass
class TrainingData:
    """Loaders, label names and the validator of one task, as a task kind builds them."""

    train_loader: DataLoader
    val_loader: DataLoader
    test_loader: DataLoader | None  # labelled test split (MedMNIST); None where labels are withheld (MSD)
    label_names: dict[int, str]
    split: dict[str, Any]
    source: Path
    validator: Validator
    meta_free_training: bool = False  # training batches need no MetaTensor metadata (see the trainer)
