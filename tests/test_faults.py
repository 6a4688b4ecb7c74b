"""Fault corpus: bad files, bad settings and unwritable places, each run through a real entry point
(train, predict, evaluate, download, cv_summary, MedMNIST training) in this process.

Every fault must end with its exit code, exactly one ``error:`` line that names the file (or key)
at fault, no traceback, its inputs unchanged (checksums) and no half-written output.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np
import pytest
from hydra.core.global_hydra import GlobalHydra

from medseg.core.checkpoint import load_checkpoint
from medseg.data.synthetic import generate_task
from tests.conftest import ROOT, TINY

CASE = "synthetic_000"


def run_entry(command: str, argv: list[str]) -> int:
    """Runs ``python -m medseg.<command> argv`` (or the download script) in this process; its exit code."""
    if command == "download":
        spec = importlib.util.spec_from_file_location("download_data", ROOT / "scripts" / "download_data.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return int(module.main(argv) or 0)
    module = __import__(f"medseg.{command}", fromlist=["main"])
    GlobalHydra.instance().clear()
    old_argv = sys.argv
    sys.argv = [f"medseg.{command}", *argv]
    try:
        module.main(argv) if command == "cv_summary" else module.main()
        return 0
    except SystemExit as stop:
        return int(stop.code or 0) if not isinstance(stop.code, str) else 1
    finally:
        sys.argv = old_argv
        GlobalHydra.instance().clear()


def checksums(*folders: Path) -> dict[str, str]:
    return {str(p): hashlib.md5(p.read_bytes()).hexdigest()
            for folder in folders if folder.exists() for p in sorted(folder.rglob("*")) if p.is_file()}


# --- ways to break a file ------------------------------------------------------------------------

def _nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> None:
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 3.0, 1.0]) if affine is None else affine), str(path))


def _image(task: Path) -> Path:
    return task / "imagesTr" / f"{CASE}.nii.gz"


def _label(task: Path) -> Path:
    return task / "labelsTr" / f"{CASE}.nii.gz"


def _edit(path: Path, change: Callable[[np.ndarray], np.ndarray], affine_change=None) -> None:
    img = nib.load(str(path))
    data, affine = np.asarray(img.dataobj), img.affine.copy()
    out = change(data)
    _nifti(path, out, affine_change(affine) if affine_change else affine)


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) // 2])


def nan_voxels(data: np.ndarray) -> np.ndarray:
    data = data.astype(np.float32)
    data[data.shape[0] // 2, data.shape[1] // 2, :] = np.nan
    return data


def shifted_affine(affine: np.ndarray) -> np.ndarray:
    affine = affine.copy()
    affine[:3, 3] += 25.0
    return affine


DATA_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    # name: (break the task folder, what the error line must name)
    "image truncated": (lambda t: truncate(_image(t)), f"{CASE}.nii.gz"),
    "image empty file": (lambda t: _image(t).write_bytes(b""), f"{CASE}.nii.gz"),
    "image not an image": (lambda t: _image(t).write_bytes(gzip.compress(b"hello, not a NIfTI file\n" * 50)), f"{CASE}.nii.gz"),
    "image 2D": (lambda t: _edit(_image(t), lambda d: d[:, :, 0]), f"{CASE}.nii.gz"),
    "image 4D, 2 channels": (lambda t: _edit(_image(t), lambda d: np.stack([d, d], -1)), "2 channel"),
    "image NaN voxels": (lambda t: _edit(_image(t), nan_voxels), "NaN"),
    "image all zero": (lambda t: _edit(_image(t), np.zeros_like), "empty"),
    "label truncated": (lambda t: truncate(_label(t)), f"labelsTr/{CASE}.nii.gz"),
    "label shape differs": (lambda t: _edit(_label(t), lambda d: d[:-3]), f"labelsTr/{CASE}.nii.gz"),
    "label affine differs": (lambda t: _edit(_label(t), lambda d: d, shifted_affine), "affine"),
    "label value outside labels": (lambda t: _edit(_label(t), lambda d: np.where(d == 1, 7, d).astype(np.uint8)), "[7]"),
    "label non-integer values": (lambda t: _edit(_label(t), lambda d: d.astype(np.float32) * 0.5), "non-integer"),
    "image file missing": (lambda t: _image(t).unlink(), "missing"),
    "dataset.json missing": (lambda t: (t / "dataset.json").unlink(), "dataset.json"),
    "dataset.json malformed": (lambda t: (t / "dataset.json").write_text("{\"labels\": {"), "dataset.json"),
    "dataset.json without training": (lambda t: (t / "dataset.json").write_text(json.dumps({"labels": {"0": "bg"}})),
                                      "dataset.json"),
}

CONFIG_FAULTS: dict[str, tuple[list[str], str]] = {
    "max_epochs not a number": (["trainer.max_epochs=abc"], "trainer.max_epochs"),
    "val_every zero": (["trainer.val_every=0"], "trainer.val_every"),
    "batch_size zero": (["dataset.batch_size=0"], "dataset.batch_size"),
    "max_minutes negative": (["trainer.max_minutes=-1"], "trainer.max_minutes"),
    "out_channels disagree with labels": (["model.out_channels=5"], "model.out_channels"),
    "patch not divisible by the network": (["dataset.patch_size=[30,30,30]"], "dataset.patch_size"),
    "num_classes disagree with dataset.json": (["dataset.num_classes=5"], "dataset.json"),
    "fold out of range": (["dataset.fold=9"], "dataset.fold=9"),
    "more folds than cases": (["dataset.num_folds=50"], "dataset.num_folds"),
    "data folder missing": (["paths.data_dir=/nonexistent/medseg-data", "dataset.prepare=null"], "/nonexistent"),
}


@dataclass
class Outcome:
    code: int
    out: str
    err: str

    @property
    def errors(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


@pytest.fixture(scope="module")
def task_template(tmp_path_factory) -> Path:
    from medseg.data.datalist import load_or_create_splits, msd_datalist

    data = tmp_path_factory.mktemp("faults_data")
    task = generate_task(data, cases=6, test_cases=1, seed=5)
    load_or_create_splits(task, list(msd_datalist(task).cases))  # written now, so no fault run writes it
    return data


@pytest.fixture
def data_copy(task_template, tmp_path) -> Path:
    shutil.copytree(task_template, tmp_path / "data")
    return tmp_path / "data"


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # conftest: one tiny unet3d training step, shared by the suite


def run_checked(capsys, command: str, argv: list[str], watched: list[Path], outputs: list[Path]) -> Outcome:
    before = checksums(*watched)
    capsys.readouterr()
    code = run_entry(command, argv)
    captured = capsys.readouterr()
    outcome = Outcome(code, captured.out, captured.err)
    assert "Traceback" not in captured.err + captured.out, captured.err[-3000:]
    assert checksums(*watched) == before, "an input changed"
    for folder in outputs:
        assert not [p for p in folder.rglob("*") if p.name.endswith((".tmp", ".partial.tmp"))], "half-written output left"
    return outcome


def assert_one_line(outcome: Outcome, code: int, names: str) -> None:
    assert outcome.code == code, (outcome.code, outcome.err[-2000:])
    assert len(outcome.errors) == 1, outcome.err[-2000:]
    assert names in outcome.errors[0], outcome.errors[0]


# --- train -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", sorted(DATA_FAULTS))
def test_train_refuses_broken_data_before_training(fault, data_copy, tmp_path, capsys):
    breaker, names = DATA_FAULTS[fault]
    task = data_copy / "Task99_Synthetic"
    breaker(task)
    run = tmp_path / "run"
    outcome = run_checked(capsys, "train", [f"paths.data_dir={data_copy}", *TINY, f"hydra.run.dir={run}"],
                          watched=[data_copy], outputs=[run])
    assert_one_line(outcome, 2, names)
    assert not list(run.glob("checkpoints/*.pt")), "no model may be saved from broken data"


@pytest.mark.parametrize("fault", sorted(CONFIG_FAULTS))
def test_train_refuses_bad_settings_up_front(fault, task_template, tmp_path, capsys):
    overrides, names = CONFIG_FAULTS[fault]
    run = tmp_path / "run"
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_template}", *TINY, *overrides,
                                            f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.run.dir={run}"],
                          watched=[task_template / "Task99_Synthetic"], outputs=[run])
    assert_one_line(outcome, 2, names)


def test_nan_loss_stops_at_once_naming_the_cases_and_keeps_no_nan_model(data_copy, tmp_path, capsys):
    """Data-loss case 3: with the data check off, NaN voxels made a NaN network saved as best.pt, exit 0."""
    _edit(_image(data_copy / "Task99_Synthetic"), nan_voxels)
    for other in sorted((data_copy / "Task99_Synthetic" / "imagesTr").glob("*.nii.gz")):
        _edit(other, nan_voxels)  # every batch then holds a NaN case
    run = tmp_path / "run"
    outcome = run_checked(capsys, "train", [f"paths.data_dir={data_copy}", *TINY, "dataset.check=false",
                                            f"hydra.run.dir={run}"], watched=[data_copy], outputs=[run])
    assert_one_line(outcome, 2, "synthetic_")
    assert "loss is nan" in outcome.errors[0] and "step 1" in outcome.errors[0]
    assert not list(run.glob("checkpoints/*.pt"))


def test_rerun_into_a_finished_run_folder_is_refused_with_the_resume_command(checkpoint, task_template, capsys):
    """Data-loss case 5: a second run into the same folder overwrote best.pt and last.pt silently."""
    run = checkpoint.parents[1]
    before = checksums(run / "checkpoints")
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_template}", *TINY, f"hydra.run.dir={run}",
                                            f"paths.cache_dir={run / 'cache'}"], watched=[run / "checkpoints"], outputs=[run])
    assert_one_line(outcome, 2, str(run))
    assert "trainer.resume=auto" in outcome.errors[0] and checksums(run / "checkpoints") == before


def test_resume_from_another_networks_checkpoint_is_one_line(checkpoint, task_template, tmp_path, capsys):
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_template}", *TINY, "model=segresnet",
                                            f"trainer.resume={checkpoint}", f"hydra.run.dir={tmp_path / 'run'}",
                                            f"paths.cache_dir={tmp_path / 'cache'}"], watched=[checkpoint.parent],
                          outputs=[tmp_path])
    assert_one_line(outcome, 2, str(checkpoint))


def test_resume_from_a_corrupt_checkpoint_is_one_line(task_template, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"PK\x03\x04 not really a checkpoint")
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_template}", *TINY, f"trainer.resume={bad}",
                                            f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"],
                          watched=[bad], outputs=[tmp_path])
    assert_one_line(outcome, 2, "bad.pt")


def test_leftover_checkpoint_temp_files_are_removed_at_the_next_start(task_template, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    debris = run / "checkpoints" / ".last.pt.12345.tmp"
    debris.write_bytes(b"\0" * 1024)
    code = run_entry("train", [f"paths.data_dir={task_template}", *TINY, "trainer.steps_per_epoch=1",
                               f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.resume=auto"])
    assert code == 0 and not debris.exists() and (run / "checkpoints" / "last.pt").is_file()


@pytest.mark.skipif(shutil.which("chattr") is None, reason="chattr not available")
def test_unwritable_checkpoint_folder_is_refused_before_training(task_template, tmp_path, capsys):
    """As root, permission bits do not stop writes: an immutable folder does."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    if subprocess.run(["chattr", "+i", str(run / "checkpoints")], capture_output=True).returncode:
        pytest.skip("this file system does not support chattr +i")
    try:
        outcome = run_checked(capsys, "train", [f"paths.data_dir={task_template}", *TINY, f"hydra.run.dir={run}",
                                                f"paths.cache_dir={tmp_path / 'cache'}"], watched=[], outputs=[])
    finally:
        subprocess.run(["chattr", "-i", str(run / "checkpoints")])
    assert_one_line(outcome, 2, str(run))
    assert "not writable" in outcome.errors[0]


