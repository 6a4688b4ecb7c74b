"""MedMNIST npz files (the official format) as datasets: official train/val/test splits."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from monai.data import Dataset
from monai.transforms import Compose

from medseg.core.errors import MedsegError
from medseg.data.download import medmnist_filename


def npz_path(data_dir: str | Path, flag: str, size: int) -> Path:
    return Path(data_dir) / "medmnist" / medmnist_filename(flag, size)


def load_split(path: Path, split: str, multilabel: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Images as float ``(N, C, *spatial)`` in [0, 1] and labels (long ``(N,)``, or float ``(N, L)`` multi-label).

    Grey 2D images ``(N, H, W)`` and 3D volumes ``(N, D, H, W)`` get one channel; RGB images
    ``(N, H, W, 3)`` are moved to channel-first.
    """
    try:
        with np.load(path) as npz:
            images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
    except FileNotFoundError as err:
        raise MedsegError(f"{path} not found: run `make download DATASET=medmnist TASK={path.stem.split('_')[0]}`") from err
    except (KeyError, ValueError, OSError) as err:
        raise MedsegError(f"{path} is not a MedMNIST npz ({err}); delete it and download again") from err
    x = torch.from_numpy(images).float() / 255.0
    x = x.permute(0, 3, 1, 2) if x.ndim == 4 and images.shape[-1] == 3 else x.unsqueeze(1)
    y = torch.from_numpy(labels.astype(np.float32 if multilabel else np.int64))
    return x, (y if multilabel else y.reshape(-1))


def medmnist_dataset(path: Path, split: str, multilabel: bool, transform: Compose | None = None) -> Dataset:
    x, y = load_split(path, split, multilabel)
    return Dataset([{"image": xi, "label": yi} for xi, yi in zip(x, y)], transform=transform)
