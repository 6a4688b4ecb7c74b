"""2D segmentation at equal CPU time: medseg's defaults against MedSegBench's recipe and a MONAI
2D-tutorial loop, on real 2D data split by subject, scored by one function with two metrics.

- medseg: ``python -m medseg.train dataset=images2d dataset.root=<data> dataset.group_pattern=...
  dataset.num_folds=3 dataset.fold=K trainer.max_minutes=M``, then ``python -m medseg.predict`` with
  ``checkpoints/last.pt`` on the held-out images (PNG label maps of the input's size).
- msb (MedSegBench's recipe, from the ``medsegbench`` package and the authors' training scripts):
  segmentation_models_pytorch ``Unet`` (encoder ``--encoder``, default resnet18, their lightest;
  the paper trains six) from scratch, images resized to 512 px, no augmentation, no intensity
  normalisation beyond [0, 1], Adam 1e-3 constant, batch 16, Dice loss on the binary logit.
- tutorial (the loop a MONAI user writes from MONAI's 2D segmentation tutorial): images resized
  to 256 px and scaled to [0, 1], random flips on both axes, MONAI ``UNet`` (16..256, 2 residual
  units), DiceCE, Adam 1e-3, batch 16; logits resized back to the image and argmaxed.

Each recipe trains for the same wall clock on this machine, one run at a time, in its own process.
Folds: medseg's seeded split of the subjects into 3 (the number before ``_`` in HC18's file names:
``010_HC`` and ``010_2HC`` are one fetus), the same for every recipe. Scores: per image, then the
mean: foreground Dice (both empty = 1, nnU-Net's convention) and MedSegBench's Dice
(``medseg.metrics.medsegbench``: both empty dropped). Every run is appended to
``benchmarks/results/medsegbench_recipe_runs.jsonl``; the table is built from that file.

    python -m benchmarks.medsegbench_recipe [--minutes 10] [--folds 0,1,2] [--recipes msb,tutorial,medseg]
    python -m benchmarks.medsegbench_recipe --table
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks.common import RESULTS, machine, write_table  # noqa: E402
from benchmarks.runs import latest, record, recorded, run_medseg, train_for  # noqa: E402

RUNS = RESULTS / "medsegbench_recipe_runs.jsonl"
GROUP = r"^(\d+)_"
RECIPES = ("msb", "tutorial", "medseg")


def folds(data: Path, count: int = 3) -> list[dict[str, list[str]]]:
    """medseg's own split of this folder by subject (what ``dataset.num_folds=3 dataset.group_pattern`` gives)."""
    from medseg.data.datalist import make_folds
    from medseg.data.images2d import images2d_cases, subject_groups

    cases = images2d_cases(data)
    return make_folds(list(cases), count, 12345, subject_groups(list(cases), GROUP))


def read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    mask = np.asarray(Image.open(path))
    mask = mask[..., 0] if mask.ndim == 3 else mask
    return (mask > (127 if mask.max() > 1 else 0)).astype(np.uint8)


def score(pred_dir: Path, data: Path, held_out: list[str]) -> dict[str, float]:
    """Mean over held-out images of the foreground Dice and of MedSegBench's Dice."""
    from medseg.metrics.medsegbench import dataset_score, medsegbench_dice

    standard, msb = [], []
    for case in held_out:
        ref, pred = read_mask(data / "masks" / f"{case}.png"), read_mask(pred_dir / f"{case}.png")
        if ref.shape != pred.shape:
            raise SystemExit(f"{pred_dir / case}.png: shape {pred.shape} != reference {ref.shape}")
        total = ref.sum() + pred.sum()
        standard.append(1.0 if total == 0 else 2.0 * np.logical_and(ref, pred).sum() / total)
        msb.append(medsegbench_dice(pred, ref, 2))
    return {"dice": float(np.mean(standard)), "msb_dice": dataset_score(msb)}


def _arrays(data: Path, cases: list[str], size: int) -> tuple:
    """Images in [0, 1] and binary masks, resized to ``size`` x ``size`` (as the peers' recipes do)."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    images, masks = [], []
    for case in cases:
        image = np.asarray(Image.open(data / "images" / f"{case}.png").convert("L"), dtype=np.float32) / 255.0
        images.append(F.interpolate(torch.from_numpy(image)[None, None], size=(size, size), mode="bilinear",
                                    align_corners=False)[0])
        mask = torch.from_numpy(read_mask(data / "masks" / f"{case}.png").astype(np.float32))[None, None]
        masks.append(F.interpolate(mask, size=(size, size), mode="nearest")[0])
    return torch.stack(images), torch.stack(masks)


def _predict_resized(model, data: Path, held_out: list[str], size: int, out: Path, binary_logit: bool) -> None:
    """Each held-out image resized to the recipe's size, its logits resized back, thresholded/argmaxed."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad():
        for case in held_out:
            image = np.asarray(Image.open(data / "images" / f"{case}.png").convert("L"), dtype=np.float32) / 255.0
            x = F.interpolate(torch.from_numpy(image)[None, None], size=(size, size), mode="bilinear", align_corners=False)
            logits = F.interpolate(model(x), size=image.shape, mode="bilinear", align_corners=False)[0]
            labels = (logits[0] > 0) if binary_logit else logits.argmax(0)
            Image.fromarray((labels.numpy() * 255).astype(np.uint8)).save(out / f"{case}.png")


