"""End-to-end prediction of one CT volume: ``medseg.predict`` against the MONAI tutorial's hand-wired path.

    python -m benchmarks.predict [--runs 3] [--work /tmp/medseg-bench-predict]

The scan is CT-like: 512x512x200 voxels of 0.78x0.78x2.5 mm (a 400 mm field of view, the
body filling most of it, a table under it, air around), int16 HU in a .nii.gz. Both paths use the
same weights: a unet3d (patch 96^3, spacing 1.5 mm) trained briefly, with a fixed seed, by
``medseg.train`` on generated cases of the same kind, so its output is smooth and confident as a
real model's is (random weights would make every comparison of labels meaningless).

- peer: the tutorial's inference as users copy it: LoadImaged, EnsureChannelFirstd, Orientationd,
  Spacingd(1.5 mm), ScaleIntensityRanged, ``sliding_window_inference`` (overlap 0.25, 4 windows
  per batch) under ``torch.no_grad``, Invertd on the probabilities, AsDiscreted(argmax),
  SaveImaged.
- medseg: ``python -m medseg.predict`` (read, resample, sliding window, invert, write), once at
  the tutorial's window settings (overlap 0.25, constant blending) without test-time mirroring:
  the ratio, at which both must write the same labels; once with its defaults (overlap 0.5,
  gaussian blending, mirroring, overlay picture), its own cost.

Each path runs in its own process (interpreter start and imports included, as a user sees it),
one at a time, alternating, ``--runs`` times; the table gives median seconds, the peak resident
memory of that process, and the Dice of the organ label against the peer's output.
Run it alone on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import write_table  # noqa: E402
from medseg.inference.writers import save_nifti  # noqa: E402

SHAPE = (512, 512, 200)
SPACING = (0.78, 0.78, 2.5)
TARGET_SPACING = 1.5
ROI = 96
WINDOW = (-57, 164)  # the MONAI spleen tutorial's CT window
TRAIN_CASES = 8
TRAIN_EPOCHS = 150  # of 8 steps (one case, 2 patches each)


def ct_like(seed: int, shape: tuple[int, int, int], spacing: tuple[float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An abdomen-like CT (int16 HU) and its organ label (uint8), RAS voxel order.

    The body is an ellipse of about 330x240 mm in a 400 mm field of view (as in clinical CT, where
    air fills little of the scan), with a fat rim, soft tissue, a spine, a table under the back
    and one contrast-enhanced organ whose size and place vary with the seed.
    """
    rng = np.random.default_rng(seed)
    axes = [((np.arange(n) - (n - 1) / 2) * s).astype(np.float32) for n, s in zip(shape, spacing)]
    x, y, z = np.meshgrid(*axes, indexing="ij", sparse=True)
    rx, ry = rng.uniform(155, 175), rng.uniform(110, 130)
    plane = np.full(shape[:2], -1000.0, dtype=np.float32)
    body = (x[..., 0] / rx) ** 2 + (y[..., 0] / ry) ** 2 <= 1
    plane[body] = -100.0
    plane[(x[..., 0] / (rx - 15)) ** 2 + (y[..., 0] / (ry - 15)) ** 2 <= 1] = 40.0
    plane[(x[..., 0] / 15) ** 2 + ((y[..., 0] + ry - 40) / 15) ** 2 <= 1] = 600.0  # spine
    plane[(np.abs(y[..., 0] + ry + 12) < 5) & (np.abs(x[..., 0]) < 190)] = 200.0  # table
    image = np.repeat(plane[..., None], shape[2], axis=2)
    centre = np.array([rng.uniform(-80, 80), rng.uniform(-40, 40), rng.uniform(-40, 40)], dtype=np.float32)
    radii = rng.uniform([35, 30, 45], [60, 50, 80]).astype(np.float32)
    organ = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2 <= 1
    image[organ] = rng.uniform(110, 140)
    image = ndimage.gaussian_filter(image, sigma=(1.0, 1.0, 0.5))
    image += rng.normal(0.0, 15.0, shape).astype(np.float32)
    return np.clip(np.round(image), -1024, 3071).astype(np.int16), organ.astype(np.uint8)


def save(array: np.ndarray, spacing: tuple[float, float, float], path: Path) -> None:
    save_nifti(array, np.diag([*spacing, 1.0]), path)


