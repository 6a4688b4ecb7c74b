"""Where the deterministic preprocessing output lives: RAM, disk, or nowhere (the ``cache`` group).

Each mode is an object chosen by ``_target_`` that knows its own up-front check, how to build its
dataset, and whether training batches may skip MetaTensor bookkeeping:

``MemoryCache``: MONAI ``CacheDataset`` (fastest; ``rate`` caches a fraction). Before filling it,
the cache size is estimated from the image headers and refused with a one-line error when it
would not fit in the memory this process may use.
``DiskCache``: MONAI ``PersistentDataset`` under ``<dir>/<dataset>/<key>/``, where the key hashes
every setting that changes the cached arrays, so a config change never reads a stale cache.
``NoCache``: plain ``Dataset``; every step re-reads and re-preprocesses (low memory, slow).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import monai
import nibabel as nib
import numpy as np
import psutil
import torch
from monai.data import CacheDataset, Dataset, PersistentDataset
from monai.transforms import Compose
from omegaconf import DictConfig, OmegaConf

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import is_image_2d

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when medseg changes what it stores in a disk cache
# Settings of the ``dataset`` config that shape the cached arrays; the rest (batch size, fold,
# workers, ...) only changes how the cache is used.
PREPROCESSING_KEYS = ("spacing", "intensity", "label_transform", "crop_foreground", "in_channels", "num_classes")


def available_memory(device: str = "cpu") -> int:
    """Bytes this process may still allocate: free RAM, or less under a cgroup limit (containers,
    SLURM); free GPU memory for a ``cuda`` device."""
    if device.startswith("cuda"):
        import torch

        return int(torch.cuda.mem_get_info(torch.device(device))[0])
    available = psutil.virtual_memory().available
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit != "max" and int(limit) < 1 << 60:
                available = min(available, int(limit) - int(Path(usage_file).read_text()))
            break
        except (OSError, ValueError):
            continue
    return max(int(available), 0)


def _first_file(entry: str | Sequence[str]) -> str:
    return entry if isinstance(entry, str) else entry[0]


def estimate_case_bytes(case: dict[str, Any], spacing: Sequence[float], in_channels: int) -> int:
    """Upper bound of one cached case: float32 image channels + float32 label at the target spacing.

    Read from the file header only (no voxel data): NIfTI through nibabel, 2D images through PIL.
    The foreground crop usually shrinks the volume, so the real cache is smaller; per-class crop
    indices are capped (``max_samples_per_class``) and negligible next to the arrays.
    """
    first = _first_file(case["image"])
    if is_image_2d(first):
        from PIL import Image

        with Image.open(first) as img:
            shape, zooms = np.array([img.height, img.width, 1], float), np.ones(3)
    else:
        header = nib.load(first).header
        shape, zooms = np.array(header.get_data_shape()[:3], float), np.array(header.get_zooms()[:3], float)
    target = np.where(np.asarray(spacing, float) > 0, np.asarray(spacing, float), zooms)  # 0 keeps the stored spacing
    voxels = float(np.prod(np.ceil(shape * zooms / target)))
    channels = max(in_channels, 1 if isinstance(case["image"], str) else len(case["image"]))
    return int(voxels * 4 * (channels + ("label" in case)))


def check_memory_cache_fits(cases: Sequence[dict[str, Any]], cfg: DictConfig, rate: float = 1.0, device: str = "cpu",
                            copies: int = 1) -> int:
    """Estimates the in-memory cache and refuses it when it would not fit.

    Args:
        cases: every case this process caches (training and validation).
        cfg: the ``dataset`` config (``name``, ``spacing``, ``in_channels``).
        rate: the fraction of cases cached.
        device: where the cache lives (``cpu`` or a CUDA device).
        copies: processes on this machine caching a shard of the same size (DDP ranks per node).

    Returns:
        The estimate in bytes.

    Raises:
        MedsegError: the estimate exceeds the available memory; names ``cache=disk``.
    """
    if not cases:
        return 0
    try:
        per_case = [estimate_case_bytes(c, cfg.spacing, cfg.in_channels) for c in cases]
    except Exception as err:  # non-NIfTI or unreadable header: MONAI will report the file itself
        log.warning("cache size not estimated (%s: %s)", type(err).__name__, err)
        return 0
    needed = int(sum(per_case) * float(rate) * copies)
    available = available_memory(device)
    gib = 1 << 30
    log.info("in-memory cache estimate: %.2f GiB for %d cases (%.1f GiB available)", needed / gib, len(cases), available / gib)
    if needed > 0.9 * available:
        fit = max(0.0, 0.9 * available / needed * float(rate))
        raise MedsegError(
            f"caching {len(cases)} cases of {cfg.name} in memory needs ~{needed / gib:.1f} GiB but only "
            f"{available / gib:.1f} GiB is available{'' if device == 'cpu' else ' on ' + device}: use cache=disk (or cache.rate={fit:.2f}, "
            "or cache=none)"
        )
    return needed


def cache_settings(dataset_cfg: DictConfig, cached_augment: dict[str, Any]) -> dict[str, Any]:
    """Everything that shapes the cached arrays: preprocessing settings, the cached leading augment
    entries, MONAI's version and medseg's cache format."""
    resolved = OmegaConf.to_container(dataset_cfg, resolve=True)
    return {"dataset": {k: resolved.get(k) for k in PREPROCESSING_KEYS}, "augment": cached_augment,
            "monai": monai.__version__, "format": CACHE_FORMAT}


def cache_key(settings: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def hash_case(case: dict[str, Any]) -> bytes:
    """PersistentDataset item key: the file paths plus each file's size and modification time, so a
    re-downloaded or edited file is preprocessed again."""
    files = [f for v in case.values() for f in ([v] if isinstance(v, str) else v) if isinstance(f, str)]
    stats = [[st.st_size, st.st_mtime_ns] for st in map(os.stat, filter(os.path.isfile, files))]
    return hashlib.md5(json.dumps([case, stats], sort_keys=True, default=str).encode()).hexdigest().encode()


def disk_cache_dir(root: str | Path, dataset_cfg: DictConfig, cached_augment: dict[str, Any]) -> Path:
    """``<root>/<dataset name>/<key>/``, with the settings behind the key in ``settings.json``."""
    settings = cache_settings(dataset_cfg, cached_augment)
    folder = Path(root) / str(dataset_cfg.name) / cache_key(settings)
    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "settings.json").exists():
        tmp = folder / f".settings.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(settings, indent=2, default=str))
        os.replace(tmp, folder / "settings.json")
    return folder


class HealingPersistentDataset(PersistentDataset):
    """MONAI's ``PersistentDataset`` that recomputes an unreadable cache entry instead of failing.

    A writer killed mid-write or a full disk can leave a truncated ``.pt`` file; MONAI recomputes
    only files with a bad magic number and raises on the rest (a truncated zip archive), which broke
    the cache for good. Any entry that does not load is now logged, deleted and recomputed.
    """

    def _cachecheck(self, item_transformed):
        if self.cache_dir is not None:
            name = f"{self.hash_func(item_transformed).decode('utf-8')}{self.transform_hash}.pt"
            entry = Path(self.cache_dir) / name
            if entry.is_file():
                try:
                    return torch.load(entry, weights_only=True)  # a cache file is data, never code
                except Exception as err:  # truncated, corrupt or foreign: recompute it
                    log.warning("disk cache entry %s is unreadable (%s): recomputing it", entry, type(err).__name__)
                    entry.unlink(missing_ok=True)
        return super()._cachecheck(item_transformed)


class CacheMode:
    """What the loaders ask of a cache mode; the subclasses below are chosen by ``cache._target_``."""

    name = "none"

    def check(self, cases: Sequence[dict[str, Any]], dataset_cfg: DictConfig, loader_workers: int, copies: int = 1) -> None:
        """Refuses, before any caching, a setting that cannot work; names the fix."""

    def build(self, cases: Sequence[dict[str, Any]], transform: Compose, dataset_cfg: DictConfig,
              cached_augment: dict[str, Any]) -> Dataset:
        """The dataset of ``cases`` through ``transform``; ``cached_augment`` are the cached augment
        entries (part of what a persistent cache is keyed by)."""
        return Dataset(list(cases), transform)

    @property
    def meta_free_training(self) -> bool:
        """Every training sample comes out of the cache already preprocessed, so the random
        transforms may run without MetaTensor bookkeeping. Not so where cases are loaded and
        resampled during training: that needs the affine the bookkeeping carries."""
        return False

    def __str__(self) -> str:
        return self.name


class NoCache(CacheMode):
    """Plain ``Dataset``: every step re-reads and re-preprocesses (little RAM and disk, slow)."""


class MemoryCache(CacheMode):
    """MONAI ``CacheDataset``, checked against the available memory first.

    Args:
        rate: fraction of cases held in memory; the rest load every time.
        workers: threads filling the cache.
        device: ``cpu``, or ``cuda`` for MONAI's fast-training recipe (cache and crops on the GPU).
        copy: deep-copy each cached case before the random transforms (MONAI's ``copy_cache``).
            Off by default: medseg's random chains crop views and every later step returns new
            tensors (tested: the cache is unchanged after training epochs), and the copy of the
            whole case per sample was a quarter of the loader's time. Turn it on for a random
            transform of your own that writes into its input.
    """

    name = "memory"

    def __init__(self, rate: float = 1.0, workers: int = 2, device: str = "cpu", copy: bool = False):
        self.rate, self.workers, self.device = float(rate), int(workers), str(device or "cpu")
        self.copy = bool(copy)

    def check(self, cases, dataset_cfg, loader_workers, copies=1):
        if self.device != "cpu" and loader_workers:
            raise MedsegError(f"cache.device={self.device} needs dataset.num_workers=0 (loader workers cannot share GPU "
                              "tensors); add dataset.loader._target_=monai.data.ThreadDataLoader")
        check_memory_cache_fits(cases, dataset_cfg, self.rate, self.device, copies)

    def build(self, cases, transform, dataset_cfg, cached_augment):
        return CacheDataset(list(cases), transform, cache_rate=self.rate, num_workers=self.workers,
                            progress=sys.stderr.isatty(), copy_cache=self.copy)

    @property
    def meta_free_training(self) -> bool:
        return self.rate >= 1.0


class DiskCache(CacheMode):
    """MONAI ``PersistentDataset`` in ``<dir>/<dataset>/<key>/`` (data larger than RAM).

    Args:
        dir: root of the cache (``paths.cache_dir``: ``MEDSEG_CACHE`` or ``<data_dir>/cache``).
    """

    name = "disk"

    def __init__(self, dir: str):
        self.root = Path(dir)

    def build(self, cases, transform, dataset_cfg, cached_augment):
        folder = disk_cache_dir(self.root, dataset_cfg, cached_augment)
        log.info("disk cache: %s", folder)
        return HealingPersistentDataset(list(cases), transform, cache_dir=folder, hash_func=hash_case)
