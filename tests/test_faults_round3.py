"""Fault corpus, round 3: shared checkpoints, parallel jobs, non-finite values and every value a
user or a plan file can set. Same assertions as ``test_faults.py``: exit code, one ``error:`` line
naming the file or key, no traceback, inputs unchanged, nothing half-written.

The first block holds the seven cases that lost data, ran foreign code or gave a wrong result
with exit code 0 before this round.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medseg.core.errors import MedsegError
from medseg.core.folders import FolderClaim
from tests.conftest import ROOT, TINY
from tests.test_faults import _label_folders, _nifti, assert_one_line, checksums, run_checked, run_entry


@pytest.fixture(scope="module")
def task_template(tmp_path_factory) -> Path:
    from medseg.data.datalist import load_or_create_splits, msd_datalist
    from medseg.data.synthetic import generate_task

    data = tmp_path_factory.mktemp("round3_data")
    task = generate_task(data, cases=6, test_cases=1, seed=5)
    load_or_create_splits(task, list(msd_datalist(task).cases))
    return data


@pytest.fixture
def task_copy(task_template, tmp_path) -> Path:
    shutil.copytree(task_template, tmp_path / "data", symlinks=True)
    return tmp_path / "data"


# --- hostile checkpoints: a checkpoint is data ---------------------------------------------------

HOSTILE = {  # name: (where in the config, what it plants: {pwned} is a file it would write)
    "writes a file": ("dataset.intensity", {"_target_": "torch.save", "obj": 1, "f": "{pwned}"}),
    "writes with numpy": ("model", {"_target_": "numpy.save", "file": "{pwned}", "arr": [1]}),
    "starts a process": ("inferer", {"_target_": "subprocess.run", "args": ["touch", "{pwned}"]}),
    "imports a module": ("dataset.target", {"_target_": "pwned_module.hello"}),
    "nested in a transform": ("dataset.intensity", {"_target_": "monai.transforms.Compose", "transforms": [
        {"_target_": "pathlib.Path.touch", "self": "{pwned}"}]}),
    "bundle expression": ("model", None),  # a MONAI-bundle "$..." string among the network's values
}


@pytest.fixture
def planted_module(tmp_path, monkeypatch) -> Path:
    """A module on sys.path whose import writes a file: importing it is running foreign code."""
    marker = tmp_path / "imported"
    (tmp_path / "pwned_module.py").write_text(f"open({str(marker)!r}, 'w').write('x')\ndef hello(): pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    return marker


def hostile_checkpoint(source: Path, tmp_path: Path, fault: str) -> tuple[Path, Path]:
    pwned = tmp_path / "pwned.npy"
    state = torch.load(source, weights_only=True)
    where, planted = HOSTILE[fault]
    if planted is None:
        state["config"]["model"]["norm"] = "$__import__('os').system('touch " + str(pwned) + "')"
    else:
        planted = json.loads(json.dumps(planted).replace("{pwned}", str(pwned)))
        section, _, key = where.partition(".")
        if key:
            state["config"][section][key] = planted
        else:
            state["config"][section] = planted
    path = tmp_path / "shared_model" / "best.pt"
    path.parent.mkdir()
    torch.save(state, path)
    return path, pwned


@pytest.mark.parametrize("entry", ["predict", "export bundle", "export torchscript", "Predictor.from_checkpoint", "resume"])
@pytest.mark.parametrize("fault", sorted(HOSTILE))
def test_a_checkpoint_never_runs_code(fault, entry, tiny_checkpoint, planted_module, tmp_path, capsys, synthetic_data_dir):
    """Data-loss case 1: predict, export and the Python API instantiated the checkpoint's _target_s."""
    ckpt, pwned = hostile_checkpoint(tiny_checkpoint, tmp_path, fault)
    scan = synthetic_data_dir / "Task99_Synthetic" / "imagesTs" / "synthetic_test_000.nii.gz"
    where = HOSTILE[fault][0]
    if entry == "Predictor.from_checkpoint":
        from medseg import Predictor

        with pytest.raises(MedsegError, match=where.replace(".", r"\.")):
            Predictor.from_checkpoint(ckpt, device="cpu")
    else:
        out = tmp_path / "out"
        command, argv = {
            "predict": ("predict", [f"ckpt={ckpt}", f"input={scan}", f"output={out}"]),
            "export bundle": ("export", [f"ckpt={ckpt}", "format=bundle", f"output={out}"]),
            "export torchscript": ("export", [f"ckpt={ckpt}", "format=torchscript", f"output={out}"]),
            "resume": ("train", [f"paths.data_dir={synthetic_data_dir}", *TINY, f"trainer.resume={ckpt}",
                                 f"hydra.run.dir={out}", f"paths.cache_dir={tmp_path / 'cache'}"]),
        }[entry]
        outcome = run_checked(capsys, command, argv, watched=[ckpt.parent], outputs=[tmp_path])
        assert_one_line(outcome, 2, where)
        assert not list(out.rglob("*.nii.gz")) and not (out / "configs").exists() and not (out / "model.ts").exists()
    assert not pwned.exists() and not planted_module.exists(), "the checkpoint ran code"