# --- MedMNIST ------------------------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["npz missing", "npz not an npz", "npz without the train split"])
def test_medmnist_training_refuses_a_bad_npz(fault, tmp_path, capsys):
    npz = tmp_path / "medmnist" / "pneumoniamnist.npz"
    if fault != "npz missing":
        npz.parent.mkdir(parents=True)
        if fault == "npz not an npz":
            npz.write_bytes(b"not a zip archive at all")
        else:
            np.savez(npz, val_images=np.zeros((2, 28, 28), np.uint8), val_labels=np.zeros((2, 1), np.uint8))
    outcome = run_checked(capsys, "train", ["dataset=medmnist/pneumoniamnist", f"paths.data_dir={tmp_path}",
                                            "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'run'}"],
                          watched=[tmp_path / "medmnist"], outputs=[tmp_path / "run"])
    assert_one_line(outcome, 2, "pneumoniamnist.npz")


# --- plan (the fingerprint reads every case before anything is planned or trained) ----------------

PLAN_FAULTS = {name: DATA_FAULTS[name] for name in ("label shape differs", "label affine differs",
                                                     "label value outside labels")}
PLAN_FAULTS["image all NaN"] = (lambda t: _edit(_image(t), lambda d: np.full(d.shape, np.nan, np.float32)), "NaN")