def make_training_task(task: Path) -> None:
    """MSD-layout task of CT-like cases with a coarser in-plane grid (same field of view)."""
    partial = task.with_name(task.name + ".partial")
    for sub in ("imagesTr", "labelsTr"):
        (partial / sub).mkdir(parents=True, exist_ok=True)
    training = []
    for i in range(TRAIN_CASES):
        image, label = ct_like(1000 + i, (320, 320, 100), (1.25, 1.25, 2.5))
        save(image, (1.25, 1.25, 2.5), partial / "imagesTr" / f"ct_{i:03d}.nii.gz")
        save(label, (1.25, 1.25, 2.5), partial / "labelsTr" / f"ct_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/ct_{i:03d}.nii.gz", "label": f"./labelsTr/ct_{i:03d}.nii.gz"})
    (partial / "dataset.json").write_text(json.dumps({
        "name": "CTLike", "modality": {"0": "CT"}, "labels": {"0": "background", "1": "organ"},
        "numTraining": TRAIN_CASES, "training": training, "test": []}, indent=2))
    partial.rename(task)


def train_weights(work: Path) -> Path:
    """The shared weights: ``medseg.train`` for a fixed number of seeded steps (once; reused)."""
    ckpt = work / "train" / "checkpoints" / "last.pt"
    if ckpt.is_file():
        return ckpt
    task = work / "data" / "Task90_CTLike"
    if not task.is_dir():
        make_training_task(task)
    print(f"training the shared weights ({TRAIN_EPOCHS} epochs, once) ...", flush=True)
    subprocess.run([sys.executable, "-m", "medseg.train", "dataset=msd/spleen", f"dataset.task_dir={task}",
                    "dataset.name=ct_like", "dataset.plan=none", f"dataset.spacing=[{TARGET_SPACING},{TARGET_SPACING},{TARGET_SPACING}]",
                    f"dataset.patch_size=[{ROI},{ROI},{ROI}]", "model=unet3d", "dataset.batch_size=1", "dataset.fold=all",
                    f"trainer.max_epochs={TRAIN_EPOCHS}", f"trainer.val_every={TRAIN_EPOCHS}", "trainer.log_images=false",
                    "seed=0", f"paths.cache_dir={work / 'cache'}", f"hydra.run.dir={work / 'train'}"],
                   check=True, cwd=ROOT)
    return ckpt


def peer_predict(ckpt: Path, image: Path, output: Path, overlap: float) -> None:
    """The MONAI tutorial's inference on one scan (spleen segmentation notebook), wired by hand."""
    import torch
    from monai.inferers import sliding_window_inference
    from monai.networks.layers import Norm
    from monai.networks.nets import UNet
    from monai.transforms import (
        AsDiscreted,
        Compose,
        EnsureChannelFirstd,
        Invertd,
        LoadImaged,
        Orientationd,
        SaveImaged,
        ScaleIntensityRanged,
        Spacingd,
    )

    model = UNet(spatial_dims=3, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256),
                 strides=(2, 2, 2, 2), num_res_units=2, norm=Norm.BATCH)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the tutorial's choice
    model.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True)["model"])
    model.to(device).eval()
    pre = Compose([
        LoadImaged(keys="image"), EnsureChannelFirstd(keys="image"), Orientationd(keys="image", axcodes="RAS"),
        Spacingd(keys="image", pixdim=(TARGET_SPACING,) * 3, mode="bilinear"),
        ScaleIntensityRanged(keys="image", a_min=WINDOW[0], a_max=WINDOW[1], b_min=0.0, b_max=1.0, clip=True),
    ])
    post = Compose([
        Invertd(keys="pred", transform=pre, orig_keys="image", nearest_interp=False, to_tensor=True),
        AsDiscreted(keys="pred", argmax=True),
        SaveImaged(keys="pred", output_dir=str(output), output_postfix="seg", resample=False, separate_folder=False),
    ])
    data = pre({"image": str(image)})
    with torch.no_grad():
        data["pred"] = sliding_window_inference(data["image"][None].to(device), (ROI,) * 3, 4, model, overlap=overlap)[0]
    post(data)