def test_a_plan_file_is_data_too(task_copy, tmp_path, capsys):
    """A medseg_plan.yaml whose intensity names a foreign _target_ is refused before training."""
    plan = tmp_path / "plan.yaml"
    pwned = tmp_path / "pwned"
    plan.write_text(yaml.safe_dump({"dataset": {"spacing": [4.0, 4.0, 4.0], "intensity": {
        "_target_": "torch.save", "obj": 1, "f": str(pwned)}}}))
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_copy}", *TINY, f"dataset.plan={plan}",
                                            f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'c'}"],
                          watched=[task_copy, plan], outputs=[tmp_path])
    assert_one_line(outcome, 2, "dataset.intensity")
    assert not pwned.exists()


# --- two jobs, one folder ---------------------------------------------------------------------------

def test_a_held_run_folder_is_refused_before_anything_is_written(task_copy, tmp_path, capsys):
    """Data-loss case 2, deterministically: another job holds the folder (its claim is taken here)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "train.log").write_text("the first job's log\n")
    with FolderClaim(run, "training"):
        outcome = run_checked(capsys, "train", [f"paths.data_dir={task_copy}", *TINY, f"hydra.run.dir={run}",
                                                f"paths.cache_dir={tmp_path / 'c'}"], watched=[run], outputs=[run])
    assert_one_line(outcome, 2, str(run))
    assert "in use by medseg training pid" in outcome.errors[0]
    assert sorted(p.name for p in run.iterdir()) == ["train.log"]  # no .hydra, no checkpoints (the claim released)
    assert (run / "train.log").read_text() == "the first job's log\n"


@pytest.mark.slow
def test_two_trainings_started_together_into_one_folder_one_trains_one_is_refused(task_copy, tmp_path):
    """Data-loss case 2 as users meet it: both exited 0 and the second overwrote the first's checkpoints."""
    run = tmp_path / "run"
    argv = [sys.executable, "-m", "medseg.train", f"paths.data_dir={task_copy}", *TINY, "trainer.steps_per_epoch=2",
            f"hydra.run.dir={run}", f"paths.cache_dir={tmp_path / 'cache'}", "trainer.threads=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    jobs = [subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            for _ in range(2)]
    results = [(job.wait(timeout=600), job.stderr.read()) for job in jobs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    refused = next(err for code, err in results if code == 2)
    assert "Traceback" not in refused and str(run) in refused
    assert ("in use by" in refused) or ("already holds a training run" in refused)
    ckpt = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["epoch"] == 1 and len(json.loads((run / "metrics.json").read_text())["best"]["metrics"]) > 0


def test_a_predict_into_a_folder_another_predict_holds_is_refused(tiny_checkpoint, synthetic_data_dir, tmp_path, capsys):
    out = tmp_path / "preds"
    out.mkdir()
    scan = synthetic_data_dir / "Task99_Synthetic" / "imagesTs" / "synthetic_test_000.nii.gz"
    with FolderClaim(out, "predict"):
        outcome = run_checked(capsys, "predict", [f"ckpt={tiny_checkpoint}", f"input={scan}", f"output={out}"],
                              watched=[scan.parent], outputs=[out])
    assert_one_line(outcome, 2, str(out))
    assert not list(out.glob("*.nii.gz"))


# --- non-finite values ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def api_predictor(tiny_checkpoint):
    from medseg import Predictor

    return Predictor.from_checkpoint(tiny_checkpoint, device="cpu", tta=False)


ARRAY_FAULTS = {  # name: (array, keyword arguments, what the one line names)
    "NaN voxel": (lambda a: np.where(np.indices(a.shape)[0] == 3, np.nan, a), {}, "NaN/Inf"),
    "Inf voxel": (lambda a: np.where(np.indices(a.shape)[0] == 3, np.inf, a), {}, "NaN/Inf"),
    "NaN in the affine": (lambda a: a, {"affine": np.diag([2.0, np.nan, 3.0, 1.0])}, "affine"),
    "spacing 1e6": (lambda a: a, {"spacing": (1e6, 1e6, 1e6)}, "voxel size"),
    "spacing negative": (lambda a: a, {"spacing": (2.0, -2.0, 3.0)}, "spacing"),
    "spacing NaN": (lambda a: a, {"spacing": (2.0, float("nan"), 3.0)}, "spacing"),
    "empty array": (lambda a: a[:0], {}, "empty"),
    "bool array": (lambda a: a > 0, {}, "dtype bool"),
    "complex array": (lambda a: a.astype(np.complex64), {}, "dtype complex64"),
    "singular affine": (lambda a: a, {"affine": np.diag([2.0, 0.0, 3.0, 1.0])}, "singular"),
}


@pytest.mark.parametrize("fault", sorted(ARRAY_FAULTS))
def test_predictor_refuses_bad_arrays_in_one_line(fault, api_predictor):
    """Data-loss case 3a: a NaN voxel changed the labels of almost half the volume, silently."""
    change, kwargs, names = ARRAY_FAULTS[fault]
    array = np.zeros((20, 22, 12), np.float32) - 100.0
    kwargs = kwargs if kwargs else {"spacing": (2.0, 2.0, 3.0)}
    kwargs = kwargs if ("spacing" in kwargs or "affine" in kwargs) else {**kwargs, "spacing": (2.0, 2.0, 3.0)}
    with pytest.raises(MedsegError) as caught:
        api_predictor.predict(change(array), **kwargs)
    assert names in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("overrides,names", [({"overlap": 1.0}, "inferer.overlap"), ({"sw_batch_size": 0}, "sw_batch_size"),
                                             ({"mode": "nearest"}, "inferer.mode"), ({"roi": 3}, "inferer.roi")])
def test_predictor_arguments_are_checked_at_construction(overrides, names, tiny_checkpoint):
    from medseg import Predictor

    with pytest.raises(MedsegError, match=names.replace(".", r"\.")):
        Predictor.from_checkpoint(tiny_checkpoint, device="cpu", inferer_overrides=overrides)


@pytest.fixture
def nan_checkpoint(tiny_checkpoint, tmp_path) -> Path:
    state = torch.load(tiny_checkpoint, weights_only=True)
    name = next(k for k, v in state["model"].items() if v.is_floating_point() and v.numel() > 1)
    state["model"][name][0] = float("nan")
    path = tmp_path / "nan_model" / "best.pt"
    path.parent.mkdir()
    torch.save(state, path)
    return path


@pytest.mark.parametrize("command", ["export", "predict"])
def test_a_checkpoint_with_nan_weights_is_neither_exported_nor_used(command, nan_checkpoint, synthetic_data_dir, tmp_path,
                                                                    capsys):
    """Data-loss case 3b/3c: exported to TorchScript and predicted all-background, exit 0."""
    out = tmp_path / "out"
    scan = synthetic_data_dir / "Task99_Synthetic" / "imagesTs" / "synthetic_test_000.nii.gz"
    argv = ([f"ckpt={nan_checkpoint}", "format=torchscript", f"output={out}"] if command == "export"
            else [f"ckpt={nan_checkpoint}", f"input={scan}", f"output={out}"])
    outcome = run_checked(capsys, command, argv, watched=[nan_checkpoint.parent], outputs=[tmp_path])
    assert_one_line(outcome, 2, "NaN/Inf")
    assert "nan_model/best.pt" in outcome.errors[0]
    assert not (out / "model.ts").exists() and not list(out.glob("*.nii.gz"))


def test_resume_from_a_checkpoint_with_nan_weights_is_refused(nan_checkpoint, task_copy, tmp_path, capsys):
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_copy}", *TINY, f"trainer.resume={nan_checkpoint}",
                                            f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'c'}"],
                          watched=[nan_checkpoint.parent], outputs=[tmp_path])
    assert_one_line(outcome, 2, "NaN/Inf")


