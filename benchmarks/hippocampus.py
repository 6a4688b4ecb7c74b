"""Real-data quality at equal time: medseg's defaults against a hand-wired MONAI peer recipe on the
200 real MSD hippocampus MRI cases (../shared/data), folds 0, 1, 2 of medseg's saved split, each
recipe trained for the same wall-clock budget on this machine, one run at a time.

- medseg: ``python -m medseg.train dataset=msd/hippocampus dataset.fold=K trainer.max_minutes=M``
  then ``python -m medseg.predict ckpt=<run>/checkpoints/last.pt`` on the fold's held-out images:
  the defaults a user gets, the model at the end of the budget (no selection on held-out cases).
- peer: the recipe of issue 12, as a researcher wires it from MONAI tutorials: ``CacheDataset`` of
  LoadImaged, EnsureChannelFirstd, NormalizeIntensityd(nonzero), SpatialPadd(32,48,32); then
  RandCropByPosNegLabeld(pos 2, neg 1, 2 samples) of 32x48x32 and RandFlipd(axis 0); MONAI UNet
  (16,32,64,128; strides 2,2,2; 2 residual units), DiceCE, AdamW lr 2e-3 wd 1e-5 constant, batch 4;
  sliding-window inference (overlap 0.5, gaussian).

Both write NIfTI predictions of the held-out cases, scored by the same Dice code here. Every run
is appended to ``benchmarks/results/hippocampus_runs.jsonl`` as it finishes (a stopped benchmark
keeps what it measured); the table is built from that file.

    python benchmarks/hippocampus.py [--minutes 10] [--folds 0,1,2] [--recipes peer,medseg]
    python benchmarks/hippocampus.py --table     # the table from the recorded runs only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import RESULTS, machine, write_table  # noqa: E402

RUNS = RESULTS / "hippocampus_runs.jsonl"
LABELS = {1: "Anterior", 2: "Posterior"}
PEER_PATCH = (32, 48, 32)


def fold_cases(task: Path, fold: int) -> tuple[list[dict], list[dict]]:
    """Train and held-out cases of medseg's saved split (the split every medseg run uses)."""
    from medseg.data import datalist

    cases = datalist.training_cases(task)
    split = datalist.make_folds(list(cases), 5, 12345)[fold]
    return ([{**cases[c], "case": c} for c in split["train"]], [{**cases[c], "case": c} for c in split["val"]])


def score(pred_dir: Path, held_out: list[dict]) -> dict[str, float]:
    """Mean per-case Dice of each structure (an empty reference and prediction count as 1)."""
    per_class = {name: [] for name in LABELS.values()}
    for case in held_out:
        ref = np.asanyarray(nib.load(case["label"]).dataobj).round().astype(np.int16)
        pred = np.asanyarray(nib.load(pred_dir / Path(case["image"]).name).dataobj).round().astype(np.int16)
        if pred.shape != ref.shape:
            raise SystemExit(f"{pred_dir / Path(case['image']).name}: shape {pred.shape} != reference {ref.shape}")
        for value, name in LABELS.items():
            a, b = ref == value, pred == value
            denom = a.sum() + b.sum()
            per_class[name].append(1.0 if denom == 0 else 2.0 * np.logical_and(a, b).sum() / denom)
    result = {name: float(np.mean(v)) for name, v in per_class.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def run_peer(train_cases: list[dict], held_out: list[dict], minutes: float, out: Path) -> dict:
    import torch
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    keys = ["image", "label"]
    load = mt.Compose([mt.LoadImaged(keys=keys), mt.EnsureChannelFirstd(keys=keys),
                       mt.NormalizeIntensityd(keys="image", nonzero=True), mt.SpatialPadd(keys=keys, spatial_size=PEER_PATCH)])
    augment = mt.Compose([mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=PEER_PATCH, pos=2, neg=1,
                                                    num_samples=2, image_key="image"),
                          mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=0)])
    dataset = CacheDataset(train_cases, mt.Compose([*load.transforms, *augment.transforms]), num_workers=2)
    loader = DataLoader(dataset, batch_size=4, shuffle=True, num_workers=0)
    model = UNet(spatial_dims=3, in_channels=1, out_channels=3, channels=(16, 32, 64, 128), strides=(2, 2, 2),
                 num_res_units=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)
    steps, start = 0, time.monotonic()
    deadline = start + minutes * 60
    while time.monotonic() < deadline:
        model.train()
        for batch in loader:
            optimizer.zero_grad()
            loss = loss_fn(model(batch["image"]), batch["label"])
            loss.backward()
            optimizer.step()
            steps += 1
            if time.monotonic() >= deadline:
                break
    train_minutes = (time.monotonic() - start) / 60
    model.eval()
    infer = mt.Compose([mt.LoadImaged(keys="image"), mt.EnsureChannelFirstd(keys="image"),
                        mt.NormalizeIntensityd(keys="image", nonzero=True)])
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for case in held_out:
            image = infer({"image": case["image"]})["image"]
            logits = sliding_window_inference(image[None], PEER_PATCH, 4, model, overlap=0.5, mode="gaussian")
            labels = logits.argmax(1)[0].numpy().astype(np.uint8)
            affine = nib.load(case["image"]).affine
            nib.save(nib.Nifti1Image(labels, affine), out / Path(case["image"]).name)
    return {"steps": steps, "train_minutes": train_minutes, "patches_per_step": 8}