def run_timed(command: list[str]) -> tuple[float, float]:
    """Wall seconds and peak resident memory (GiB) of one process, run to its end."""
    start = time.perf_counter()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[:4])} ... failed:\n{proc.stderr.read().decode()[-2000:]}")
    return seconds, usage.ru_maxrss / 2**20  # Linux reports KiB


def organ_dice(a: Path, b: Path) -> float:
    x = np.asanyarray(nib.load(str(a)).dataobj).round() == 1
    y = np.asanyarray(nib.load(str(b)).dataobj).round() == 1
    return float(2 * (x & y).sum() / max(x.sum() + y.sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/medseg-bench-predict"), help="scan, weights and outputs")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each path (median)")
    parser.add_argument("--overlap", type=float, default=0.25, help="the tutorial's overlap, used by both for the ratio")
    parser.add_argument("--name", default="predict", help="results table name (benchmarks/results/<name>.md)")
    parser.add_argument("--default-runs", type=int, default=1, help="timed runs of medseg's defaults (slow: TTA)")
    parser.add_argument("--peer", nargs=3, metavar=("CKPT", "IMAGE", "OUTPUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.peer:
        return peer_predict(*map(Path, args.peer), overlap=args.overlap)
    args.work.mkdir(parents=True, exist_ok=True)
    ckpt = train_weights(args.work)
    scan = args.work / "input" / "ct.nii.gz"
    if not scan.is_file():
        scan.parent.mkdir(exist_ok=True)
        save(ct_like(7, SHAPE, SPACING)[0], SPACING, scan)
    out = {name: args.work / "out" / name for name in ("peer", "medseg", "medseg_defaults")}
    medseg = [sys.executable, "-m", "medseg.predict", f"ckpt={ckpt}", f"input={scan}"]
    commands = {
        "peer": [sys.executable, "-m", "benchmarks.predict", "--overlap", str(args.overlap), "--peer", str(ckpt), str(scan),
                 str(out["peer"])],
        "medseg": medseg + [f"output={out['medseg']}", f"inferer.overlap={args.overlap}", "inferer.mode=constant", "tta=false",
                            "save_overlays=false", f"hydra.run.dir={out['medseg']}/.hydra_run"],
        "medseg_defaults": medseg + [f"output={out['medseg_defaults']}", f"hydra.run.dir={out['medseg_defaults']}/.hydra_run"],
    }
    times: dict[str, list[float]] = {name: [] for name in commands}
    rss: dict[str, float] = {}
    for run in range(args.runs):
        for name, command in commands.items():
            if name == "medseg_defaults" and run >= args.default_runs:
                continue
            seconds, peak = run_timed(command)
            times[name].append(seconds)
            rss[name] = max(rss.get(name, 0.0), peak)
            print(f"run {run + 1}/{args.runs} {name}: {seconds:.1f} s, peak RSS {peak:.2f} GiB", flush=True)
    peer_file = out["peer"] / "ct_seg.nii.gz"
    base = statistics.median(times["peer"])
    labels = {
        "peer": f"peer: MONAI tutorial path (overlap {args.overlap}, 4 windows per batch)",
        "medseg": f"medseg.predict at the tutorial's windows (overlap {args.overlap}, constant), tta=false save_overlays=false",
        "medseg_defaults": "medseg.predict defaults (overlap 0.5 gaussian, mirror TTA, overlay picture)",
    }
    files = {"peer": peer_file, "medseg": out["medseg"] / "ct.nii.gz", "medseg_defaults": out["medseg_defaults"] / "ct.nii.gz"}
    rows = [[labels[n], statistics.median(times[n]), base / statistics.median(times[n]), rss[n],
             organ_dice(files[n], peer_file)] for n in commands]
    write_table(args.name, ["end to end (one process each)", "seconds (median)", "speed-up vs peer", "peak RSS GiB",
                            "organ Dice vs peer labels"], rows,
                note=f"One CT-like scan {list(SHAPE)} at {list(SPACING)} mm (int16 .nii.gz), resampled to {TARGET_SPACING} mm; "
                     f"unet3d (patch {ROI}^3) trained by medseg.train for {TRAIN_EPOCHS} epochs of 8 steps, same weights "
                     f"for all; median of {args.runs} runs ({args.default_runs} of the defaults), each in its own process (start-up and imports included). "
                     "Target: medseg >= 1.5x the peer at Dice >= 0.999.")


if __name__ == "__main__":
    main()
