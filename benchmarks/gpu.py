"""The GPU checks in one script, sized to finish within about 8 minutes on one GPU.

    python -m benchmarks.gpu [--data ../shared/data] [--minutes 3]
    python -m benchmarks.gpu --rehearse        # the same steps on CPU with tiny sizes (checks the script)

1. Hippocampus training with ``trainer=gpu`` alone on the machine: epoch seconds, steps per
   second, GPU utilisation (``nvidia-smi`` sampled every 0.5 s) and the training minutes until
   mean validation Dice first reached 0.85 (validating every epoch). Falls back to the synthetic
   task when the real cases are not there.
2. Sliding-window inference of unet3d on a 512x512x128 volume (ROI 96^3, 4 windows per batch):
   fp32 against AMP (bf16 where supported, else fp16), median seconds and Dice of the AMP labels
   against the fp32 labels (goal: >= 1.5x at Dice >= 0.999).
3. ``benchmarks.predict`` end to end on the GPU (its own table; needs its trained weights).

Goals of issue 13 on the GPU: hippocampus epoch (160 cases) <= 3 s; AMP >= 1.5x fp32.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import median_time, write_table  # noqa: E402
from benchmarks.ddp import epoch_seconds  # noqa: E402


class UtilisationSampler:
    """GPU utilisation percentages from ``nvidia-smi``, sampled in a thread while a run goes on."""

    def __init__(self, period: float = 0.5):
        self.period, self.samples, self._stop = period, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], capture_output=True, text=True, timeout=5).stdout.strip()
                self.samples.append(float(out.splitlines()[0]))
            except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
                pass
            self._stop.wait(self.period)

    def __enter__(self) -> UtilisationSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def training(data: Path, minutes: float, rehearse: bool, work: Path) -> list[list[object]]:
    real = (data / "Task04_Hippocampus" / "dataset.json").is_file()
    dataset = ["dataset=msd/hippocampus", f"paths.data_dir={data}"] if real else \
        ["dataset=synthetic", f"paths.data_dir={work / 'data'}"]
    device = ["trainer.device=cpu", "trainer.max_epochs=2", "dataset.max_cases=8"] if rehearse else ["trainer=gpu"]
    run_dir = work / "train"
    with UtilisationSampler() as sampler:
        subprocess.run([sys.executable, "-m", "medseg.train", *dataset, *device, f"trainer.max_minutes={minutes}",
                        "trainer.val_every=1", "trainer.budget_validations=1000", "trainer.log_images=false",
                        f"paths.cache_dir={work / 'cache'}", f"hydra.run.dir={run_dir}"], cwd=ROOT, check=True)
    log = (run_dir / "train.log").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    steps = re.search(r"(\d+) training / \d+ validation cases", log)
    from medseg.core.checkpoint import load_checkpoint

    history = load_checkpoint(run_dir / "checkpoints" / "last.pt", map_location="cpu")["history"]
    reached = next((h["elapsed"] for h in history if h["metrics"].get("mean_dice", 0) >= 0.85), None)
    util = statistics.median(sampler.samples) if sampler.samples else float("nan")
    epoch = epoch_seconds(log)
    return [[f"{'hippocampus' if real else 'synthetic'} training epoch ({steps.group(1) if steps else '?'} cases)",
             epoch, "s", f"GPU utilisation median {util:.0f} %"],
            ["minutes to mean validation Dice 0.85", reached / 60 if reached is not None else "not reached", "min",
             f"best {metrics['best']['metrics'].get('mean_dice', float('nan')):.3f} in {minutes:g} min"]]


def sliding_window(rehearse: bool) -> list[list[object]]:
    from hydra.utils import instantiate
    from monai.inferers import sliding_window_inference
    from omegaconf import OmegaConf

    device = torch.device("cpu" if rehearse else "cuda")
    model_cfg = OmegaConf.load(ROOT / "conf" / "model" / "unet3d.yaml")
    model_cfg.in_channels, model_cfg.out_channels = 1, 2
    torch.manual_seed(0)
    model = instantiate(model_cfg).to(device).eval()
    shape, roi = ((64, 64, 32), (32, 32, 32)) if rehearse else ((512, 512, 128), (96, 96, 96))
    image = torch.rand(1, 1, *shape, device=device)
    dtype = torch.bfloat16 if device.type == "cpu" or torch.cuda.is_bf16_supported() else torch.float16

    def run(amp: bool) -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=amp):
            return sliding_window_inference(image, roi, 4, model, overlap=0.25).float()

    fp32, amp = median_time(lambda: run(False), repeats=3), median_time(lambda: run(True), repeats=3)
    a, b = run(False).argmax(1), run(True).argmax(1)
    dice = float(2 * ((a == 1) & (b == 1)).sum() / max(int((a == 1).sum() + (b == 1).sum()), 1))
    return [[f"sliding window fp32 ({list(shape)}, ROI {roi[0]}^3)", fp32, "s", ""],
            [f"sliding window AMP ({str(dtype).split('.')[-1]})", amp, "s",
             f"{fp32 / amp:.2f}x fp32, Dice vs fp32 labels {dice:.4f}"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--minutes", type=float, default=3.0, help="training budget of step 1")
    parser.add_argument("--rehearse", action="store_true", help="run on CPU with tiny sizes")
    args = parser.parse_args()
    if not args.rehearse and not torch.cuda.is_available():
        raise SystemExit("error: no CUDA GPU here; run on a GPU machine, or --rehearse to check the script on CPU")
    with tempfile.TemporaryDirectory() as tmp:
        rows = training(args.data, 0.3 if args.rehearse else args.minutes, args.rehearse, Path(tmp))
    rows += sliding_window(args.rehearse)
    headers = ["measurement", "value", "unit", "note"]
    if args.rehearse:  # a check of the script, not a result: printed, not saved
        print("\n".join(" | ".join(str(v) for v in row) for row in [headers, *rows]))
        return
    write_table("gpu", headers, rows, note="Goals: hippocampus epoch <= 3 s; AMP >= 1.5x fp32 at Dice >= 0.999. "
                                           "End to end prediction: benchmarks/results/predict_gpu.md.")
    subprocess.run([sys.executable, "-m", "benchmarks.predict", "--runs", "1", "--name", "predict_gpu"], cwd=ROOT, check=True)


if __name__ == "__main__":
    main()
