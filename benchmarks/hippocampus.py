"""Real-data quality at equal time: the 200 real MSD hippocampus MRI cases (../shared/data), fold 0
(160 train / 40 validation), each recipe trained for the same wall-clock budget on this machine.

- medseg: ``python -m medseg.train dataset=msd/hippocampus trainer.max_minutes=M`` (its defaults).
- baseline: a hand-wired MONAI-tutorial loop: plain ``Dataset``, same loading/orientation/spacing/
  z-score, ``RandSpatialCropd`` patches, MONAI UNet, DiceCE, Adam (lr 1e-4), then
  ``sliding_window_inference`` on the same 40 validation cases.

    python benchmarks/hippocampus.py [--minutes 10] [--data ../shared/data]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from monai import transforms as mt
from monai.data import DataLoader, Dataset
from monai.inferers import sliding_window_inference
from monai.losses import DiceCELoss
from monai.metrics import DiceMetric
from monai.networks.nets import UNet
from monai.networks.utils import one_hot

from benchmarks.common import write_table
from medseg.data import datalist

ROOT = Path(__file__).resolve().parents[1]
ROI = [48, 64, 48]


def baseline(train_files, val_files, minutes: float) -> dict[str, float]:
    load = [mt.LoadImaged(keys=["image", "label"]), mt.EnsureChannelFirstd(keys=["image", "label"]),
            mt.Orientationd(keys=["image", "label"], axcodes="RAS"),
            mt.Spacingd(keys=["image", "label"], pixdim=(1.0, 1.0, 1.0), mode=("bilinear", "nearest")),
            mt.NormalizeIntensityd(keys="image", nonzero=True, channel_wise=True)]
    train_tf = mt.Compose(load + [mt.SpatialPadd(keys=["image", "label"], spatial_size=ROI),
                                  mt.RandSpatialCropd(keys=["image", "label"], roi_size=ROI, random_size=False)])
    loader = DataLoader(Dataset(train_files, train_tf), batch_size=2, shuffle=True, num_workers=0)
    torch.manual_seed(0)
    model = UNet(3, 1, 3, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2, norm="batch")
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.Adam(model.parameters(), 1e-4)
    deadline, epochs = time.monotonic() + minutes * 60, 0
    while time.monotonic() < deadline:
        model.train()
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            if time.monotonic() >= deadline:
                break
        epochs += 1
    metric = DiceMetric(include_background=False, reduction="mean_batch", ignore_empty=True)
    model.eval()
    with torch.no_grad():
        for batch in DataLoader(Dataset(val_files, mt.Compose(load)), batch_size=1):
            pred = sliding_window_inference(batch["image"], ROI, 4, model).argmax(1, keepdim=True)
            metric(one_hot(pred, 3), one_hot(batch["label"], 3))
    anterior, posterior = metric.aggregate().tolist()
    return {"Anterior": anterior, "Posterior": posterior, "epochs": epochs}


def medseg_run(data: Path, minutes: float, out: Path) -> dict[str, float]:
    subprocess.run([sys.executable, "-m", "medseg.train", "dataset=msd/hippocampus", f"paths.data_dir={data}",
                    f"trainer.max_minutes={minutes}", f"hydra.run.dir={out}"], cwd=ROOT, check=True)
    metrics = json.loads((out / "metrics.json").read_text())
    last = metrics["last"]["metrics"]  # the end-of-budget model, as for the baseline (no selection on val)
    return {"Anterior": last["Anterior"], "Posterior": last["Posterior"], "epochs": metrics["epochs"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    task = args.data / "Task04_Hippocampus"
    if not (task / "dataset.json").is_file():
        raise SystemExit(f"skipped: {task} not found (the real hippocampus cases live in ../shared/data)")
    cases = datalist.training_cases(task)
    fold = datalist.make_folds(list(cases), 5, 12345)[0]  # medseg's fold 0: the same 40 validation cases
    with tempfile.TemporaryDirectory() as tmp:
        ours = medseg_run(args.data, args.minutes, Path(tmp) / "run")
    base = baseline([cases[c] for c in fold["train"]], [cases[c] for c in fold["val"]], args.minutes)
    rows = []
    for name, r in (("baseline: tutorial loop (Dataset, crops, UNet, DiceCE, Adam 1e-4)", base),
                    ("medseg: dataset=msd/hippocampus defaults", ours)):
        rows.append([name, r["Anterior"], r["Posterior"], (r["Anterior"] + r["Posterior"]) / 2, r["epochs"]])
    write_table("hippocampus", ["recipe", "Anterior Dice", "Posterior Dice", "mean Dice", "epochs"], rows,
                note=f"{len(fold['train'])} training / {len(fold['val'])} validation real cases (fold 0), "
                     f"{args.minutes:g} min of training each on CPU, model at the end of the budget. "
                     "Published nnU-Net (full GPU training): about 0.90 / 0.89.")


if __name__ == "__main__":
    main()
