"""Real 3D tasks at equal CPU time: medseg's defaults against two hand-wired MONAI loops, on every
real task in ``../shared/data`` (MSD hippocampus, ACDC cine MRI), folds 0-2 of one saved split,
scored by one Dice function from NIfTI predictions.

- medseg: the command a user types, nothing tuned: ``python -m medseg.train <dataset> dataset.fold=K
  trainer.max_minutes=M`` then ``python -m medseg.predict`` with ``checkpoints/last.pt`` on the
  fold's held-out images (the plan, the configuration it chooses, the budget schedule, TTA).
- peer3d: a MONAI tutorial-style loop: ``CacheDataset`` (load, channel first, z-score), pad,
  ``RandCropByPosNegLabeld`` (pos 2, neg 1, 2 samples), intensity jitter, MONAI ``UNet`` (16..128 or
  16..256, 2 residual units), DiceCE, AdamW lr 2e-3 constant, batch 4, sliding-window inference
  (overlap 0.5, gaussian). Hippocampus: patch 32x48x32 and flips along x (issue 12's recipe);
  ACDC: patch 160x160x8, no flips (a flip swaps the left and right ventricles).
- peer2d: the same loop with a 2D UNet on slices: crops one slice thick, squeezed to 2D, batch 16,
  inference with MONAI's ``SliceInferer``. Hippocampus: 48x64 slices; ACDC: 224x224 slices.

Splits: hippocampus uses medseg's saved seeded split (MSD cases are one per subject); ACDC's 100
volumes are 50 patients x 2 frames, so its folds are medseg's seeded split of the *patients*, given
to every recipe as an nnU-Net ``splits_final.json`` (found through ``$nnUNet_preprocessed``, as
nnU-Net users keep it). Every run is appended to ``benchmarks/results/real_tasks_runs.jsonl``; the
table is built from that file.

    python -m benchmarks.real_tasks [--tasks hippocampus,acdc] [--minutes 10] [--folds 0,1,2]
                                    [--recipes peer3d,peer2d,medseg]
    python -m benchmarks.real_tasks --table
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import RESULTS, machine, write_table  # noqa: E402
from benchmarks.runs import latest, record, recorded, run_medseg, train_for  # noqa: E402

RUNS = RESULTS / "real_tasks_runs.jsonl"
SHARED = ROOT.parent / "shared" / "data"
RECIPES = ("peer3d", "peer2d", "medseg")


@dataclass
class Task:
    name: str
    labels: dict[int, str]
    patch3d: tuple[int, int, int]
    patch2d: tuple[int, int]
    flip_axes: tuple[int, ...]
    channels3d: tuple[int, ...]
    strides3d: tuple = ()

    def cases(self, data: Path) -> dict[str, dict[str, str]]:
        raise NotImplementedError

    def folds(self, data: Path) -> list[dict[str, list[str]]]:
        raise NotImplementedError

    def medseg_overrides(self, data: Path, fold: int, minutes: float, work: Path) -> tuple[list[str], dict[str, str]]:
        """The command line and the environment of the medseg run."""
        raise NotImplementedError

    def prediction(self, pred_dir: Path, case: str) -> Path:
        return pred_dir / f"{case}.nii.gz"


class Hippocampus(Task):
    def __init__(self):
        super().__init__("hippocampus", {1: "Anterior", 2: "Posterior"}, (32, 48, 32), (48, 64), (0,), (16, 32, 64, 128),
                         (2, 2, 2))

    def cases(self, data):
        from medseg.data import datalist

        return datalist.training_cases(data / "Task04_Hippocampus")

    def folds(self, data):
        from medseg.data import datalist

        return datalist.make_folds(list(self.cases(data)), 5, 12345)

    def medseg_overrides(self, data, fold, minutes, work):
        return (["dataset=msd/hippocampus", f"paths.data_dir={data}", f"dataset.fold={fold}",
                 f"trainer.max_minutes={minutes}", f"paths.cache_dir={work / 'cache'}"], {})


class Acdc(Task):
    FOLDER = "Dataset027_ACDC"

    def __init__(self):
        # 8 slices: z pooled only twice, after the in-plane axes have coarsened (as a careful user strides it)
        super().__init__("acdc", {1: "RV", 2: "Myo", 3: "LV"}, (160, 160, 8), (224, 224), (), (16, 32, 64, 128, 256),
                         ((2, 2, 1), (2, 2, 1), (2, 2, 2), (2, 2, 2)))

    def cases(self, data):
        from medseg.data.nnunet import nnunet_cases

        return nnunet_cases(data / self.FOLDER)

    def folds(self, data):
        from medseg.data import datalist

        ids = list(self.cases(data))
        groups = {c: re.match(r"(patient\d+)_", c).group(1) for c in ids}
        return datalist.make_folds(ids, 5, 12345, groups)

    def medseg_overrides(self, data, fold, minutes, work):
        preprocessed = work / "nnUNet_preprocessed"
        (preprocessed / self.FOLDER).mkdir(parents=True, exist_ok=True)
        (preprocessed / self.FOLDER / "splits_final.json").write_text(json.dumps(self.folds(data)))
        return (["dataset=nnunet", f"dataset.root={data / self.FOLDER}", f"dataset.fold={fold}",
                 f"trainer.max_minutes={minutes}", f"paths.cache_dir={work / 'cache'}"],
                {"nnUNet_preprocessed": str(preprocessed)})


TASKS = {"hippocampus": Hippocampus(), "acdc": Acdc()}


def score(task: Task, pred_dir: Path, cases: dict[str, dict[str, str]], held_out: list[str]) -> dict[str, float]:
    """Mean per-case Dice of each structure (a structure absent from reference and prediction counts 1)."""
    per_class = {name: [] for name in task.labels.values()}
    for case in held_out:
        ref = np.asanyarray(nib.load(cases[case]["label"]).dataobj).round().astype(np.int16)
        pred = np.asanyarray(nib.load(task.prediction(pred_dir, case)).dataobj).round().astype(np.int16)
        if pred.shape != ref.shape:
            raise SystemExit(f"{task.prediction(pred_dir, case)}: shape {pred.shape} != reference {ref.shape}")
        for value, name in task.labels.items():
            a, b = ref == value, pred == value
            denom = a.sum() + b.sum()
            per_class[name].append(1.0 if denom == 0 else 2.0 * np.logical_and(a, b).sum() / denom)
    result = {name: float(np.mean(v)) for name, v in per_class.items()}
    result["mean"] = float(np.mean(list(result.values())))
    return result


def run_peer(task: Task, dims: int, train: list[dict], held_out: list[dict], minutes: float, out: Path) -> dict:
    """The hand-wired MONAI loop, 3D patches or 2D slices."""
    import torch
    from monai import transforms as mt
    from monai.data import CacheDataset, DataLoader
    from monai.inferers import SliceInferer, SlidingWindowInferer
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    keys = ["image", "label"]
    window = task.patch3d if dims == 3 else (*task.patch2d, 1)
    load = [mt.LoadImaged(keys=keys), mt.EnsureChannelFirstd(keys=keys), mt.NormalizeIntensityd(keys="image", nonzero=True)]
    augment = [mt.SpatialPadd(keys=keys, spatial_size=window),
               mt.RandCropByPosNegLabeld(keys=keys, label_key="label", spatial_size=window, pos=2, neg=1, num_samples=2,
                                         image_key="image"),
               *[mt.RandFlipd(keys=keys, prob=0.5, spatial_axis=a) for a in task.flip_axes],
               mt.RandScaleIntensityd(keys="image", factors=0.1, prob=0.5),
               mt.RandShiftIntensityd(keys="image", offsets=0.1, prob=0.5),
               *([mt.SqueezeDimd(keys=keys, dim=-1)] if dims == 2 else [])]
    dataset = CacheDataset(train, mt.Compose([*load, *augment]), num_workers=2, progress=False)
    loader = DataLoader(dataset, batch_size=4 if dims == 3 else 8, shuffle=True, num_workers=0)
    channels = task.channels3d if dims == 3 else (16, 32, 64, 128, 256)
    strides = task.strides3d if dims == 3 else (2,) * (len(channels) - 1)
    model = UNet(spatial_dims=dims, in_channels=1, out_channels=len(task.labels) + 1, channels=channels,
                 strides=strides, num_res_units=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-5)

    def step(batch) -> float:
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(batch["image"]), batch["label"])
        loss.backward()
        optimizer.step()
        return float(loss)

    info = train_for(minutes, loader, step)
    inferer = (SlidingWindowInferer(task.patch3d, sw_batch_size=4, overlap=0.5, mode="gaussian") if dims == 3 else
               SliceInferer(roi_size=task.patch2d, spatial_dim=2, sw_batch_size=8, overlap=0.5, mode="gaussian"))
    model.eval()
    infer = mt.Compose([mt.LoadImaged(keys="image"), mt.EnsureChannelFirstd(keys="image"),
                        mt.NormalizeIntensityd(keys="image", nonzero=True)])
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for case in held_out:
            image = infer({"image": case["image"]})["image"]
            padded = mt.SpatialPad(spatial_size=window, method="end")(image)  # windows larger than the scan: pad at the end, crop back
            logits = inferer(padded[None], model)[..., : image.shape[1], : image.shape[2], : image.shape[3]]
            labels = logits.argmax(1)[0].numpy().astype(np.uint8)
            nib.save(nib.Nifti1Image(labels, nib.load(case["image"]).affine), out / f"{case['case']}.nii.gz")
    return {**info, "patch": list(window)}


def one_run(task: Task, recipe: str, fold: int, minutes: float, data: Path, extra: list[str]) -> dict:
    cases = task.cases(data)
    split = task.folds(data)[fold]
    train = [{**cases[c], "case": c} for c in split["train"]]
    held_out = [{**cases[c], "case": c} for c in split["val"]]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if recipe == "medseg":
            overrides, env = task.medseg_overrides(data, fold, minutes, work)
            old = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                info = run_medseg([*overrides, *extra], [c["image"] for c in held_out], work)
            finally:
                for k, v in old.items():
                    os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
            pred = info.pop("pred")
            config = (work / "run" / ".hydra" / "config.yaml").read_text()
            info["configuration"] = re.search(r"configuration: (\w+)", config).group(1)
            split_used = json.loads((work / "run" / "split.json").read_text())
            if sorted(split_used["val"]) != sorted(split["val"]):
                raise SystemExit(f"medseg trained on another split of fold {fold} than the peers")
        else:
            pred = work / "pred"
            info = run_peer(task, 3 if recipe == "peer3d" else 2, train, held_out, minutes, pred)
        dice = score(task, pred, cases, split["val"])
    return {"task": task.name, "recipe": recipe if not extra else f"{recipe} {' '.join(extra)}", "fold": fold,
            "minutes": minutes, **dice, **info, "train_cases": len(train), "held_out": len(held_out),
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def table(minutes: float) -> None:
    runs = [r for r in recorded(RUNS) if r["minutes"] == minutes]
    rows, notes = [], []
    for task in TASKS.values():
        best = latest((r for r in runs if r["recipe"] in RECIPES), task=task.name)
        margins = []
        for fold in sorted({f for _, f in best}):
            for recipe in RECIPES:
                r = best.get((recipe, fold))
                if r is None:
                    continue
                rows.append([task.name, fold, recipe, *[round(r[n], 3) for n in task.labels.values()], round(r["mean"], 4),
                             f"{r['epochs']} epochs ({r.get('configuration', '')})" if recipe == "medseg"
                             else f"{r['steps']} steps, patch {'x'.join(map(str, r['patch']))}"])
            peers = [best[(p, fold)]["mean"] for p in ("peer3d", "peer2d") if (p, fold) in best]
            if ("medseg", fold) in best and peers:
                margins.append(best[("medseg", fold)]["mean"] - max(peers))
        if margins:
            notes.append(f"{task.name}: medseg minus the better peer, mean Dice per fold: "
                         + ", ".join(f"{m:+.3f}" for m in margins) + f" (median {statistics.median(margins):+.3f})")
        notes += [f"Tuning run, {task.name} fold {r['fold']}, {r['date']}: `{r['recipe']}`: mean Dice {r['mean']:.4f}"
                  for r in runs if r["task"] == task.name and r["recipe"] not in RECIPES]
    headers = ["task", "fold", "recipe", "class Dice (hippocampus: Anterior, Posterior; ACDC: RV, Myo, LV)", "", "",
               "mean Dice", "training"]
    rows = [[*r[:3], *(r[3:-2] + [""] * (3 - len(r[3:-2]))), *r[-2:]] for r in rows]
    write_table("real_tasks", headers, rows, note=f"{minutes:g} min of training per run on this CPU, one run at a time; "
                "held-out cases of each fold scored by the same Dice code.\n\n" + "\n\n".join(notes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", default="hippocampus,acdc")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--table", action="store_true", help="only print the table of the recorded runs")
    parser.add_argument("--medseg-overrides", nargs="*", default=[],
                        help="extra medseg.train overrides (recorded with the run; the table shows plain 'medseg' only)")
    args = parser.parse_args()
    if not args.table:
        for name in args.tasks.split(","):
            task = TASKS[name]
            try:
                task.cases(args.data)
            except Exception as err:  # the real data live in ../shared/data
                print(f"skipped {name}: {err}")
                continue
            for fold in map(int, args.folds.split(",")):
                for recipe in args.recipes.split(","):
                    record(RUNS, one_run(task, recipe, fold, args.minutes, args.data,
                                         args.medseg_overrides if recipe == "medseg" else []))
    table(args.minutes)


if __name__ == "__main__":
    main()