def test_a_checkpoint_with_malformed_label_names_is_refused(tiny_checkpoint, tmp_path):
    from medseg import Predictor

    state = torch.load(tiny_checkpoint, weights_only=True)
    state["label_names"] = ["background", "liver"]
    path = tmp_path / "odd.pt"
    torch.save(state, path)
    with pytest.raises(MedsegError, match="label_names"):
        Predictor.from_checkpoint(path, device="cpu")


# --- evaluate and cv_summary ------------------------------------------------------------------------

def test_evaluate_reads_float_label_maps_as_the_nearest_class(tmp_path, capsys):
    """Data-loss case 4: a perfect prediction stored as 0.9999/1.9999 scored Dice 0 (truncated)."""
    ref, pred = _label_folders(tmp_path)
    for name in ("a", "b"):
        volume = np.asarray(nib.load(str(ref / f"{name}.nii.gz")).dataobj).astype(np.float32)
        volume[volume == 1] = 0.9999
        volume[5, 5, 5] = 1.9999 if name == "a" else volume[5, 5, 5]
        _nifti(pred / f"{name}.nii.gz", volume)
        reference = np.asarray(nib.load(str(ref / f"{name}.nii.gz")).dataobj).astype(np.uint8)
        reference[5, 5, 5] = 2 if name == "a" else reference[5, 5, 5]
        _nifti(ref / f"{name}.nii.gz", reference)
    outcome = run_checked(capsys, "evaluate", [f"pred={pred}", f"ref={ref}", f"output={tmp_path / 'out'}",
                                               "overlays=false"], watched=[ref, pred], outputs=[tmp_path / "out"])
    assert outcome.code == 0, outcome.err
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["classes"]["label_1"]["dice"]["mean"] == pytest.approx(1.0)
    assert summary["classes"]["label_2"]["dice"]["mean"] == pytest.approx(1.0)


