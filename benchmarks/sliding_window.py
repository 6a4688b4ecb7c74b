"""Sliding-window inference on a 512x512x128 CT-like volume with unet3d: medseg's inference path vs
the tutorial call ``sliding_window_inference(..., overlap=0.25, sw_batch_size=4)`` in fp32 under
``torch.no_grad``. Equal output is checked as Dice between the two label maps (>= 0.999 required).

    python benchmarks/sliding_window.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import copy

import torch
from hydra.utils import instantiate
from monai.inferers import SlidingWindowInferer, sliding_window_inference

from benchmarks.common import median_time, write_table
from medseg.core.config import compose_train
from medseg.core.utils import channels_last
from medseg.inference.sliding_window import predict_logits


def label_dice(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Mean foreground Dice between two label maps (1.0 where a class is absent from both)."""
    scores = []
    for c in range(1, num_classes):
        x, y = a == c, b == c
        denom = x.sum() + y.sum()
        scores.append(1.0 if denom == 0 else float(2 * (x & y).sum() / denom))
    return sum(scores) / len(scores)


def ct_like(size: list[int]) -> torch.Tensor:
    """Smooth structures plus noise, in [0, 1] as after the pipeline's CT window."""
    volume = torch.nn.functional.avg_pool3d(torch.rand(1, 1, *size), 9, stride=1, padding=4)
    return ((volume - volume.mean()) * 8 + 0.5 + 0.05 * torch.randn_like(volume)).clamp(0, 1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 128])
    args = parser.parse_args()
    cfg = compose_train(["dataset.patch_size=[96,96,96]", "paths.data_dir=/nonexistent"], "/tmp/unused")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = instantiate(cfg.model).to(device).eval()
    medseg_model = copy.deepcopy(model)
    channels_last(medseg_model)  # what medseg does with trainer.channels_last=true (the default)
    volume = ct_like(args.size).to(device)
    roi, classes = list(cfg.dataset.patch_size), cfg.dataset.num_classes
    same = SlidingWindowInferer(roi, sw_batch_size=4, overlap=0.25)

    def baseline():
        with torch.no_grad():
            return sliding_window_inference(volume, roi, 4, model, overlap=0.25)

    variants = [
        ("baseline: sliding_window_inference, no_grad, fp32", baseline),
        ("medseg path (inference_mode), baseline settings", lambda: predict_logits(model, volume, same, device)),
        ("medseg path + channels_last_3d, baseline settings", lambda: predict_logits(medseg_model, volume, same, device)),
        ("medseg default: channels_last_3d, overlap 0.5, gaussian",
         lambda: predict_logits(medseg_model, volume, instantiate(cfg.inferer, roi_size=roi), device)),
    ]
    rows, ref, t_base = [], None, None
    for name, run in variants:
        out = run().argmax(1)  # also the warm-up run
        ref = out if ref is None else ref
        t = median_time(run, args.repeats, warmup=0)
        t_base = t_base or t
        rows.append([name, t, t_base / t, label_dice(out, ref, classes)])
    # bf16 autocast is emulated on CPUs without AVX512-BF16/AMX: timed on one window only.
    if device.type == "cpu":
        window = volume[..., : roi[0], : roi[1], : roi[2]]
        with torch.inference_mode():
            fp32 = median_time(lambda: model(window), args.repeats)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                bf16 = median_time(lambda: model(window), args.repeats)
        rows.append(["bf16 autocast on CPU (one 96^3 window, vs fp32 on it)", bf16, fp32 / bf16, "n/a"])
    write_table("sliding_window", ["inference", "seconds (median)", "speed-up", "Dice vs baseline labels"], rows,
                note=f"unet3d ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, seeded random weights), "
                     f"volume {args.size}, ROI {roi}, sw_batch_size 4, median of {args.repeats} runs after a warm-up. "
                     "Target >= 1.5x at Dice >= 0.999.")


if __name__ == "__main__":
    main()
