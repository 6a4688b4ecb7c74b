"""Data larger than RAM: peak memory of training with ``cache=disk`` on ``dataset=synthetic_large``
(24 CT-like volumes of 512x512x600 voxels, ~25 GB as float32), and ``cache=memory`` refused up front.

    python -m benchmarks.large_data [--data data] [--steps 12]

Each training run is a separate ``python -m medseg.train`` process, as a user runs it; its peak
resident memory comes from ``wait4``. Run 1 fills the disk cache (preprocessing every case once),
run 2 trains from the filled cache. Generating the task takes ~15 min and 4.5 GB of disk the first
time; the cache takes ~25 GB more.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hydra.utils import instantiate

from benchmarks.common import write_table
from medseg.core.config import compose_train

GIB = 1 << 30


def run_measured(cmd: list[str]) -> tuple[int, float, float, str]:
    """Runs ``cmd``; returns exit code, wall seconds, peak RSS (GiB) and the last stderr line."""
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(0)
        lines = [line.strip() for line in err.read().splitlines() if line.strip()]
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss * 1024 / GIB, lines[-1] if lines else ""


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", default=os.environ.get("MEDSEG_DATA", "data"), help="data folder (the task and its cache go here)")
    parser.add_argument("--steps", type=int, default=12, help="training steps per run (12 = one pass over the 23 training cases)")
    parser.add_argument("--keep-cache", action="store_true", help="keep the disk cache afterwards (~25 GB)")
    args = parser.parse_args()
    data = Path(args.data).resolve()
    overrides = [
        "dataset=synthetic_large", f"paths.data_dir={data}", "trainer.device=cpu", "trainer.max_epochs=1",
        f"trainer.steps_per_epoch={args.steps}", "trainer.max_minutes=null", "trainer.log_images=false",
        "dataset.num_workers=0", "dataset.batch_size=2", "dataset.num_samples=2",
        "inferer.overlap=0", "inferer.sw_batch_size=2",
    ]
    cfg = compose_train(overrides, data / "_unused")
    t0 = time.perf_counter()
    task_dir = instantiate(cfg.dataset.prepare)
    generate_s = time.perf_counter() - t0
    cache_root = Path(cfg.paths.cache_dir) / cfg.dataset.name
    shutil.rmtree(cache_root, ignore_errors=True)  # run 1 starts cold

    rows = []
    with tempfile.TemporaryDirectory() as out:
        train = [sys.executable, "-m", "medseg.train", *overrides]
        for label, extra in (("cache=disk, cold (fills the cache)", ["cache=disk"]),
                             ("cache=disk, warm (reads the cache)", ["cache=disk"]),
                             ("cache=memory", ["cache=memory"])):
            rc, wall, rss, last = run_measured([*train, *extra, f"hydra.run.dir={out}/{len(rows)}"])
            rows.append([label, rc, round(wall, 1), round(rss, 2), last if rc else "trained, validated, checkpointed"])
            print(rows[-1], flush=True)
    cache_gb = sum(f.stat().st_size for f in cache_root.rglob("*") if f.is_file()) / GIB
    if not args.keep_cache:
        shutil.rmtree(cache_root, ignore_errors=True)
    note = (f"dataset=synthetic_large: {cfg.dataset.prepare.cases} volumes of {list(cfg.dataset.prepare.shape)} voxels "
            f"({task_dir}; generation {generate_s:.0f} s, 0 when already on disk). Each run: {args.steps} steps of batch "
            f"{cfg.dataset.batch_size} x {cfg.dataset.num_samples} patches of {list(cfg.dataset.patch_size)} (unet3d), "
            f"then sliding-window validation of one full volume. Disk cache after run 1: {cache_gb:.1f} GiB. "
            "Peak RSS from wait4 of the training process. Target: cache=disk <= 8 GiB; cache=memory refused "
            "with a one-line error before any caching.")
    write_table("large_data", ["run", "exit code", "wall s", "peak RSS GiB", "outcome"], rows, note)


if __name__ == "__main__":
    main()
