"""Data pipeline: steady-state training batches/s of medseg's default 3D pipeline vs a plain MONAI
``Dataset`` running the same transforms every step (the hand-wired tutorial baseline).

    python benchmarks/data_pipeline.py [--cases 12 --epochs 3]
"""

from __future__ import annotations

import argparse
import tempfile
import time

from hydra.utils import instantiate
from monai.data import DataLoader, Dataset, set_track_meta
from monai.transforms import Compose

from benchmarks.common import write_table
from medseg.core.config import compose_train
from medseg.data.loaders import build_segmentation_data
from medseg.data.synthetic import generate_task
from medseg.data.transforms import augmentation, preprocessing


def batches_per_second(loader: DataLoader, epochs: int) -> float:
    """Batches/s over epochs 2..N (the first epoch fills caches and is not steady state)."""
    count, start = 0, None
    for epoch in range(epochs):
        if epoch == 1:
            start, count = time.perf_counter(), 0
        for _ in loader:
            count += 1
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cases", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        generate_task(tmp, cases=args.cases, test_cases=0, seed=3)
        cfg = compose_train([f"paths.data_dir={tmp}", "dataset.num_folds=2", "cache.workers=2"], f"{tmp}/run")
        medseg = build_segmentation_data(cfg.dataset, cfg.augment, instantiate(cfg.cache), seed=0).train_loader
        cached, random = augmentation(cfg.augment)
        chain = Compose([*preprocessing(cfg.dataset).transforms, *cached.transforms, *random.transforms])
        baseline = DataLoader(Dataset(medseg.dataset.data, chain), batch_size=cfg.dataset.batch_size, shuffle=True)
        base = batches_per_second(baseline, args.epochs)
        set_track_meta(False)  # as medseg's trainer does while it iterates the training loader
        ours = batches_per_second(medseg, args.epochs)
        set_track_meta(True)
    write_table("data_pipeline", ["pipeline", "batches/s (epochs 2+)", "ratio"], [
        ["baseline: plain Dataset, same transforms", base, 1.0],
        ["medseg default: CacheDataset + random crops after the cache", ours, ours / base],
    ], note=f"Both run medseg's transform chain (preprocessing, then pad, per-class crop indices, random crops, "
            f"flips, rot90, intensity jitter); the baseline reruns all of it every step. Synthetic CT task, {args.cases // 2} training volumes, batch {cfg.dataset.batch_size} x "
            f"{cfg.dataset.num_samples} patches of {list(cfg.dataset.patch_size)}, num_workers 0, no model. Target >= 10x.")


if __name__ == "__main__":
    main()
