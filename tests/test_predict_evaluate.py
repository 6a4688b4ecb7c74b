"""Prediction in the original geometry, evaluation against MONAI and by hand, and bad inputs."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.metrics import (
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
)
from nibabel import orientations
from scipy import ndimage

from medseg.data.synthetic import TASK_NAME
from medseg.evaluate import evaluate
from medseg.metrics.surface import mask_metrics
from medseg.predict import predict
from medseg.train import train
from tests.conftest import ROOT


def compose_app(name: str, overrides: list[str], output_dir: Path | None = None):
    """Composes conf/<name>.yaml as ``python -m medseg.<name> <overrides>`` would."""
    from medseg.core.config import compose

    return compose(name, overrides)


@pytest.fixture(scope="module")
def trained(synthetic_data_dir, tmp_path_factory) -> Path:
    """A small model trained for 30 seeded epochs on the synthetic task (fold 0); returns its best.pt.

    Bounded by epochs, never by minutes: on a quiet 2-core machine it reaches mean validation Dice
    ~0.78 (liver ~0.93) in ~40 s, and a busy machine only takes longer to get the same model."""
    from medseg.core.config import compose_train

    run = tmp_path_factory.mktemp("trained")
    cfg = compose_train([f"paths.data_dir={synthetic_data_dir}", "trainer=fast", "trainer.device=cpu",
                         "trainer.max_epochs=30", "trainer.max_minutes=null", "trainer.val_every=10"], run)
    train(cfg)
    return run / "checkpoints" / "best.pt"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def resample_reorient(src: Path, dst: Path, zoom: float, axcodes: tuple[str, str, str], order: int) -> None:
    """Writes a resampled (voxel size / zoom) and reoriented copy with a consistent affine."""
    img = nib.load(str(src))
    data = np.asarray(img.dataobj)
    data = ndimage.zoom(data, zoom, order=order)
    affine = img.affine.copy()
    affine[:3, :3] = img.affine[:3, :3] / zoom
    transform = orientations.ornt_transform(orientations.io_orientation(affine), orientations.axcodes2ornt(axcodes))
    data2 = orientations.apply_orientation(data, transform)
    affine2 = affine @ orientations.inv_ornt_aff(transform, data.shape)
    nib.save(nib.Nifti1Image(data2.astype(img.get_data_dtype()), affine2), str(dst))


@pytest.mark.slow
def test_predict_returns_original_geometry_and_segments(trained, synthetic_data_dir, tmp_path):
    task = synthetic_data_dir / TASK_NAME
    split = json.loads((trained.parents[1] / "split.json").read_text())
    case = split["train"][0]
    scans = tmp_path / "scans"
    scans.mkdir()
    for test_image in (task / "imagesTs").iterdir():
        (scans / test_image.name).symlink_to(test_image)
    resample_reorient(task / "imagesTr" / f"{case}.nii.gz", scans / "moved.nii.gz", 1.3, ("L", "P", "I"), order=1)
    resample_reorient(task / "labelsTr" / f"{case}.nii.gz", tmp_path / "moved_label.nii.gz", 1.3, ("L", "P", "I"), order=0)

    out = tmp_path / "preds"
    result = predict(compose_app("predict", [f"ckpt={trained}", f"input={scans}", f"output={out}"], tmp_path))
    assert not result["failed"] and len(result["written"]) == 3
    for name in [p.name for p in scans.iterdir()]:
        src, pred = nib.load(str(scans / name)), nib.load(str(out / name))
        assert pred.shape == src.shape
        assert np.allclose(pred.affine, src.affine, atol=1e-4)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(src.affine)
    assert (out / "overlays" / "moved.png").is_file()
    pred = np.asarray(nib.load(str(out / "moved.nii.gz")).dataobj)
    ref = np.asarray(nib.load(str(tmp_path / "moved_label.nii.gz")).dataobj)
    fg_dice = dice(pred > 0, ref > 0)
    assert fg_dice > 0.5, fg_dice


def write_ct_series(src: Path, folder: Path) -> None:
    """``src`` as a CT series with its geometry (position, orientation, spacing per slice), as
    SimpleITK's DICOM series example writes one. (ITK's series writer alone writes Secondary Capture
    files without any geometry, which medseg refuses.)

    SimpleITK's DICOM writer, given tags, leaves the process locale at "C" (ASCII), which breaks every
    later ``read_text()`` of a UTF-8 file in this pytest process: the locale is put back."""
    import locale

    saved = locale.setlocale(locale.LC_ALL)
    try:
        _write_ct_series(src, folder)
    finally:
        locale.setlocale(locale.LC_ALL, saved)


def _write_ct_series(src: Path, folder: Path) -> None:
    import pydicom
    import SimpleITK as sitk

    image = sitk.Cast(sitk.ReadImage(str(src)), sitk.sitkInt16)
    direction = np.array(image.GetDirection()).reshape(3, 3)
    study, series, frame = (pydicom.uid.generate_uid() for _ in range(3))
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        tags = {"0008|0016": "1.2.840.10008.5.1.4.1.1.2", "0008|0018": pydicom.uid.generate_uid(), "0008|0060": "CT",
                "0020|000d": study, "0020|000e": series, "0020|0052": frame, "0020|0011": "1", "0020|0013": str(k + 1),
                "0020|0032": "\\".join(f"{v:.6f}" for v in image.TransformIndexToPhysicalPoint((0, 0, k))),
                "0020|0037": "\\".join(f"{v:.6f}" for v in (*direction[:, 0], *direction[:, 1])),
                "0028|0030": "{1:.6f}\\{0:.6f}".format(*image.GetSpacing()), "0018|0050": f"{image.GetSpacing()[2]:.6f}"}
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice_{k:03d}.dcm"))
        writer.Execute(plane)


@pytest.mark.slow
def test_predict_reads_a_dicom_series_and_matches_its_geometry(trained, synthetic_data_dir, tmp_path):
    src = synthetic_data_dir / TASK_NAME / "imagesTs" / sorted(p.name for p in (synthetic_data_dir / TASK_NAME / "imagesTs").iterdir())[0]
    series = tmp_path / "scans" / "ct_series"
    write_ct_series(src, series)
    out = tmp_path / "preds"
    result = predict(compose_app("predict", [f"ckpt={trained}", f"input={series}", f"output={out}", "save_overlays=false"], tmp_path))
    assert result["written"] == [str(out / "ct_series.nii.gz")]
    scan, pred = nib.load(str(src)), nib.load(str(out / "ct_series.nii.gz"))
    assert pred.shape == scan.shape  # the series read back in the scan's own voxel order and geometry
    assert np.allclose(pred.affine, scan.affine, atol=1e-3)


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_bad_inputs_each_give_one_line_naming_the_file(trained, synthetic_data_dir, tmp_path):
    good = sorted((synthetic_data_dir / TASK_NAME / "imagesTs").iterdir())[0]
    scans = tmp_path / "scans"
    scans.mkdir()
    (scans / "good.nii.gz").symlink_to(good)
    (scans / "truncated.nii.gz").write_bytes(good.read_bytes()[:300])  # a download cut short
    (scans / "notes.txt").write_text("not an image")
    four_d = nib.load(str(good))
    nib.save(nib.Nifti1Image(np.stack([np.asarray(four_d.dataobj)] * 2, -1), four_d.affine), scans / "two_channel.nii.gz")
    out = tmp_path / "preds"
    proc = run("medseg.predict", f"ckpt={trained}", f"input={scans}", f"output={out}", f"hydra.run.dir={tmp_path / 'r'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 3, proc.stderr
    assert any("truncated.nii.gz" in e and "cannot be read" in e for e in errors)
    assert any("notes.txt" in e and "not an image" in e for e in errors)
    assert any("two_channel.nii.gz" in e and "2 channel" in e for e in errors)
    assert (out / "good.nii.gz").is_file()  # the good case is still predicted

    # a checkpoint of another task in an ensemble
    other = tmp_path / "other.pt"
    state = torch.load(trained, weights_only=True)
    state["label_names"] = {"0": "background", "1": "hippocampus"}
    state["config"]["dataset"]["num_classes"] = 2
    torch.save(state, other)
    proc = run("medseg.predict", f"ckpt=[{trained},{other}]", f"input={good}", f"output={out}", f"hydra.run.dir={tmp_path / 'r2'}")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "other.pt was trained on another task" in proc.stderr
    # an unwritable output folder: tests/test_faults.py (in-process, like every other predict fault)


# --- evaluate ------------------------------------------------------------------------------------

def _write(path: Path, array: np.ndarray, spacing=(1.0, 1.0, 1.0)):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array.astype(np.uint8), np.diag([*spacing, 1.0])), str(path))


def test_hand_computed_dice_on_a_tiny_case():
    ref = np.zeros((4, 4, 1), bool)
    pred = np.zeros((4, 4, 1), bool)
    ref[0:2, 0:2] = True  # 4 voxels
    pred[0:2, 0:3] = True  # 6 voxels, 4 overlapping
    assert mask_metrics(pred, ref, (1, 1, 1))["dice"] == pytest.approx(2 * 4 / (4 + 6))
    empty = np.zeros_like(ref)
    assert mask_metrics(empty, empty, (1, 1, 1))["dice"] == 1.0 and math.isnan(mask_metrics(empty, empty, (1, 1, 1))["hd95"])
    assert mask_metrics(pred, empty, (1, 1, 1))["dice"] == 0.0


def test_validation_dice_on_label_maps_is_hand_computed_per_class_and_over_cases():
    """Validation scores uint8 label maps (no full-volume one-hot); a class absent from a case's
    reference and prediction is left out of that class's mean."""
    import torch

    from medseg.core.targets import ClassLabels
    from medseg.metrics.dice import PerClassDice

    target = ClassLabels()
    metric = PerClassDice(["liver", "spleen"], num_classes=3)
    ref = torch.zeros(1, 1, 4, 4, 1)
    ref[0, 0, 0:2, 0:2] = 1  # liver: 4 voxels; no spleen in this case
    probs = torch.zeros(1, 3, 4, 4, 1)
    probs[0, 0] = 1.0
    probs[0, 1, 0:2, 0:3] = 2.0  # liver predicted on 6 voxels, 4 of them right
    prediction = target.discretize(probs)
    assert prediction.dtype == torch.uint8 and prediction.shape == (1, 1, 4, 4, 1)
    metric.update(prediction, target.reference(ref, 3))
    ref2 = torch.zeros(1, 1, 4, 4, 1)
    ref2[0, 0, 3, 3] = 2  # second case: spleen 1 voxel, missed; liver absent everywhere
    metric.update(torch.zeros(1, 1, 4, 4, 1, dtype=torch.uint8), ref2)
    result = metric.compute()
    assert result["liver"] == pytest.approx(2 * 4 / (4 + 6)) and result["spleen"] == 0.0
    assert result["mean_dice"] == pytest.approx((0.8 + 0.0) / 2)