def test_evaluate_refuses_a_probability_map_as_labels(tmp_path, capsys):
    ref, pred = _label_folders(tmp_path)
    _nifti(pred / "b.nii.gz", np.full((12, 12, 6), 0.4, np.float32))
    outcome = run_checked(capsys, "evaluate", [f"pred={pred}", f"ref={ref}", f"output={tmp_path / 'out'}",
                                               "overlays=false"], watched=[ref, pred], outputs=[tmp_path / "out"])
    problems = [line for line in outcome.err.splitlines() if line.startswith("problem:")]
    assert outcome.code == 1 and len(problems) == 1 and "non-integer" in problems[0] and "b.nii.gz" in problems[0]


def _finished_fold(sweep: Path, name: str, fold: int) -> Path:
    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"dataset.fold={fold}"]))
    (run / "split.json").write_text(json.dumps({"fold": fold}))
    (run / "metrics.json").write_text(json.dumps({"best": {"epoch": 1, "metrics": {"mean_dice": 0.8 + fold / 100}}}))
    return run


@pytest.mark.parametrize("fault", ["a fold crashed", "a fold still running"])
def test_cv_summary_names_fold_folders_without_results(fault, tmp_path, capsys):
    """Data-loss case 5: a table over the remaining folds (std NaN), exit 0, missing folds never named."""
    sweep = tmp_path / "sweep"
    _finished_fold(sweep, "0_unet3d", 0)
    broken = sweep / "1_unet3d"
    (broken / ".hydra").mkdir(parents=True)
    (broken / "train.log").write_text("...")
    if fault == "a fold still running":
        (broken / "checkpoints").mkdir()
    outcome = run_checked(capsys, "cv_summary", [str(sweep)], watched=[sweep], outputs=[sweep])
    assert_one_line(outcome, 2, "1_unet3d")
    assert "--partial" in outcome.errors[0] and not (sweep / "cv_summary.md").exists()
    assert run_entry("cv_summary", [str(sweep), "--partial"]) == 0
    assert "0.8000 ± n/a" in (sweep / "cv_summary.md").read_text()


