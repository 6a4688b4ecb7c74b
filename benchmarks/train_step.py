"""Training step throughput: patches/s for unet3d on 96^3 patches, batch 2 (fp32 on CPU; AMP on a GPU).

    python benchmarks/train_step.py [--steps 5]
"""

from __future__ import annotations

import argparse
import time

import torch
from hydra.utils import instantiate

from benchmarks.common import write_table
from medseg.core.config import compose_train
from medseg.core.utils import autocast_context


def patches_per_second(model, loss_fn, optimizer, batch, steps: int, device, amp: bool, channels_last: bool) -> float:
    x = torch.rand(batch, 1, 96, 96, 96, device=device)
    y = torch.randint(0, 3, (batch, 1, 96, 96, 96), device=device).float()
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and device.type == "cuda")
    model.train()
    for i in range(steps + 1):
        if i == 1:  # first step warms up allocators and kernels
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(device, amp):
            loss = loss_fn(model(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    cfg = compose_train(["dataset.patch_size=[96,96,96]", "paths.data_dir=/nonexistent"], "/tmp/unused")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = []
    variants = [("fp32", False, False), ("fp32, channels_last_3d", False, True)]
    if device.type == "cuda":
        variants.append(("AMP fp16", True, False))
    base = None
    for name, amp, cl in variants:
        torch.manual_seed(0)
        model = instantiate(cfg.model).to(device)
        optimizer = instantiate(cfg.optimizer)(params=model.parameters())
        rate = patches_per_second(model, instantiate(cfg.loss), optimizer, args.batch, args.steps, device, amp, cl)
        base = base or rate
        rows.append([f"unet3d 96^3 batch {args.batch}, {name}", rate, rate / base])
    write_table("train_step", ["training step", "patches/s", "ratio"], rows,
                note=f"{args.steps} timed steps after one warm-up, DiceCE loss, AdamW, on {device.type}.")


if __name__ == "__main__":
    main()