@pytest.mark.parametrize("fault", sorted(PLAN_FAULTS))
def test_fingerprint_names_a_broken_case_in_one_line(fault, data_copy, tmp_path, capsys):
    breaker, names = PLAN_FAULTS[fault]
    task = data_copy / "Task99_Synthetic"
    breaker(task)
    outcome = run_checked(capsys, "plan", [f"paths.data_dir={data_copy}", "dataset.plan=auto"],
                          watched=[data_copy], outputs=[data_copy])
    assert_one_line(outcome, 2, names)
    assert not (task / "medseg_plan.yaml").exists() and not (task / "medseg_fingerprint.json").exists()


# --- predict -------------------------------------------------------------------------------------

@pytest.fixture
def scans(task_template, tmp_path) -> Path:
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("synthetic_001", "synthetic_002"):
        shutil.copy(task_template / "Task99_Synthetic" / "imagesTr" / f"{name}.nii.gz", folder)
    return folder


def test_predict_into_the_input_folder_is_refused_and_scans_are_untouched(checkpoint, scans, capsys):
    """Data-loss case 1: output=input overwrote the scans with label maps, exit 0."""
    outcome = run_checked(capsys, "predict", [f"ckpt={checkpoint}", f"input={scans}", f"output={scans}"],
                          watched=[scans], outputs=[scans])
    assert_one_line(outcome, 2, str(scans))
    assert sorted(p.name for p in scans.iterdir()) == ["synthetic_001.nii.gz", "synthetic_002.nii.gz"]


