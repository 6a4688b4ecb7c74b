"""Datasets and loaders for a segmentation task: fold selection, caching, patch sampling."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from monai.transforms import Compose, RandomizableTrait, Transform
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from medseg.data import caching, datalist
from medseg.data.transforms import augmentation, preprocessing
from medseg.engine import distributed
from medseg.errors import MedsegError
from medseg.metrics.targets import ClassLabels, Regions

log = logging.getLogger(__name__)


@dataclass
class SegmentationData:
    """What the engine needs from the data side."""

    train_loader: DataLoader
    val_loader: DataLoader
    label_names: dict[int, str]
    split: dict[str, list[str]]
    task_dir: Path
    target: ClassLabels | Regions
    # Every training sample comes out of the memory cache already preprocessed, so the random
    # transforms may run without MetaTensor bookkeeping. Not so for disk/none/partial caches:
    # loading and resampling there need the affine that the bookkeeping carries.
    meta_free_training: bool = False


def resolve_task_dir(cfg: DictConfig) -> Path:
    """The data folder, prepared (e.g. the synthetic task generated) if the config says how.

    Raises:
        MedsegError: the folder is missing and cannot be made; the message says how to get it.
    """
    task_dir = Path(cfg.task_dir)
    if not task_dir.is_dir():
        if cfg.get("prepare") is not None:
            log.info("preparing %s", task_dir)
            instantiate(cfg.prepare)
        else:
            hint = cfg.get("download_hint") or "put the data there"
            raise MedsegError(
                f"data folder {task_dir} not found: run `{hint}`, set paths.data_dir / "
                "MEDSEG_DATA to where it lives, or train on the embedded task with dataset=synthetic"
            )
    return task_dir


def _check(cfg: DictConfig, data: datalist.Datalist) -> None:
    where = data.root / "dataset.json" if (data.root / "dataset.json").is_file() else data.root
    if len(data.label_names) != cfg.num_classes:
        raise MedsegError(f"{where} defines {len(data.label_names)} labels but dataset.num_classes={cfg.num_classes}; fix the dataset config")
    if not data.cases:
        raise MedsegError(f"{where} lists no labelled training cases")
    cases = [*data.cases.values(), *(data.fixed_val or {}).values()]
    files = [f for c in cases for key in ("image", "label") for f in ([c[key]] if isinstance(c[key], str) else c[key])]
    missing = [f for f in files if not Path(f).is_file()]
    if missing:
        raise MedsegError(f"{missing[0]} is listed for {where} but missing ({len(missing)} files missing); re-download or verify the data")


def select_split(cfg: DictConfig, data: datalist.Datalist) -> tuple[list[dict], list[dict], dict[str, list[str]]]:
    """Train and validation cases of fold ``cfg.fold`` (or the official validation set)."""
    if data.fixed_val is not None:
        split = {"train": sorted(data.cases), "val": sorted(data.fixed_val)}
        return [data.cases[c] for c in split["train"]], [data.fixed_val[c] for c in split["val"]], split
    folds = datalist.load_or_create_splits(data.root, list(data.cases), cfg.num_folds, cfg.split_seed)
    if not 0 <= cfg.fold < len(folds):
        raise MedsegError(f"dataset.fold={cfg.fold} but {data.root / datalist.SPLITS_FILE} has {len(folds)} folds")
    split = folds[cfg.fold]
    return [data.cases[c] for c in split["train"]], [data.cases[c] for c in split["val"]], split


def _ends_cache(transform: Any) -> bool:
    """MONAI's rule (CacheDataset, PersistentDataset): caching stops at the first random or
    non-``Transform`` step of a chain."""
    return isinstance(transform, RandomizableTrait) or not isinstance(transform, Transform)


def _cached_steps(chain: Compose) -> int:
    """How many leading steps of ``chain`` a cache stores."""
    first = chain.get_index_of_first(_ends_cache)
    return len(chain.transforms) if first is None else first


def cached_augment_entries(augment: DictConfig | None, chain: Compose) -> dict[str, Any]:
    """The leading deterministic entries of the ``augment`` config: the cache stores their output."""
    names = [name for name, t in (augment or {}).items() if t is not None]
    return {name: OmegaConf.to_container(augment[name], resolve=True) for name in names[: _cached_steps(chain)]}


def build_segmentation_data(cfg: DictConfig, augment: DictConfig | None, seed: int = 0) -> SegmentationData:
    """Builds train/val datasets for fold ``cfg.fold`` of the saved split, cached as ``cfg.cache`` says.

    Under torchrun each process caches only its shard of the cases (MONAI's sharded-caching
    recipe): training shards are padded to equal length so all ranks step together; validation
    shards are not, their per-case scores are gathered.

    Args:
        cfg: the ``dataset`` config.
        augment: the ``augment`` config (random patch transforms, applied after the cache).
        seed: seeds the random transforms (offset by the rank, so ranks draw different patches).
    """
    caching.check_cache_mode(cfg)
    with distributed.main_process_first():  # rank 0 generates data and writes splits.json first
        task_dir = resolve_task_dir(cfg)
        data: datalist.Datalist = instantiate(cfg.source)
        _check(cfg, data)
        train_cases, val_cases, split = select_split(cfg, data)
    if cfg.get("max_cases"):  # quick experiments on a subset; the saved split is unchanged
        train_cases, val_cases = train_cases[: cfg.max_cases], val_cases[: max(1, cfg.max_cases // 4)]
    train_cases, val_cases = distributed.shard(train_cases, even=True), distributed.shard(val_cases, even=False)
    deterministic = preprocessing(cfg)
    random_chain = augmentation(augment)
    # The cache holds the output of the leading deterministic transforms, up to the first random one.
    train_chain = Compose([*deterministic.transforms, *random_chain.transforms])
    train_chain.set_random_state(seed + distributed.rank())
    train_folder = val_folder = None
    if cfg.cache == "memory":
        caching.check_memory_cache_fits([*train_cases, *val_cases], cfg, copies=distributed.local_world_size())
    elif cfg.cache == "disk":  # the chains differ (crop indices for training), so do their folders
        train_folder = caching.disk_cache_dir(cfg, cached_augment_entries(augment, random_chain))
        val_folder = caching.disk_cache_dir(cfg, {})
        log.info("disk cache: %s (training), %s (validation)", train_folder, val_folder)
    train_ds = caching.cached_dataset(train_cases, train_chain, cfg, train_folder)
    val_ds = caching.cached_dataset(val_cases, deterministic, cfg, val_folder)
    loader = instantiate(cfg.loader)
    train_loader = loader(train_ds, batch_size=cfg.batch_size, shuffle=True, drop_last=False)
    val_loader = loader(val_ds, batch_size=1, shuffle=False)
    log.info("fold %s: %d training / %d validation cases from %s (cache=%s)", cfg.fold, len(train_ds), len(val_ds),
             task_dir, cfg.cache)
    fully_cached = (cfg.cache == "memory" and float(cfg.cache_rate) >= 1.0
                    and _cached_steps(train_chain) >= len(deterministic.transforms))
    return SegmentationData(train_loader, val_loader, data.label_names, split, task_dir, instantiate(cfg.target),
                            meta_free_training=fully_cached)