def test_evaluate_agrees_with_monai_and_reports_problems(tmp_path):
    rng = np.random.default_rng(0)
    spacing = (0.8, 0.8, 2.5)
    cases = {}
    for i in range(3):
        ref = np.zeros((24, 20, 12), np.uint8)
        ref[4 + i:14, 5:15, 2:9] = 1
        ref[15:20, 3:8, 4:8] = 2
        pred = ndimage.shift(ref, (rng.integers(-2, 3), rng.integers(-2, 3), 0), order=0)
        _write(tmp_path / "ref" / f"case_{i}.nii.gz", ref, spacing)
        _write(tmp_path / "pred" / f"case_{i}.nii.gz", pred, spacing)
        cases[f"case_{i}"] = (pred, ref)
    _write(tmp_path / "ref" / "only_ref.nii.gz", np.zeros((4, 4, 4)))
    _write(tmp_path / "pred" / "only_pred.nii.gz", np.zeros((4, 4, 4)))
    _write(tmp_path / "ref" / "bad_geom.nii.gz", np.zeros((24, 20, 12)), spacing)
    _write(tmp_path / "pred" / "bad_geom.nii.gz", np.zeros((24, 20, 11)), spacing)

    cfg = compose_app("evaluate", [f"pred={tmp_path / 'pred'}", f"ref={tmp_path / 'ref'}", f"output={tmp_path / 'out'}",
                                   "labels={1: organ, 2: lesion}", "nsd_tolerance_mm=2.0"], tmp_path)
    result = evaluate(cfg)
    assert len(result["problems"]) == 3
    assert any("only_ref" in p for p in result["problems"]) and any("only_pred" in p for p in result["problems"])
    assert any("bad_geom" in p and "geometry" in p for p in result["problems"])
    rows = {(r["case"], r["class"]): r for r in csv.DictReader(open(tmp_path / "out" / "per_case.csv"))}
    assert len(rows) == 6
    for case, (pred, ref) in cases.items():
        for value, name in ((1, "organ"), (2, "lesion")):
            p = torch.from_numpy((pred == value).astype(np.float32))[None, None]
            r = torch.from_numpy((ref == value).astype(np.float32))[None, None]
            row = rows[(case, name)]
            assert float(row["dice"]) == pytest.approx(float(compute_dice(p, r)[0, 0]), abs=1e-6)
            assert float(row["hd95"]) == pytest.approx(float(compute_hausdorff_distance(p, r, percentile=95, spacing=list(spacing))[0, 0]), abs=1e-5)
            assert float(row["asd"]) == pytest.approx(float(compute_average_surface_distance(p, r, symmetric=True, spacing=list(spacing))[0, 0]), abs=1e-5)
            assert float(row["nsd"]) == pytest.approx(float(compute_surface_dice(p, r, [2.0], spacing=list(spacing))[0, 0]), abs=1e-6)
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    organ = [float(rows[(c, "organ")]["dice"]) for c in cases]
    assert summary["classes"]["organ"]["dice"]["mean"] == pytest.approx(np.mean(organ))
    assert summary["classes"]["organ"]["dice"]["median"] == pytest.approx(np.median(organ))
    assert (tmp_path / "out" / "dice_per_class.png").is_file() and (tmp_path / "out" / "overlays" / "case_0.png").is_file()