def test_cv_summary_names_a_fold_one_setting_lacks(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for i, fold in enumerate((0, 1)):
        _finished_fold(sweep, f"{i}_unet3d", fold)
        (sweep / f"{i}_unet3d" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=unet3d", f"dataset.fold={fold}"]))
    _finished_fold(sweep, "2_segresnet", 0)
    (sweep / "2_segresnet" / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(["model=segresnet", "dataset.fold=0"]))
    outcome = run_checked(capsys, "cv_summary", [str(sweep)], watched=[sweep], outputs=[sweep])
    assert_one_line(outcome, 2, "model=segresnet: fold 1")


# --- data sources, splits and plans ----------------------------------------------------------------

def _nnunet_copy(tmp_path: Path) -> Path:
    from tests.test_nnunet import make_raw

    return make_raw(tmp_path / "raw", cases=5, channels=1)


NNUNET_JSON_FAULTS = {  # name: (change dataset.json, what the one line names)
    "label values not integers": (lambda m: m["labels"].update({"liver": 1.5}), "label 'liver'"),
    "labels as a list": (lambda m: m.update(labels=["background", "liver"]), "labels must be an object"),
    "numTraining not a number": (lambda m: m.update(numTraining="five"), "numTraining"),
    "entries without images": (lambda m: m.update(dataset={"case_000": {"label": "labelsTr/case_000.nii.gz"}}),
                               "case_000"),
    "channel_names as a list": (lambda m: m.update(channel_names=["CT"]), "channel_names"),
}


@pytest.mark.parametrize("fault", sorted(NNUNET_JSON_FAULTS))
def test_malformed_nnunet_dataset_json_values_are_one_line(fault, tmp_path, capsys):
    root = _nnunet_copy(tmp_path)
    change, names = NNUNET_JSON_FAULTS[fault]
    meta = json.loads((root / "dataset.json").read_text())
    change(meta)
    (root / "dataset.json").write_text(json.dumps(meta))
    outcome = run_checked(capsys, "train", ["dataset=nnunet", f"dataset.root={root}", *TINY,
                                            f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'c'}"],
                          watched=[root], outputs=[tmp_path / "run"])
    assert_one_line(outcome, 2, names)
    assert "dataset.json" in outcome.errors[0]


SPLIT_FAULTS = {  # name: (folds from the case ids, exit code, what the line names)
    "a fold with an empty val": (lambda ids: [{"train": ids, "val": []}], 2, "empty val"),
    "a fold with an empty train": (lambda ids: [{"train": [], "val": ids}], 2, "empty train"),
    "not a list of folds": (lambda ids: {"train": ids}, 2, "splits_final.json"),
}


@pytest.mark.parametrize("fault", sorted(SPLIT_FAULTS))
def test_bad_nnunet_splits_are_one_line(fault, tmp_path, capsys):
    root = _nnunet_copy(tmp_path)
    ids = sorted(p.name.removesuffix(".nii.gz") for p in (root / "labelsTr").iterdir())
    make, code, names = SPLIT_FAULTS[fault]
    (root / "splits_final.json").write_text(json.dumps(make(ids)))
    outcome = run_checked(capsys, "train", ["dataset=nnunet", f"dataset.root={root}", *TINY,
                                            f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'c'}"],
                          watched=[root], outputs=[tmp_path / "run"])
    assert_one_line(outcome, code, names)
    assert not list((tmp_path / "run").glob("checkpoints/*.pt")) and not (tmp_path / "run" / "metrics.json").exists()


def test_a_case_in_both_train_and_val_is_warned_about(tmp_path, caplog):
    from medseg.data.nnunet import read_splits

    ids = ["a", "b", "c"]
    path = tmp_path / "splits_final.json"
    path.write_text(json.dumps([{"train": ["a", "b"], "val": ["b", "c"]}]))
    assert read_splits(path, ids)[0]["val"] == ["b", "c"]
    assert "both train and val" in caplog.text and "b" in caplog.text


def test_a_dangling_symlink_is_named_as_such(task_copy, tmp_path, capsys):
    image = task_copy / "Task99_Synthetic" / "imagesTr" / "synthetic_000.nii.gz"
    image.unlink()
    image.symlink_to(tmp_path / "moved_away" / "synthetic_000.nii.gz")
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_copy}", *TINY, f"hydra.run.dir={tmp_path / 'run'}",
                                            f"paths.cache_dir={tmp_path / 'c'}"], watched=[], outputs=[tmp_path / "run"])
    assert_one_line(outcome, 2, "imagesTr/synthetic_000.nii.gz is a symlink to")


