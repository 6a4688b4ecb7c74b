"""Transform chains: deterministic preprocessing (cached once) and random augmentation (every step).

The split matters for speed: everything up to the foreground crop is a pure function of the file,
so it runs once into the cache; only the cheap random patch transforms run per iteration.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from hydra.utils import instantiate
from monai import transforms as mt
from omegaconf import DictConfig, OmegaConf

from medseg.core.errors import MedsegError
from medseg.data.readers import image_loader


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
        image_loader([k for k in keys if k != "label"], channels=int(cfg.in_channels)),
        *([image_loader(["label"], kind="mask")] if "label" in keys else []),
        mt.EnsureTyped(keys=list(keys), dtype=torch.float32),
        *(_flat(instantiate(cfg.label_transform, _convert_="all")) if "label" in keys and cfg.get("label_transform") else []),
        mt.Orientationd(keys=list(keys), axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
        mt.Spacingd(keys=list(keys), pixdim=list(cfg.spacing), mode=interp),
        instantiate(cfg.intensity, _convert_="all"),
    ]
    if crop_foreground and cfg.get("crop_foreground", True):
        chain.append(mt.CropForegroundd(keys=list(keys), source_key="image", select_fn=is_nonzero, margin=2))
    return mt.Compose(chain)


def is_random(transform: Any) -> bool:
    """MONAI's cache rule (CacheDataset, PersistentDataset): caching stops at the first random or
    non-``Transform`` step of a chain."""
    return isinstance(transform, mt.RandomizableTrait) or not isinstance(transform, mt.Transform)


def augmentation(cfg: DictConfig | None) -> tuple[mt.Compose, mt.Compose]:
    """The ``augment`` config as two chains: ``cached`` (deterministic, stored with the
    preprocessing) and ``random`` (run on every sample), each a mapping of named transforms.

    A named entry set to null is skipped, so ``augment.random.rot90=null`` switches one off.

    Raises:
        MedsegError: a ``cached`` entry is random; caching it would freeze one draw for ever.
    """
    cfg = cfg or {}
    # _convert_="all": plain lists, not OmegaConf ListConfigs, reach MONAI; its per-call argument
    # checks (ensure_tuple_rep, fall_back_tuple) on a ListConfig took a quarter of a batch's time.
    cached = {name: instantiate(t, _convert_="all") for name, t in (cfg.get("cached") or {}).items() if t is not None}
    for name, transform in cached.items():
        if is_random(transform):
            raise MedsegError(f"augment.cached.{name} ({type(transform).__name__}) is random or not a MONAI transform: "
                              f"move it to augment.random (cached steps run once per case)")
    random = [instantiate(t, _convert_="all") for t in (cfg.get("random") or {}).values() if t is not None]
    return mt.Compose(list(cached.values())), mt.Compose(random)


def cached_augment_settings(cfg: DictConfig | None) -> dict[str, Any]:
    """The cached augment entries as plain data: part of what a disk cache is keyed by."""
    cached = (cfg or {}).get("cached") or {}
    return {name: OmegaConf.to_container(t, resolve=True) for name, t in cached.items() if t is not None}
