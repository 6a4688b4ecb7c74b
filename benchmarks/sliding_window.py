"""Sliding-window inference on a 512x512x128 CT-like volume with unet3d: medseg's inference path vs
the tutorial call ``sliding_window_inference(..., overlap=0.25, sw_batch_size=4)`` in fp32 under
``torch.no_grad``. Equal output is checked as Dice between the two label maps (>= 0.999 required).

    python benchmarks/sliding_window.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import copy

import torch
from hydra.utils import instantiate
from monai.inferers import SlidingWindowInferer, sliding_window_inference

from benchmarks.common import median_time, write_table
from medseg.inference.sliding_window import predict_logits
from medseg.utils import channels_last
from tests.conftest import compose_train


def label_dice(a: torch.Tensor, b: torch.Tensor, num_classes: int) -> float:
    """Mean foreground Dice between two label maps (1.0 where a class is absent from both)."""
    scores = []
    for c in range(1, num_classes):
        x, y = a == c, b == c
        denom = x.sum() + y.sum()
        scores.append(1.0 if denom == 0 else float(2 * (x & y).sum() / denom))
    return sum(scores) / len(scores)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--size", type=int, nargs=3, default=[512, 512, 128])
    args = parser.parse_args()
    cfg = compose_train(["dataset.patch_size=[96,96,96]", "paths.data_dir=/nonexistent"], "/tmp/unused")
    torch.manual_seed(0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = instantiate(cfg.model).to(device).eval()
    # CT-like volume: smooth structures plus noise, windowed to [0, 1] as the pipeline would.
    volume = torch.nn.functional.avg_pool3d(torch.rand(1, 1, *args.size), 9, stride=1, padding=4)
    volume = ((volume - volume.mean()) * 8 + 0.5 + 0.05 * torch.randn_like(volume)).clamp(0, 1).to(device)
    roi = list(cfg.dataset.patch_size)

    def baseline():
        with torch.no_grad():
            return sliding_window_inference(volume, roi, 4, model, overlap=0.25)

    variants = {
        "medseg path, same settings (inference_mode)": SlidingWindowInferer(roi, sw_batch_size=4, overlap=0.25),
        "medseg path, sw_batch_size 8": SlidingWindowInferer(roi, sw_batch_size=8, overlap=0.25),
        "medseg default inferer (overlap 0.5, gaussian)": instantiate(cfg.inferer, roi_size=roi),
    }
    ref = baseline().argmax(1)
    t_base = median_time(baseline, args.repeats)
    rows = [["baseline: sliding_window_inference, no_grad, fp32", t_base, 1.0, 1.0]]
    for name, inferer in variants.items():
        run = lambda: predict_logits(model, volume, inferer, device)
        out = run().argmax(1)
        t = median_time(run, args.repeats)
        rows.append([name, t, t_base / t, label_dice(out, ref, cfg.dataset.num_classes)])
    model_cl = copy.deepcopy(model)
    channels_last(model_cl)  # what medseg does with trainer.channels_last=true (the default)
    for name, inferer in (("medseg default path: channels_last_3d, same settings", variants["medseg path, same settings (inference_mode)"]),
                          ("medseg default path: channels_last_3d + default inferer", variants["medseg default inferer (overlap 0.5, gaussian)"])):
        run = lambda: predict_logits(model_cl, volume, inferer, device)
        out = run().argmax(1)
        t = median_time(run, args.repeats)
        rows.append([name, t, t_base / t, label_dice(out, ref, cfg.dataset.num_classes)])
    if device.type == "cpu":
        run = lambda: _bf16(model, volume, variants["medseg path, same settings (inference_mode)"])
        out = run().argmax(1)
        t = median_time(run, max(1, args.repeats - 2), warmup=0)
        rows.append(["medseg path + bf16 autocast (CPU)", t, t_base / t, label_dice(out, ref, cfg.dataset.num_classes)])
    write_table("sliding_window", ["inference", "seconds (median)", "speed-up", "Dice vs baseline labels"], rows,
                note=f"unet3d ({sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, seeded random weights), "
                     f"volume {args.size}, ROI {roi}, {args.repeats} timed repeats. Target >= 1.5x at Dice >= 0.999.")


def _bf16(model, volume, inferer):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        return inferer(volume, model).float()


if __name__ == "__main__":
    main()