@pytest.fixture(scope="module")
def planned_template(tmp_path_factory) -> Path:
    """A synthetic task with a plan and fingerprint already made (as `python -m medseg.plan` leaves them)."""
    from medseg.data.synthetic import generate_task

    data = tmp_path_factory.mktemp("planned")
    generate_task(data, cases=6, test_cases=1, seed=5)
    assert run_entry("plan", [f"paths.data_dir={data}", "dataset.plan=auto"]) == 0
    return data


@pytest.fixture
def planned_copy(planned_template) -> Path:
    """The planned task in place (a copy elsewhere would be fingerprinted again: its file paths
    differ), restored after the test: the same files, byte for byte."""
    before = {p: p.read_bytes() for p in planned_template.rglob("*") if p.is_file()}
    times = {p: p.stat().st_mtime_ns for p in before}
    yield planned_template
    for p in [p for p in planned_template.rglob("*") if p.is_file() and p not in before]:
        p.unlink()
    for p, data in before.items():
        p.write_bytes(data)
        os.utime(p, ns=(times[p], times[p]))


def _case_folders(data: Path) -> list[Path]:
    """The user's files (a copied task is fingerprinted again: its paths changed)."""
    return [data / "Task99_Synthetic" / sub for sub in ("imagesTr", "labelsTr", "imagesTs")]


def _edit_plan(data: Path, change) -> Path:
    path = data / "Task99_Synthetic" / "medseg_plan.yaml"
    text = path.read_text()
    header = "".join(line + "\n" for line in text.splitlines() if line.startswith("#"))
    plan = yaml.safe_load(text)
    change(plan)
    path.write_text(header + yaml.safe_dump(plan, sort_keys=False))
    return path


