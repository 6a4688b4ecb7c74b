"""Training-loader throughput beside a busy neighbour process, medseg vs the plain MONAI loader.

    python -m benchmarks.contention            # needs ../shared/data/Task04_Hippocampus (or --data)

Both loaders are measured quiet, then with ``benchmarks.busy_neighbour`` (a PyTorch loop of
matrix products at default threads) running for the whole second measurement. medseg fetches
batches on one thread (medseg.core.threads) and gives the network the cores it may use; the peer
is the tutorial loop's loader (CacheDataset, RandCropByPosNegLabeld, RandFlipd, DataLoader defaults).
Run it alone on a quiet machine: anything else running makes the 'quiet' numbers busy too.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra.utils import instantiate
from monai import transforms as mt
from monai.data import CacheDataset, DataLoader, set_track_meta

from benchmarks.common import write_table
from medseg.core.config import compose_train
from medseg.core.threads import apply_thread_policy, single_threaded
from medseg.data.loaders import build_segmentation_data
from medseg.planning import apply_plan

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def batches_per_second(loader, batches: int, one_thread: bool, max_seconds: float = 15.0) -> float:
    """Batches per second over ``batches`` batches, or fewer once ``max_seconds`` have passed (a
    collapsed loader would otherwise take minutes per measurement)."""
    count, start = 0, time.perf_counter()
    while count < batches:
        for _ in (single_threaded(loader) if one_thread else loader):
            count += 1
            if count >= batches or time.perf_counter() - start > max_seconds:
                return count / (time.perf_counter() - start)
    return count / (time.perf_counter() - start)


def peer_loader(train_cases: list[dict]) -> DataLoader:
    """The tutorial loop's training data (the peer recipe of the planning issue)."""
    keys = ["image", "label"]
    cached = mt.Compose([mt.LoadImaged(keys), mt.EnsureChannelFirstd(keys), mt.NormalizeIntensityd("image", nonzero=True),
                         mt.SpatialPadd(keys, (32, 48, 32))])
    random = mt.Compose([mt.RandCropByPosNegLabeld(keys, "label", (32, 48, 32), pos=2, neg=1, num_samples=2),
                         mt.RandFlipd(keys, prob=0.5, spatial_axis=0)])
    files = [{"image": c["image"], "label": c["label"]} for c in train_cases]
    return DataLoader(CacheDataset(files, mt.Compose([*cached.transforms, *random.transforms]), progress=False),
                      batch_size=4, shuffle=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=SHARED, help="folder holding Task04_Hippocampus")
    parser.add_argument("--batches", type=int, default=300, help="batches timed per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="measurements of each loader, alternating (median)")
    args = parser.parse_args()
    if not (args.data / "Task04_Hippocampus" / "dataset.json").is_file():
        sys.exit(f"error: {args.data / 'Task04_Hippocampus'} not found: pass --data <folder with Task04_Hippocampus>")
    threads = apply_thread_policy("auto")
    with tempfile.TemporaryDirectory() as tmp:  # the shared data folder is read-only: plans go to a cache
        cfg = compose_train(["dataset=msd/hippocampus", f"paths.data_dir={args.data}", "dataset.check=false",
                             f"paths.cache_dir={tmp}"], tmp)
        apply_plan(cfg, overrides=[], log_table=False)  # the planned patch and batch, as training uses them
    data = build_segmentation_data(cfg.dataset, cfg.augment, instantiate(cfg.cache), seed=0)
    ours = data.train_loader
    copied = build_segmentation_data(cfg.dataset, cfg.augment, instantiate(cfg.cache, copy=True), seed=0).train_loader
    peer = peer_loader([c for c in ours.dataset.data])
    loaders = {"medseg (dataset=msd/hippocampus defaults: one-thread fetch, cache.copy=false)": (ours, True),
               "medseg's loader fetched at default threads": (ours, False),
               "medseg's loader as before: default threads, cache.copy=true": (copied, False),
               "peer: plain MONAI DataLoader": (peer, False)}
    patches = {name: (loader.batch_size or 1) * (2 if loader is peer else cfg.dataset.num_samples)
               for name, (loader, _) in loaders.items()}

    def measure() -> dict[str, float]:
        """Median of ``--rounds`` rounds, the loaders alternating within each (drift hits all alike)."""
        set_track_meta(False)  # as medseg's trainer does while drawing training batches from a full cache
        try:
            rounds = [{name: batches_per_second(loader, args.batches, one) for name, (loader, one) in loaders.items()}
                      for _ in range(args.rounds)]
        finally:
            set_track_meta(True)
        return {name: statistics.median(r[name] for r in rounds) for name in loaders}

    set_track_meta(False)
    for loader, one in loaders.values():  # warm-up: first batches, allocator
        batches_per_second(loader, 20, one)
    set_track_meta(True)
    quiet = measure()
    neighbour = subprocess.Popen([sys.executable, "-m", "benchmarks.busy_neighbour", "--seconds", "1800"],
                                 stdout=subprocess.DEVNULL)
    try:
        time.sleep(5)  # let it fill its thread pool
        busy = measure()
    finally:
        neighbour.kill()
        neighbour.wait()
    rows = [[name, quiet[name], busy[name], f"{100 * busy[name] / quiet[name]:.0f} %", round(quiet[name] * patches[name])]
            for name in loaders]
    write_table("contention", ["training loader", "batches/s quiet", "batches/s beside a busy neighbour", "kept",
                               "patches/s quiet"], rows,
                note=f"{len(ours.dataset)} hippocampus training cases (fold 0), medians of {args.rounds} rounds of "
                     f"{args.batches} batches, the loaders alternating (medseg: batch {cfg.dataset.batch_size} x "
                     f"{cfg.dataset.num_samples} patches of {list(cfg.dataset.patch_size)}, the plan's; peer: batch 4 x 2 "
                     f"of [32, 48, 32]); torch threads {threads}. The neighbour: one process of 1024x1024 matrix "
                     "products at default threads.")


if __name__ == "__main__":
    main()