def test_predict_into_a_folder_that_contains_the_input_is_refused(checkpoint, scans, capsys):
    outcome = run_checked(capsys, "predict", [f"ckpt={checkpoint}", f"input={scans / 'synthetic_001.nii.gz'}",
                                              f"output={scans.parent}"], watched=[scans], outputs=[scans.parent])
    assert_one_line(outcome, 2, "output=")


PREDICT_CASE_FAULTS: dict[str, tuple[Callable[[Path], None], str]] = {
    "scan truncated": (lambda p: truncate(p), "bad.nii.gz"),
    "scan 2D": (lambda p: _edit(p, lambda d: d[:, :, 0]), "bad.nii.gz"),
    "scan with 2 channels": (lambda p: _edit(p, lambda d: np.stack([d, d], -1)), "bad.nii.gz"),
    "scan not an image": (lambda p: p.write_bytes(b"\x00" * 100), "bad.nii.gz"),
    "scan empty file": (lambda p: p.write_bytes(b""), "bad.nii.gz"),
}


@pytest.mark.parametrize("fault", sorted(PREDICT_CASE_FAULTS))
def test_predict_names_a_bad_scan_and_still_predicts_the_others(fault, checkpoint, scans, tmp_path, capsys):
    breaker, names = PREDICT_CASE_FAULTS[fault]
    bad = scans / "bad.nii.gz"
    shutil.copy(scans / "synthetic_001.nii.gz", bad)
    breaker(bad)
    out = tmp_path / "preds"
    outcome = run_checked(capsys, "predict", [f"ckpt={checkpoint}", f"input={scans}", f"output={out}",
                                              "save_overlays=false"], watched=[scans], outputs=[out])
    assert_one_line(outcome, 1, names)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["synthetic_001.nii.gz", "synthetic_002.nii.gz"]


@pytest.mark.parametrize("fault", ["checkpoint missing", "checkpoint corrupt", "input missing", "output unwritable"])
def test_predict_refuses_bad_arguments(fault, checkpoint, scans, tmp_path, capsys):
    ckpt, source, out = checkpoint, scans, tmp_path / "preds"
    if fault == "checkpoint missing":
        ckpt, names = tmp_path / "nope.pt", "nope.pt"
    elif fault == "checkpoint corrupt":
        ckpt, names = tmp_path / "corrupt.pt", "corrupt.pt"
        ckpt.write_bytes(load_checkpoint.__doc__.encode())
    elif fault == "input missing":
        source, names = tmp_path / "no_scans", "no_scans"
    else:
        (tmp_path / "a_file").write_text("x")
        out, names = tmp_path / "a_file" / "preds", "a_file"
    outcome = run_checked(capsys, "predict", [f"ckpt={ckpt}", f"input={source}", f"output={out}"],
                          watched=[scans, checkpoint.parent], outputs=[tmp_path])
    assert_one_line(outcome, 2, names)


