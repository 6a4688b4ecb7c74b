"""Epoch time of a 2-process ``torchrun`` on CPU against one process, on the synthetic task.

    python -m benchmarks.ddp [--epochs 5] [--work /tmp/medseg-bench-ddp]

Two PyTorch processes on one machine each start a thread pool as wide as the machine; their
small ops then wait on each other's threads and a step can take many times longer (the collapse
issue 13 describes). medseg's thread policy gives each of torchrun's local ranks its share of the
cores. Rows: one process doing the epoch's steps (the baseline); torchrun with 2 ranks splitting
the same steps (each rank half of them); the same torchrun with the policy overridden to the old
behaviour (every rank as many threads as cores); and one process doing only one rank's half, for
the per-step view. Epoch times are medians over the epochs after the first (cache and allocator
warm-up), read from the run's log. Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_table  # noqa: E402

EPOCH_LINE = re.compile(r"epoch (\d+)/\d+\s+loss \S+\s+lr \S+\s+([\d.]+)s")


def epoch_seconds(log_text: str) -> float:
    times = [float(m.group(2)) for m in EPOCH_LINE.finditer(log_text)]
    if len(times) < 2:
        raise SystemExit(f"error: fewer than 2 epochs in the log:\n{log_text[-2000:]}")
    return statistics.median(times[1:])


def train(work: Path, name: str, ranks: int, overrides: list[str]) -> float:
    run_dir = work / "runs" / name
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"] if ranks > 1 \
        else [sys.executable]
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.run([*launcher, "-m", "medseg.train", "dataset=synthetic", f"paths.data_dir={work / 'data'}",
                           f"paths.cache_dir={work / 'cache'}", f"hydra.run.dir={run_dir}", "trainer.log_images=false",
                           "dataset.check=false", *overrides], cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: {name} failed:\n{proc.stderr[-3000:]}")
    return epoch_seconds((run_dir / "train.log").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg-bench-ddp"), help="data, caches and runs")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    common = [f"trainer.max_epochs={args.epochs}", f"trainer.val_every={args.epochs}", "dataset.fold=0"]
    single = train(args.work, "single", 1, common)
    steps = None  # one rank's share of the epoch, for the per-step row
    log = (args.work / "runs" / "single" / "train.log").read_text()
    match = re.search(r"(\d+) training / \d+ validation cases", log)
    if match:
        steps = -(-int(match.group(1)) // 2 // 2)  # cases per rank / batch size 2, rounded up
    ddp = train(args.work, "ddp", 2, common)
    oversubscribed = train(args.work, "ddp_oversubscribed", 2, [*common, f"trainer.threads={cores}"])
    half = train(args.work, "single_half", 1, [*common, f"trainer.steps_per_epoch={steps}"]) if steps else float("nan")
    rows = [
        ["1 process, the epoch's steps (baseline)", single, 1.0],
        ["torchrun 2 ranks, thread policy (each rank half the steps)", ddp, ddp / single],
        [f"torchrun 2 ranks, trainer.threads={cores} on each (no policy)", oversubscribed, oversubscribed / single],
        [f"1 process, one rank's half ({steps} steps)", half, half / single],
    ]
    write_table("ddp", ["training", "epoch seconds (median)", "ratio to 1 process"], rows,
                note=f"Synthetic task (dataset=synthetic, fold 0), {args.epochs} epochs, medians of epochs 2..{args.epochs}; "
                     f"{cores} usable cores. Goal: torchrun's epoch within 1.5x of one process doing the same steps.")


if __name__ == "__main__":
    main()