def train_adam(model, loss_fn, images, masks, minutes: float, augment=None) -> dict:
    """Both peers' loop: Adam 1e-3 constant, batch 16, shuffled, for ``minutes`` of wall clock."""
    import torch

    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, masks), batch_size=16, shuffle=True)

    def step(batch) -> float:
        x, y = augment(*batch) if augment is not None else batch
        model.train()
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return float(loss)

    return train_for(minutes, loader, step)


def run_tutorial(data: Path, train: list[str], held_out: list[str], minutes: float, out: Path) -> dict:
    import torch
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(0)
    images, masks = _arrays(data, train, 256)
    model = UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2),
                 num_res_units=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)

    def flip(x, y):  # RandFlipd on both axes, prob 0.5 per sample
        for axis in (2, 3):
            chosen = torch.rand(len(x)) < 0.5
            x[chosen], y[chosen] = x[chosen].flip(axis), y[chosen].flip(axis)
        return x, y

    info = train_adam(model, loss_fn, images, masks, minutes, augment=flip)
    _predict_resized(model, data, held_out, 256, out, binary_logit=False)
    return info


def run_msb(data: Path, train: list[str], held_out: list[str], minutes: float, out: Path, encoder: str) -> dict:
    import segmentation_models_pytorch as smp
    import torch

    torch.manual_seed(0)
    images, masks = _arrays(data, train, 512)
    model = smp.Unet(encoder_name=encoder, encoder_weights=None, in_channels=1, classes=1)
    loss_fn = smp.losses.DiceLoss(mode="binary", from_logits=True)
    info = train_adam(model, loss_fn, images, masks, minutes)  # no augmentation, as in their scripts
    _predict_resized(model, data, held_out, 512, out, binary_logit=True)
    return {**info, "encoder": encoder}


def one_run(recipe: str, fold: int, minutes: float, data: Path, extra: list[str], encoder: str) -> dict:
    split = folds(data)[fold]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if recipe == "medseg":
            info = run_medseg(["dataset=images2d", f"dataset.root={data}", f"dataset.group_pattern='{GROUP}'",
                               "dataset.num_folds=3", f"dataset.fold={fold}", f"trainer.max_minutes={minutes}",
                               f"paths.cache_dir={work / 'cache'}", *extra],
                              [str(data / "images" / f"{c}.png") for c in split["val"]], work)
            pred = info.pop("pred")
        else:
            pred = work / "pred"
            info = (run_tutorial(data, split["train"], split["val"], minutes, pred) if recipe == "tutorial"
                    else run_msb(data, split["train"], split["val"], minutes, pred, encoder))
        scores = score(pred, data, split["val"])
    return {"recipe": recipe if not extra else f"{recipe} {' '.join(extra)}", "fold": fold, "minutes": minutes,
            "data": data.name, **scores, **info, "train_cases": len(split["train"]), "held_out": len(split["val"]),
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M")}


def table(minutes: float, data_name: str) -> None:
    runs = [r for r in recorded(RUNS) if r["minutes"] == minutes and r.get("data") == data_name]
    best = latest(r for r in runs if r["recipe"] in RECIPES)
    tuning = [r for r in runs if r["recipe"] not in RECIPES]
    rows, margins = [], []
    for fold in sorted({f for _, f in best}):
        for recipe in RECIPES:
            r = best.get((recipe, fold))
            if r is not None:
                rows.append([fold, recipe, round(r["dice"], 4), round(r["msb_dice"], 4),
                             f"{r['epochs']} epochs" if recipe == "medseg" else f"{r['steps']} steps"])
        peers = [best[(p, fold)]["dice"] for p in ("msb", "tutorial") if (p, fold) in best]
        if ("medseg", fold) in best and peers:
            margins.append(best[("medseg", fold)]["dice"] - max(peers))
    note = (f"{data_name}: {minutes:g} min of training per run on this CPU, one run at a time; held-out subjects of each "
            "fold scored by one function (foreground Dice per image, both empty = 1; MedSegBench's Dice per image, "
            "both empty dropped). medseg minus the better peer, foreground Dice per fold: "
            + ", ".join(f"{m:+.3f}" for m in margins) + (f" (median {statistics.median(margins):+.3f})" if margins else "")
            + "".join(f"\n\nTuning run, fold {r['fold']}, {r['date']}: `{r['recipe']}`: Dice {r['dice']:.4f}" for r in tuning))
    write_table("medsegbench_recipe", ["fold", "recipe", "Dice", "MedSegBench Dice", "training"], rows, note=note)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--folds", default="0,1,2")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hc18")
    parser.add_argument("--encoder", default="resnet18", help="smp encoder of MedSegBench's recipe")
    parser.add_argument("--table", action="store_true", help="only print the table of the recorded runs")
    parser.add_argument("--medseg-overrides", nargs="*", default=[],
                        help="extra medseg.train overrides (recorded with the run; the table shows plain 'medseg' only)")
    args = parser.parse_args()
    if not args.table:
        if not (args.data / "images").is_dir():
            raise SystemExit(f"skipped: {args.data / 'images'} not found (the real images live in ../shared/data/hc18)")
        for fold in map(int, args.folds.split(",")):
            for recipe in args.recipes.split(","):
                record(RUNS, one_run(recipe, fold, args.minutes, args.data,
                                     args.medseg_overrides if recipe == "medseg" else [], args.encoder))
    table(args.minutes, args.data.name)


if __name__ == "__main__":
    main()