PLAN_VALUE_FAULTS = {  # name: (edit the plan, what the one line names)
    "patch the network cannot divide": (lambda p: p["dataset"].update(patch_size=[30, 44, 20]), "dataset.patch_size"),
    "negative spacing": (lambda p: p["dataset"].update(spacing=[-2.0, 2.0, 3.0]), "dataset.spacing"),
    "string patch": (lambda p: p["dataset"].update(patch_size="64x64x32"), "dataset.patch_size"),
    "unknown key": (lambda p: p["dataset"].update(patch_sise=[64, 64, 32]), "did you mean dataset.patch_size"),
    "mirror axis out of range": (lambda p: p["dataset"].update(mirror_axes=[0, 3]), "dataset.mirror_axes"),
    "batch size zero": (lambda p: p["dataset"].update(batch_size=0), "dataset.batch_size"),
    "unknown section": (lambda p: p.update(netwrok={}), "did you mean network"),
}


@pytest.mark.parametrize("fault", sorted(PLAN_VALUE_FAULTS))
def test_hand_edited_plan_values_are_checked_before_caching(fault, planned_copy, tmp_path, capsys):
    change, names = PLAN_VALUE_FAULTS[fault]
    plan = _edit_plan(planned_copy, change)
    edited = plan.read_text()
    tiny = [o for o in TINY if not o.startswith(("dataset.patch_size", "dataset.spacing", "dataset.batch_size"))]
    outcome = run_checked(capsys, "train", [f"paths.data_dir={planned_copy}", *tiny, "dataset.plan=auto",
                                            f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'c'}"],
                          watched=_case_folders(planned_copy), outputs=[tmp_path / "run"])
    assert plan.read_text() == edited, "the hand edit was replaced"
    assert_one_line(outcome, 2, names)
    assert "medseg_plan.yaml" in outcome.errors[0] or fault == "patch the network cannot divide"
    assert plan.is_file() and not list((tmp_path / "run").glob("checkpoints/*.pt"))


COMMAND_LINE_FAULTS = {
    "negative spacing": (["dataset.spacing=[-4,4,4]"], "dataset.spacing"),
    "spacing of two values": (["dataset.spacing=[4,4]"], "dataset.spacing"),
    "string patch": (["dataset.patch_size=abc"], "dataset.patch_size"),
    "overlap of 1": (["inferer.overlap=1.0"], "inferer.overlap"),
    "sw_batch_size zero": (["inferer.sw_batch_size=0"], "inferer.sw_batch_size"),
}


@pytest.mark.parametrize("fault", sorted(COMMAND_LINE_FAULTS))
def test_command_line_values_are_checked_before_planning(fault, planned_copy, tmp_path, capsys):
    overrides, names = COMMAND_LINE_FAULTS[fault]
    outcome = run_checked(capsys, "train", [f"paths.data_dir={planned_copy}", *TINY, *overrides, "dataset.plan=auto",
                                            f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'c'}"],
                          watched=_case_folders(planned_copy), outputs=[tmp_path / "run"])
    assert_one_line(outcome, 2, names)


def test_a_fingerprint_file_of_the_wrong_json_type_is_recomputed(planned_copy, capsys):
    fingerprint = planned_copy / "Task99_Synthetic" / "medseg_fingerprint.json"
    fingerprint.write_text(json.dumps([1, 2, 3]))
    assert run_entry("plan", [f"paths.data_dir={planned_copy}", "dataset.plan=auto"]) == 0
    assert isinstance(json.loads(fingerprint.read_text()), dict)


