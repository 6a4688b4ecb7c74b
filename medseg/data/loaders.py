"""Datasets and loaders: fold selection, caching and patch sampling for segmentation, and the one
way every task kind turns its datasets into loaders (``dataset.loader``)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from hydra.utils import instantiate
from monai.data import Dataset
from monai.transforms import Compose
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from medseg.core import distributed
from medseg.core.errors import MedsegError
from medseg.core.folders import beside_data
from medseg.core.targets import ClassLabels, Regions
from medseg.data import datalist
from medseg.data.caching import CacheMode
from medseg.data.integrity import check_cases
from medseg.data.transforms import (
    augmentation,
    cached_augment_settings,
    is_random,
    preprocessing,
)

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
    meta_free_training: bool = False  # see CacheMode.meta_free_training


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
        first = Path(missing[0])
        what = (f"is a symlink to {os.readlink(first)}, which does not exist" if first.is_symlink()
                else "is listed for " + str(where) + " but missing")
        raise MedsegError(f"{first} {what} ({len(missing)} file(s) missing); re-download, fix the link or verify the data")


def select_split(cfg: DictConfig, data: datalist.Datalist,
                 state_dir: Path | None = None) -> tuple[list[dict], list[dict], dict[str, list[str]]]:
    """Train and validation cases of fold ``cfg.fold`` (or the official validation set).

    ``fold=all`` trains on every labelled case (nnU-Net's ``all`` fold: the final model once the
    recipe is settled by cross-validation); it is still validated on fold 0's validation cases,
    which it has then seen in training, so those scores are no held-out estimate.

    Args:
        state_dir: where ``splits.json`` is kept (default: the datalist's root).
    """
    def named(cases: dict[str, dict], ids: list[str]) -> list[dict]:  # the id travels with the case (error messages)
        return [{**cases[c], "case": c} for c in ids]

    if data.fixed_val is not None:
        split = {"train": sorted(data.cases), "val": sorted(data.fixed_val)}
        return named(data.cases, split["train"]), named(data.fixed_val, split["val"]), split
    if data.folds is not None:  # fixed by the source (nnU-Net's splits_final.json): kept exactly
        folds, where = data.folds, f"the dataset's fixed split in {data.root}"
    else:
        folder = state_dir or data.root
        folds = datalist.load_or_create_splits(folder, list(data.cases), cfg.num_folds, cfg.split_seed,
                                               shipped=data.root if folder != data.root else None, groups=data.groups)
        where = str(folder / datalist.SPLITS_FILE)
    if cfg.fold == "all":
        log.warning("dataset.fold=all: training on all %d labelled cases; validation scores are on fold 0's "
                    "validation cases, seen in training (not a held-out estimate)", len(data.cases))
        split = {"train": sorted(data.cases), "val": folds[0]["val"]}
        return named(data.cases, split["train"]), named(data.cases, split["val"]), split
    if isinstance(cfg.fold, bool) or not isinstance(cfg.fold, int) or not 0 <= cfg.fold < len(folds):
        raise MedsegError(f"dataset.fold={cfg.fold} but {where} has {len(folds)} folds: use 0..{len(folds) - 1}, "
                          "or all (train on every case)")
    split = folds[cfg.fold]
    return named(data.cases, split["train"]), named(data.cases, split["val"]), split


def make_loaders(cfg: DictConfig, train: Dataset, val: Dataset, test: Dataset | None = None,
                 val_batch_size: int | None = None) -> tuple[DataLoader, DataLoader, DataLoader | None]:
    """Loaders for every task kind, all built by ``dataset.loader`` (``_target_``, partial).

    Training batches are shuffled; validation and test keep their order.
    """
    loader = instantiate(cfg.loader)
    eval_batch = val_batch_size or cfg.batch_size
    return (loader(train, batch_size=cfg.batch_size, shuffle=True, drop_last=False),
            loader(val, batch_size=eval_batch, shuffle=False),
            loader(test, batch_size=eval_batch, shuffle=False) if test is not None else None)


def build_segmentation_data(cfg: DictConfig, augment: DictConfig | None, cache: CacheMode,
                            seed: int = 0, check_dir: str | Path | None = None) -> SegmentationData:
    """Builds train/val loaders for fold ``cfg.fold`` of the saved split, cached as ``cache`` says.

    Under torchrun each process caches only its shard of the cases (MONAI's sharded-caching
    recipe): training shards are padded to equal length so all ranks step together; validation
    shards are not, their per-case scores are gathered.

    Args:
        cfg: the ``dataset`` config.
        augment: the ``augment`` config: ``cached`` entries are stored with the preprocessing,
            ``random`` ones run on every sample.
        cache: where the preprocessed cases live (the ``cache`` group).
        seed: seeds the random transforms (offset by the rank, so ranks draw different patches).
        check_dir: where a clean integrity check is remembered (``dataset.check`` reads every
            case once before anything is cached).
    """
    with distributed.main_process_first():  # rank 0 generates data and writes splits.json first
        task_dir = resolve_task_dir(cfg)
        data: datalist.Datalist = instantiate(cfg.source)
        _check(cfg, data)
        state_dir = beside_data(data.root, check_dir, cfg.name) if check_dir else None
        train_cases, val_cases, split = select_split(cfg, data, state_dir)
    if cfg.get("max_cases"):  # quick experiments on a subset; the saved split is unchanged
        train_cases, val_cases = train_cases[: cfg.max_cases], val_cases[: max(1, cfg.max_cases // 4)]
    train_cases, val_cases = distributed.shard(train_cases, even=True), distributed.shard(val_cases, even=False)
    target = instantiate(cfg.target)
    if cfg.get("check", True):
        check_cases([*train_cases, *val_cases], int(cfg.in_channels), target.file_label_values(data.label_names),
                    record_dir=Path(check_dir) / "integrity" if check_dir else None)
    deterministic = preprocessing(cfg)
    cached_augment, random_augment = augmentation(augment)
    train_chain = Compose([*deterministic.transforms, *cached_augment.transforms, *random_augment.transforms])
    train_chain.set_random_state(seed + distributed.rank())
    cache_ends = train_chain.get_index_of_first(is_random)
    if cache_ends is not None and cache_ends < len(deterministic.transforms) + len(cached_augment.transforms):
        step = train_chain.transforms[cache_ends]
        raise MedsegError(f"{type(step).__name__} in the dataset's preprocessing is random or not a MONAI transform; "
                          "preprocessing is cached and must be deterministic: move it to augment.random")
    cache.check([*train_cases, *val_cases], cfg, loader_workers=int(cfg.num_workers), copies=distributed.local_world_size())
    train_ds = cache.build(train_cases, train_chain, cfg, cached_augment_settings(augment))
    val_ds = cache.build(val_cases, deterministic, cfg, {})
    train_loader, val_loader, _ = make_loaders(cfg, train_ds, val_ds, val_batch_size=1)
    log.info("fold %s: %d training / %d validation cases from %s (cache=%s)", cfg.fold, len(train_ds), len(val_ds),
             task_dir, cache)
    return SegmentationData(train_loader, val_loader, data.label_names, split, task_dir, target,
                            meta_free_training=cache.meta_free_training)