def test_evaluate_scores_the_union_of_labels_over_all_references_and_predictions(tmp_path):
    """Without labels=/dataset.json the structures were taken from the first reference only: a class
    absent there was never scored, and a prediction that missed it elsewhere kept Dice 1.0."""
    first = np.zeros((8, 8, 4), np.uint8)
    first[1:4, 1:4, 1:3] = 1  # only label 1
    second = first.copy()
    second[5:7, 5:7, 1:3] = 2  # label 2 too
    _write(tmp_path / "ref" / "a.nii.gz", first)
    _write(tmp_path / "pred" / "a.nii.gz", first)
    _write(tmp_path / "ref" / "b.nii.gz", second)
    _write(tmp_path / "pred" / "b.nii.gz", first)  # misses label 2
    _write(tmp_path / "ref" / "c.nii.gz", np.zeros_like(first))  # empty reference, prediction finds label 3
    extra = np.zeros_like(first)
    extra[0, 0, 0] = 3
    _write(tmp_path / "pred" / "c.nii.gz", extra)
    cfg = compose_app("evaluate", [f"pred={tmp_path / 'pred'}", f"ref={tmp_path / 'ref'}", f"output={tmp_path / 'out'}",
                                   "overlays=false"])
    result = evaluate(cfg)
    dice = {(r["case"], r["class"]): r["dice"] for r in result["rows"]}
    assert sorted(result["summary"]) == ["label_1", "label_2", "label_3"]
    assert dice[("b", "label_2")] == 0.0 and dice[("a", "label_2")] == 1.0  # absent from both: Dice 1 by convention
    assert dice[("c", "label_3")] == 0.0 and dice[("c", "label_1")] == 1.0
    assert len(result["rows"]) == 9 and not result["problems"]
    assert any("[3]" in n and "only in predictions" in n for n in result["notes"])


def test_evaluate_brats_regions(tmp_path):
    ref = np.zeros((10, 10, 6), np.uint8)
    ref[2:8, 2:8, 1:5] = 2  # edema
    ref[3:7, 3:7, 2:4] = 1  # necrosis
    ref[4:6, 4:6, 2:4] = 4  # enhancing
    pred = ref.copy()
    pred[pred == 1] = 4  # necrosis called enhancing: TC and WT still perfect, ET worse
    _write(tmp_path / "ref" / "BraTS2021_00000.nii.gz", ref)
    _write(tmp_path / "pred" / "BraTS2021_00000.nii.gz", pred)
    cfg = compose_app("evaluate", [f"pred={tmp_path / 'pred'}", f"ref={tmp_path / 'ref'}", f"output={tmp_path / 'out'}",
                                   "regions=brats2021", "overlays=false"], tmp_path)
    s = evaluate(cfg)["summary"]
    assert s["TC"]["dice"]["mean"] == 1.0 and s["WT"]["dice"]["mean"] == 1.0
    assert s["ET"]["dice"]["mean"] == pytest.approx(2 * 8 / (8 + 32))
