"""cache=memory|disk|none: same samples, cache keyed by the preprocessing settings, and an
in-memory cache that would not fit refused up front with a one-line error."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from hydra.errors import MissingConfigException
from hydra.utils import instantiate
from monai.data import CacheDataset, Dataset, PersistentDataset

from medseg.core.errors import MedsegError
from medseg.data import caching
from medseg.data.loaders import build_segmentation_data
from tests.conftest import ROOT, TINY


def _data(cfg):
    return build_segmentation_data(cfg.dataset, cfg.augment, instantiate(cfg.cache), seed=cfg.seed)


def _build(tiny_cfg, *overrides):
    cfg = tiny_cfg(*overrides)
    return cfg, _data(cfg)


def _val_item(data) -> dict:
    return data.val_loader.dataset[0]


def test_every_cache_mode_gives_the_same_preprocessed_case(tiny_cfg, tmp_path):
    _, memory = _build(tiny_cfg, "cache=memory")
    _, disk = _build(tiny_cfg, "cache=disk", f"paths.cache_dir={tmp_path}/cache")
    _, none = _build(tiny_cfg, "cache=none")
    assert isinstance(memory.val_loader.dataset, CacheDataset)
    assert isinstance(disk.val_loader.dataset, PersistentDataset)
    assert type(none.val_loader.dataset) is Dataset
    reference = _val_item(memory)
    for other in (disk, none):
        item = _val_item(other)
        for key in ("image", "label"):
            assert torch.equal(torch.as_tensor(item[key]), torch.as_tensor(reference[key]))
    batch = next(iter(disk.train_loader))  # training reads cached per-class indices and crops patches
    assert batch["image"].shape[-3:] == (32, 32, 32)


def test_disk_cache_folder_is_keyed_by_preprocessing_settings(tiny_cfg, tmp_path):
    tiny_cfg = functools.partial(tiny_cfg, f"paths.cache_dir={tmp_path}/cache")
    cfg, data = _build(tiny_cfg, "cache=disk")
    data.train_loader.dataset[0], data.val_loader.dataset[0]  # PersistentDataset fills on first read
    root = caching.Path(cfg.cache.dir) / "synthetic"
    folders = {p.name for p in root.iterdir()}
    assert len(folders) == 2  # training chain (with crop indices) and validation chain
    files_before = {p: p.stat().st_mtime_ns for p in root.rglob("*.pt")}
    assert files_before
    _build(tiny_cfg, "cache=disk", "dataset.batch_size=2", "dataset.fold=0")  # same preprocessing
    assert {p.name for p in root.iterdir()} == folders
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*.pt")} == files_before  # reused, not rewritten
    _build(tiny_cfg, "cache=disk", "dataset.spacing=[5.0,5.0,5.0]")
    assert len({p.name for p in root.iterdir()} - folders) == 2  # new settings: new folders, old ones untouched
    for folder in root.iterdir():
        settings = json.loads((folder / "settings.json").read_text())
        assert settings["dataset"]["spacing"] in ([4.0, 4.0, 4.0], [5.0, 5.0, 5.0])


def test_disk_cache_item_key_follows_the_file_contents(synthetic_data_dir, tmp_path):
    image = tmp_path / "case.nii.gz"
    image.write_bytes((synthetic_data_dir / "Task99_Synthetic" / "imagesTr" / "synthetic_000.nii.gz").read_bytes())
    case = {"image": str(image), "label": str(image)}
    before = caching.hash_case(case)
    assert caching.hash_case(dict(case)) == before
    os.utime(image, ns=(0, 0))  # a re-downloaded or edited file
    assert caching.hash_case(case) != before


def test_memory_estimate_bounds_the_cached_case(tiny_cfg):
    cfg, data = _build(tiny_cfg, "dataset.crop_foreground=false")
    case = data.val_loader.dataset.data[0]
    estimate = caching.estimate_case_bytes(case, cfg.dataset.spacing, cfg.dataset.in_channels)
    item = _val_item(data)
    actual = sum(torch.as_tensor(item[k]).numel() * 4 for k in ("image", "label"))
    assert actual <= estimate <= 1.15 * actual


def test_memory_cache_that_cannot_fit_is_refused_before_caching(tiny_cfg):
    cfg = tiny_cfg("dataset.spacing=[0.05,0.05,0.05]")  # ~10^10 voxels per case: far beyond any RAM
    with pytest.raises(MedsegError, match=r"needs ~\d+\.\d GiB but only .* available: use cache=disk"):
        _data(cfg)


def test_memory_cache_refusal_is_one_line_and_exit_2(synthetic_data_dir, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "medseg.train", f"paths.data_dir={synthetic_data_dir}", *TINY,
                           "dataset.spacing=[0.05,0.05,0.05]", f"hydra.run.dir={tmp_path}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "cache=disk" in errors[0] and "Traceback" not in proc.stderr


def test_unknown_cache_mode_is_named_with_the_options(tiny_cfg):
    with pytest.raises(MissingConfigException, match="cache/ram") as err:
        tiny_cfg("cache=ram")
    assert set(err.value.options) == {"memory", "disk", "none"}


def test_cache_modes_are_objects_that_know_their_rules(tiny_cfg, tmp_path):
    modes = {m: instantiate(tiny_cfg(f"cache={m}", f"paths.cache_dir={tmp_path}").cache) for m in ("memory", "disk", "none")}
    assert {m: type(c) for m, c in modes.items()} == {"memory": caching.MemoryCache, "disk": caching.DiskCache,
                                                       "none": caching.NoCache}
    assert [m for m, c in modes.items() if c.meta_free_training] == ["memory"]
    assert not instantiate(tiny_cfg("cache.rate=0.5").cache).meta_free_training


def test_random_transform_among_cached_augment_entries_is_a_one_line_error(tiny_cfg):
    from medseg.data.transforms import augmentation

    cfg = tiny_cfg("+augment.cached.jitter={_target_: monai.transforms.RandScaleIntensityd, keys: image, factors: 0.1}")
    with pytest.raises(MedsegError, match="augment.cached.jitter .*RandScaleIntensityd.* move it to augment.random"):
        augmentation(cfg.augment)


def test_disk_cache_key_ignores_random_entries_and_their_order(tiny_cfg, tmp_path):
    """Only the cached entries shape the stored arrays: reordering or dropping random ones keeps the key."""
    from medseg.data.transforms import cached_augment_settings

    def key(cfg):
        return caching.cache_key(caching.cache_settings(cfg.dataset, cached_augment_settings(cfg.augment)))

    base = key(tiny_cfg())
    assert key(tiny_cfg("augment.random.rot90=null", "augment.random.flip_x=null")) == base
    assert key(tiny_cfg("+augment.cached.pad.mode=reflect")) != base


def test_available_memory_is_positive_and_at_most_total_ram():
    import psutil

    assert 0 < caching.available_memory() <= psutil.virtual_memory().total
    assert np.isfinite(caching.available_memory())


@pytest.mark.parametrize("mode", ["disk", "none", "memory-partial"])
def test_training_from_uncached_or_disk_cached_cases_keeps_their_geometry(tiny_cfg, tmp_path, mode):
    """Cases preprocessed during training (disk cache filling, no cache, cache_rate < 1) still need
    their affine: resampling without it would read the spacing as 1 mm and blow up the volume."""
    from medseg.data.transforms import preprocessing
    from medseg.train import train

    cache = ["cache=memory", "cache.rate=0.5"] if mode == "memory-partial" else [f"cache={mode}"]
    cfg = tiny_cfg(*cache, f"paths.cache_dir={tmp_path}/cache", "trainer.steps_per_epoch=4")
    result = train(cfg)
    assert result["epochs"] == 1 and result["best"]["metrics"]["mean_dice"] >= 0.0
    if mode == "disk":  # what training cached has the geometry of preprocessing with metadata on
        split = json.loads((tmp_path / "run" / "split.json").read_text())
        root = cfg.dataset.task_dir
        expected = {tuple(max(n, 32) for n in preprocessing(cfg.dataset)(
            {"image": f"{root}/imagesTr/{c}.nii.gz", "label": f"{root}/labelsTr/{c}.nii.gz"})["image"].shape[1:])
            for c in split["train"] + split["val"]}
        cached = {tuple(torch.load(p, weights_only=True)["image"].shape[1:])
                  for p in (tmp_path / "cache").rglob("*.pt")}
        assert cached and cached <= expected, (cached, expected)


def test_thread_loader_knob_trains(tiny_cfg):
    from monai.data import ThreadDataLoader

    from medseg.train import train

    cfg = tiny_cfg("dataset.loader._target_=monai.data.ThreadDataLoader", "trainer.steps_per_epoch=2")
    assert isinstance(_data(cfg).train_loader, ThreadDataLoader)
    assert train(cfg)["epochs"] == 1


def test_gpu_cache_needs_no_worker_processes(tiny_cfg):
    cfg = tiny_cfg("cache.device=cuda", "dataset.num_workers=2")
    with pytest.raises(MedsegError, match="cache.device=cuda needs dataset.num_workers=0"):
        _data(cfg)


@pytest.mark.parametrize("augment", ["default", "posneg"])
def test_random_transforms_never_write_into_the_uncopied_memory_cache(tiny_cfg, augment):
    """cache.copy=false (the default) hands cached cases to the random chain without a copy: safe
    only while no random step writes into its input. Every value of the cache must survive epochs."""
    from monai.data import set_track_meta

    # No flip or rotation (they copy): the crops, views into the cache, reach the intensity steps.
    cfg, data = _build(tiny_cfg, f"augment={augment}", *(f"augment.random.{t}.prob=0.0" for t in
                       ("flip_x", "flip_y", "flip_z", "rot90")),
                       "augment.random.scale_intensity.prob=1.0", "augment.random.shift_intensity.prob=1.0")
    dataset = data.train_loader.dataset
    assert isinstance(dataset, CacheDataset) and dataset.copy_cache is False
    def snapshot(item: dict) -> dict:  # tensors, and lists of them (the per-class crop indices)
        return {k: [torch.as_tensor(e).clone() for e in v] if isinstance(v, (list, tuple)) else torch.as_tensor(v).clone()
                for k, v in item.items() if hasattr(v, "shape") or isinstance(v, (list, tuple))}

    before = [snapshot(item) for item in dataset._cache]
    if augment == "default":  # its per-class crop indices are cached too
        assert any(isinstance(v, list) for v in before[0].values())
    set_track_meta(False)  # as the trainer draws batches
    try:
        for _ in range(2):
            for batch in data.train_loader:
                batch["image"].mul_(0)  # a training step may even write into its batch
    finally:
        set_track_meta(True)
    for item, saved in zip(dataset._cache, before):
        now = snapshot(item)
        for key, value in saved.items():
            pairs = zip(now[key], value) if isinstance(value, list) else [(now[key], value)]
            assert len(now[key]) == len(value) and all(torch.equal(a, b) for a, b in pairs), key
