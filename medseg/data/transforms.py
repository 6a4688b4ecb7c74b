"""Transform chains: deterministic preprocessing (cached once) and random augmentation (every step).

The split matters for speed: everything up to the foreground crop is a pure function of the file,
so it runs once into the cache; only the cheap random patch transforms run per iteration.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from hydra.utils import instantiate
from monai import transforms as mt
from omegaconf import DictConfig


def is_nonzero(x: torch.Tensor) -> torch.Tensor:
    """Foreground for cropping: after CT windowing air is 0, after MRI z-score (nonzero) background is 0."""
    return x != 0


def _flat(transform: Any) -> list[Any]:
    """A nested ``Compose`` spliced into its steps: MONAI's ``Compose`` counts as random, and
    ``CacheDataset`` stops caching at the first random step."""
    return list(transform.flatten().transforms) if isinstance(transform, mt.Compose) else [transform]


def preprocessing(
    cfg: DictConfig,
    keys: Sequence[str] = ("image", "label"),
    crop_foreground: bool = True,
) -> mt.Compose:
    """Deterministic chain: load, channel-first, RAS, resample, normalise intensity, crop to foreground.

    Args:
        cfg: the ``dataset`` config (``spacing``, ``intensity``; optional ``label_transform``, e.g.
            BraTS labels to regions, and ``crop_foreground``).
        keys: ``("image", "label")`` for training data, ``("image",)`` for unlabelled scans.
        crop_foreground: predict disables it to keep the full field of view.
    """
    interp = tuple("nearest" if k == "label" else "bilinear" for k in keys)
    chain: list[Any] = [
        mt.LoadImaged(keys=list(keys), ensure_channel_first=True, image_only=True),
        mt.EnsureTyped(keys=list(keys), dtype=torch.float32),
        *(_flat(instantiate(cfg.label_transform)) if "label" in keys and cfg.get("label_transform") else []),
        mt.Orientationd(keys=list(keys), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys=list(keys), pixdim=list(cfg.spacing), mode=interp),
        instantiate(cfg.intensity),
    ]
    if crop_foreground and cfg.get("crop_foreground", True):
        chain.append(mt.CropForegroundd(keys=list(keys), source_key="image", select_fn=is_nonzero, margin=2))
    return mt.Compose(chain)


def augmentation(cfg: DictConfig | None) -> mt.Compose:
    """Random chain from the ``augment`` config: a mapping of named transforms applied in order.

    A named entry set to null is skipped, so ``augment.rot90=null`` switches one off.
    """
    return mt.Compose([instantiate(t) for t in (cfg or {}).values() if t is not None])