def test_planning_again_twice_keeps_the_backup_of_the_hand_edit(planned_copy, capsys):
    plan = _edit_plan(planned_copy, lambda p: p["dataset"].update(batch_size=3))
    hand_edit = plan.read_text()
    for _ in range(2):  # two data changes, each planned again
        image = planned_copy / "Task99_Synthetic" / "imagesTr" / "synthetic_001.nii.gz"
        os.utime(image, (image.stat().st_atime, image.stat().st_mtime + 10))
        assert run_entry("plan", [f"paths.data_dir={planned_copy}", "dataset.plan=auto"]) == 0
    backups = sorted(plan.parent.glob("medseg_plan.yaml.bak*"))
    assert len(backups) == 2 and backups[0].read_text() == hand_edit


def test_an_unreadable_disk_cache_entry_is_recomputed(task_copy, tmp_path, caplog):
    from medseg.core.config import compose_train
    from medseg.train import train

    overrides = [f"paths.data_dir={task_copy}", *TINY, "trainer.steps_per_epoch=1", "cache=disk",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    train(compose_train(overrides, tmp_path / "run1"))
    entries = sorted((tmp_path / "cache").rglob("*.pt"))
    assert entries
    for entry in entries:  # a killed writer or a full disk: truncated archives
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 3])
    train(compose_train(overrides, tmp_path / "run2"))
    assert "unreadable" in caplog.text and all(torch.load(e, weights_only=True) is not None for e in entries)


def test_export_dataset_refuses_a_dataset_id_that_is_not_a_number(task_copy, tmp_path, capsys):
    outcome = run_checked(capsys, "export_dataset", [f"paths.data_dir={task_copy}", f"output={tmp_path / 'raw'}",
                                                     "dataset_id=abc"], watched=[task_copy], outputs=[tmp_path])
    assert_one_line(outcome, 2, "dataset_id=abc")


@pytest.mark.parametrize("fmt,main", [("bundle", "configs/inference.json"), ("torchscript", "model.ts")])
def test_export_into_an_earlier_export_is_refused_without_overwrite(fmt, main, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "exported"
    assert run_entry("export", [f"ckpt={tiny_checkpoint}", f"format={fmt}", f"output={out}"]) == 0
    before = checksums(out)
    outcome = run_checked(capsys, "export", [f"ckpt={tiny_checkpoint}", f"format={fmt}", f"output={out}"],
                          watched=[out], outputs=[out])
    assert_one_line(outcome, 2, main)
    assert "overwrite=true" in outcome.errors[0] and checksums(out) == before
    assert run_entry("export", [f"ckpt={tiny_checkpoint}", f"format={fmt}", f"output={out}", "overwrite=true"]) == 0


MSD_JSON_FAULTS = {
    "training entry without label": (lambda m: m["training"][0].pop("label"), "training entry 0"),
    "labels as a list": (lambda m: m.update(labels=["background", "liver"]), "labels must map"),
}


@pytest.mark.parametrize("fault", sorted(MSD_JSON_FAULTS))
def test_malformed_msd_dataset_json_values_are_one_line(fault, task_copy, tmp_path, capsys):
    change, names = MSD_JSON_FAULTS[fault]
    path = task_copy / "Task99_Synthetic" / "dataset.json"
    meta = json.loads(path.read_text())
    change(meta)
    path.write_text(json.dumps(meta))
    outcome = run_checked(capsys, "train", [f"paths.data_dir={task_copy}", *TINY, f"hydra.run.dir={tmp_path / 'run'}",
                                            f"paths.cache_dir={tmp_path / 'c'}"], watched=[task_copy], outputs=[tmp_path])
    assert_one_line(outcome, 2, names)


NEW_FAULTS = (len(HOSTILE) * 5 + 1 + 3 + len(ARRAY_FAULTS) + 4 + 2 + 2 + 2 + 1 + len(NNUNET_JSON_FAULTS) + len(SPLIT_FAULTS)
              + 2 + len(PLAN_VALUE_FAULTS) + len(COMMAND_LINE_FAULTS) + 3 + 1 + 2 + len(MSD_JSON_FAULTS))


def test_round_three_adds_at_least_thirty_faults():
    assert NEW_FAULTS >= 30, NEW_FAULTS