# --- evaluate ------------------------------------------------------------------------------------

def _label_folders(tmp_path: Path) -> tuple[Path, Path]:
    ref, pred = tmp_path / "ref", tmp_path / "pred"
    ref.mkdir()
    pred.mkdir()
    volume = np.zeros((12, 12, 6), np.uint8)
    volume[3:8, 3:8, 1:4] = 1
    for name in ("a", "b"):
        _nifti(ref / f"{name}.nii.gz", volume)
        _nifti(pred / f"{name}.nii.gz", volume)
    return ref, pred


EVALUATE_FAULTS = {
    "prediction missing": (lambda ref, pred: (pred / "b.nii.gz").unlink(), 1, "no prediction"),
    "prediction on another grid": (lambda ref, pred: _nifti(pred / "b.nii.gz", np.zeros((12, 12, 5), np.uint8)), 1,
                                   "geometry differs"),
    "prediction unreadable": (lambda ref, pred: truncate(pred / "b.nii.gz"), 1, "unreadable"),
    "prediction folder missing": (lambda ref, pred: shutil.rmtree(pred), 2, "pred"),
}


@pytest.mark.parametrize("fault", sorted(EVALUATE_FAULTS))
def test_evaluate_names_each_problem(fault, tmp_path, capsys):
    breaker, code, names = EVALUATE_FAULTS[fault]
    ref, pred = _label_folders(tmp_path)
    breaker(ref, pred)
    outcome = run_checked(capsys, "evaluate", [f"pred={pred}", f"ref={ref}", f"output={tmp_path / 'out'}",
                                               "overlays=false"], watched=[ref, pred], outputs=[tmp_path / "out"])
    assert outcome.code == code
    lines = outcome.errors if code == 2 else [line for line in outcome.err.splitlines() if line.startswith("problem:")]
    assert len(lines) == 1 and names in lines[0], outcome.err


# --- download and cv_summary ---------------------------------------------------------------------

@pytest.mark.parametrize("fault", ["unknown MSD task", "unknown MedMNIST flag", "output unwritable"])
def test_download_refuses_bad_requests(fault, tmp_path, capsys):
    (tmp_path / "a_file").write_text("x")
    argv = {"unknown MSD task": ["--task", "kidneyz", "--output", str(tmp_path)],
            "unknown MedMNIST flag": ["--dataset", "medmnist", "--task", "pathmnistx", "--output", str(tmp_path)],
            "output unwritable": ["--dataset", "medmnist", "--task", "pathmnist", "--output", str(tmp_path / "a_file"),
                                  "--base-url", "http://127.0.0.1:9"]}[fault]
    names = {"unknown MSD task": "kidneyz", "unknown MedMNIST flag": "pathmnistx", "output unwritable": "a_file"}[fault]
    outcome = run_checked(capsys, "download", argv, watched=[tmp_path], outputs=[tmp_path])
    assert_one_line(outcome, 2, names)


@pytest.mark.parametrize("fault", ["folder missing", "no runs", "malformed metrics.json"])
def test_cv_summary_refuses_what_is_not_a_fold_sweep(fault, tmp_path, capsys):
    sweep = tmp_path / "sweep"
    if fault != "folder missing":
        sweep.mkdir()
    if fault == "malformed metrics.json":
        (sweep / "0_unet3d").mkdir()
        (sweep / "0_unet3d" / "metrics.json").write_text("{not json")
    outcome = run_checked(capsys, "cv_summary", [str(sweep)], watched=[tmp_path], outputs=[tmp_path])
    assert_one_line(outcome, 2, str(sweep) if fault != "malformed metrics.json" else "metrics.json")


def test_the_corpus_covers_at_least_forty_faults():
    train_singles = 6  # NaN loss, rerun into a run folder, two resume faults, temp debris, immutable folder
    count = (len(DATA_FAULTS) + len(CONFIG_FAULTS) + train_singles + 3  # train, MedMNIST
             + 2 + len(PREDICT_CASE_FAULTS) + 4 + len(EVALUATE_FAULTS) + 3 + 3)  # predict, evaluate, download, cv
    assert count >= 40, count