def run_medseg(data: Path, fold: int, held_out: list[dict], minutes: float, work: Path, extra: list[str]) -> dict:
    run_dir, inputs, out = work / "run", work / "inputs", work / "pred"
    subprocess.run([sys.executable, "-m", "medseg.train", "dataset=msd/hippocampus", f"paths.data_dir={data}",
                    f"dataset.fold={fold}", f"trainer.max_minutes={minutes}", f"hydra.run.dir={run_dir}",
                    f"paths.cache_dir={work / 'cache'}", *extra],  # the shared data folder is read-only
                   cwd=ROOT, check=True)
    inputs.mkdir(parents=True)
    for case in held_out:
        (inputs / Path(case["image"]).name).symlink_to(case["image"])
    subprocess.run([sys.executable, "-m", "medseg.predict", f"ckpt={run_dir / 'checkpoints' / 'last.pt'}",
                    f"input={inputs}", f"output={out}", "save_overlays=false", f"hydra.run.dir={work / 'predict'}"],
                   cwd=ROOT, check=True)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {"pred": out, "epochs": metrics["epochs"], "train_minutes": metrics["train_minutes"]}


def one_run(recipe: str, fold: int, minutes: float, data: Path, extra: list[str]) -> dict:
    task = data / "Task04_Hippocampus"
    train_cases, held_out = fold_cases(task, fold)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if recipe == "peer":
            info = run_peer(train_cases, held_out, minutes, work / "pred")
            pred = work / "pred"
        else:
            info = run_medseg(data, fold, held_out, minutes, work, extra)
            pred = info.pop("pred")
        dice = score(pred, held_out)
    return {"recipe": recipe if not extra else f"{recipe} {' '.join(extra)}", "fold": fold, "minutes": minutes,
            **dice, **info, "train_cases": len(train_cases), "held_out": len(held_out), "machine": machine(),
            "date": time.strftime("%Y-%m-%d %H:%M")}


def table(minutes: float) -> None:
    runs = [json.loads(line) for line in RUNS.read_text().splitlines()] if RUNS.is_file() else []
    runs = [r for r in runs if r["minutes"] == minutes]
    # the newest run of each plain recipe and fold; runs with extra medseg overrides were tuning
    # experiments (kept in the JSONL file, listed below the table)
    latest = {(r["recipe"], r["fold"]): r for r in runs if r["recipe"] in ("medseg", "peer")}
    tuning = [r for r in runs if r["recipe"] not in ("medseg", "peer")]
    rows, folds = [], sorted({f for _, f in latest})
    for (recipe, fold), r in sorted(latest.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        rows.append([fold, recipe, r["Anterior"], r["Posterior"], r["mean"],
                     r.get("epochs", "") or f"{r.get('steps', '')} steps"])
    gaps = []
    for fold in folds:
        if ("medseg", fold) in latest and ("peer", fold) in latest:
            gaps.append(latest[("medseg", fold)]["mean"] - latest[("peer", fold)]["mean"])
    note = (f"{minutes:g} min of training per run on this CPU, one run at a time; held-out cases of each fold "
            "(40 real cases) scored by the same Dice code. medseg minus peer, mean Dice per fold: "
            + ", ".join(f"{g:+.3f}" for g in gaps)
            + (f" (median {statistics.median(gaps):+.3f})" if gaps else "")
            + ". Published nnU-Net (full GPU training): about 0.90 / 0.89."
            + "".join(f"\n\nTuning run, fold {r['fold']}, {r['date']}: `{r['recipe']}`: mean Dice {r['mean']:.3f}"
                      for r in tuning))
    write_table("hippocampus", ["fold", "recipe", "Anterior Dice", "Posterior Dice", "mean Dice", "epochs / steps"],
                rows, note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--recipes", default="peer,medseg")
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--table", action="store_true", help="only print the table of the recorded runs")
    parser.add_argument("--medseg-overrides", nargs="*", default=[],
                        help="extra medseg.train overrides (recorded with the run; the table shows plain 'medseg' only)")
    args = parser.parse_args()
    if not args.table:
        if not (args.data / "Task04_Hippocampus" / "dataset.json").is_file():
            raise SystemExit(f"skipped: {args.data / 'Task04_Hippocampus'} not found (the real cases live in ../shared/data)")
        for fold in map(int, args.folds.split(",")):
            for recipe in args.recipes.split(","):
                result = one_run(recipe, fold, args.minutes, args.data, args.medseg_overrides if recipe == "medseg" else [])
                print(json.dumps(result), flush=True)
                RUNS.parent.mkdir(exist_ok=True)
                with open(RUNS, "a") as f:
                    f.write(json.dumps(result) + "\n")
    table(args.minutes)


if __name__ == "__main__":
    main()
