"""Beyond one isotropic 3D task: the configuration rule (2D slices vs 3D), unknown spacing, the
2D-slice configuration end to end in several stored orientations, ensembles across
configurations, and choosing a configuration or ensemble from cross-validation results."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from medseg.core.config import compose_train
from medseg.data.synthetic import TASK_NAME
from medseg.planning import apply_plan, rules
from tests.conftest import SHARED_DATA, requires_shared
from tests.test_faults import run_entry
from tests.test_planning import make_task, planned

# --- the rule ------------------------------------------------------------------------------------

@pytest.mark.parametrize("spacing,median,expected", [
    ([1.0, 1.0, 1.0], [36, 50, 35], "3d"),          # hippocampus: isotropic
    ([1.4, 1.4, 8.0], [216, 256, 9], "2d"),          # cine cardiac MRI: thick and few slices
    ([0.6, 0.6, 3.6], [320, 320, 20], "2d"),         # prostate MRI
    ([0.8, 0.8, 5.0], [512, 512, 60], "3d"),         # thick CT slices, but many: a 3D network can pool them
    ([1.6, 1.6, 3.3], [100, 90, 37], "3d"),          # the synthetic CT: 2x, not anisotropic
])
def test_the_configuration_rule(spacing, median, expected):
    assert rules.default_configuration(spacing, median, 24) == expected


def test_slices_are_taken_along_the_coarsest_axis_or_the_one_with_fewest_voxels():
    assert rules.slice_axis([0.8, 5.0, 0.8], [300, 40, 300]) == 1
    assert rules.slice_axis([1.0, 1.0, 1.0], [256, 256, 8]) == 2


def test_lost_spacing_is_recognised_from_the_voxel_counts():
    assert rules.spacing_unknown([[1.0, 1.0, 1.0]] * 3, [[256, 256, 8]] * 3)
    assert not rules.spacing_unknown([[1.0, 1.0, 1.0]] * 3, [[36, 50, 35]] * 3)  # isotropic and really 1 mm
    assert not rules.spacing_unknown([[1.4, 1.4, 8.0]] * 3, [[216, 256, 9]] * 3)  # a real spacing
    assert rules.effective_spacing([1.0, 1.0, 1.0], [256, 256, 8]) == [1.0, 1.0, 10.0]
    assert rules.effective_spacing([1.0, 1.0, 1.0], [40, 40, 10]) == [1.0, 1.0, 4.0]


def test_identity_affines_and_8_slices_of_256x256_get_an_anisotropic_plan(tmp_path):
    task = make_task(tmp_path, "Task91_Lost", [(256, 256, 8)] * 3, (1.0, 1.0, 1.0), modality="MRI")
    cfg, plan = planned(task, tmp_path, modality="MRI")
    dataset = plan["dataset"]
    assert plan["fingerprint"]["spacing_unknown"] and plan["fingerprint"]["planning_spacing"][2] == 10.0
    assert dataset["configuration"] == "2d" and dataset["slice_axis"] == 2 and len(dataset["patch_size"]) == 2
    assert dataset["spacing"] == [1.0, 1.0, 0.0]  # no resampling: the stored grid is the only one there is
    assert 2 not in dataset["mirror_axes"]
    assert cfg.model.spatial_dims == 2 and cfg.dataset.window[2] == 1 and cfg.inferer.roi_size[2] == 1
    # asked for 3D, the network still treats z as the thick axis: in-plane kernels and pooling first
    cfg3, plan3 = planned(task, tmp_path, "dataset.configuration=3d", modality="MRI")
    assert plan3["dataset"]["configuration"] == "3d" and len(plan3["dataset"]["patch_size"]) == 3
    assert cfg3.model.strides[0] == [2, 2, 1] and plan3["dataset"]["patch_size"][2] <= 8
    assert cfg3.model.spatial_dims == 3 and cfg3.dataset.slice_axis is None


def test_thick_slices_with_a_real_spacing_plan_2d_and_isotropic_data_3d(tmp_path):
    thick = make_task(tmp_path, "Task92_Thick", [(120, 110, 10)] * 3, (1.2, 1.2, 7.0), modality="MRI")
    _, plan = planned(thick, tmp_path, modality="MRI")
    assert plan["dataset"]["configuration"] == "2d" and plan["dataset"]["spacing"] == [1.2, 1.2, 0.0]
    iso = make_task(tmp_path, "Task93_Iso", [(30, 40, 28)] * 3, (1.0, 1.0, 1.0), modality="MRI")
    _, plan = planned(iso, tmp_path, modality="MRI")
    assert plan["dataset"]["configuration"] == "3d" and plan["dataset"]["slice_axis"] is None


def test_an_nnunet_folder_is_planned_without_extra_settings(tmp_path):
    from tests.test_nnunet import make_raw

    root = make_raw(tmp_path, cases=5, channels=1)
    overrides = ["dataset=nnunet", f"dataset.root={root}", f"paths.cache_dir={tmp_path / 'cache'}"]
    cfg = compose_train(overrides, tmp_path / "run")
    assert cfg.dataset.plan == "auto"
    plan = apply_plan(cfg, overrides)
    assert plan is not None and cfg.dataset.patch_size == plan["dataset"]["patch_size"]


# --- the 2D-slice configuration end to end --------------------------------------------------------

@pytest.fixture(scope="module")
def slice_checkpoint(synthetic_data_dir, tmp_path_factory) -> Path:
    """A 2D-configuration checkpoint of the synthetic CT task (asked for on the command line)."""
    from medseg.train import train

    run = tmp_path_factory.mktemp("slice_run")
    overrides = [f"paths.data_dir={synthetic_data_dir}", "dataset.plan=auto", "dataset.configuration=2d",
                 "trainer.max_epochs=2", "trainer.steps_per_epoch=3", "trainer.val_every=1", "trainer.device=cpu",
                 "trainer.max_minutes=null", "dataset.num_workers=0", f"paths.cache_dir={run / 'cache'}"]
    result = train(compose_train(overrides, run))
    assert 0.0 <= result["best"]["metrics"]["mean_dice"] <= 1.0  # validated slice by slice
    return run / "checkpoints" / "last.pt"


def test_the_2d_configuration_trains_validates_and_records_itself(slice_checkpoint):
    state = torch.load(slice_checkpoint, weights_only=True)
    dataset = state["config"]["dataset"]
    assert dataset["configuration"] == "2d" and dataset["slice_axis"] == 2 and len(dataset["patch_size"]) == 2
    assert state["config"]["model"]["spatial_dims"] == 2
    assert any(k.startswith("net.") for k in state["model"])  # the 2D network inside its slice wrapper


def test_the_2d_configuration_predicts_in_the_inputs_geometry_in_three_orientations(slice_checkpoint,
                                                                                    synthetic_data_dir, tmp_path):
    from tests.test_predict_evaluate import resample_reorient

    source = sorted((synthetic_data_dir / TASK_NAME / "imagesTs").iterdir())[0]
    scans = tmp_path / "scans"
    scans.mkdir()
    for codes in (("R", "A", "S"), ("L", "P", "S"), ("P", "L", "I")):
        resample_reorient(source, scans / f"scan_{''.join(codes)}.nii.gz", 1.0, codes, order=1)
    out = tmp_path / "preds"
    assert run_entry("predict", [f"ckpt={slice_checkpoint}", f"input={scans}", f"output={out}", "save_overlays=false",
                                 f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    for scan in scans.iterdir():
        src, pred = nib.load(str(scan)), nib.load(str(out / scan.name))
        assert pred.shape == src.shape and np.allclose(pred.affine, src.affine, atol=1e-4)
        assert nib.aff2axcodes(pred.affine) == nib.aff2axcodes(src.affine)


def test_an_ensemble_of_a_2d_and_a_3d_checkpoint_predicts(slice_checkpoint, tiny_checkpoint, synthetic_data_dir):
    from medseg import Predictor

    predictor = Predictor.from_checkpoint([slice_checkpoint, tiny_checkpoint], device="cpu", tta=False)
    assert len(predictor.members) == 2  # different preprocessing: averaged in the input grid
    scan = sorted((synthetic_data_dir / TASK_NAME / "imagesTs").iterdir())[0]
    img = nib.load(str(scan))
    both = predictor.predict_file(str(scan), with_probabilities=True)
    assert both.labels.shape == img.shape and np.allclose(both.affine, img.affine)
    probabilities = both.probabilities
    assert probabilities.shape == (*img.shape, 3) and np.allclose(probabilities.sum(-1), 1.0, atol=1e-4)
    # the average of the two configurations' probabilities in the input grid, not either one alone
    alone = [Predictor.from_checkpoint(c, device="cpu", tta=False).predict_file(str(scan), with_probabilities=True)
             for c in (slice_checkpoint, tiny_checkpoint)]
    logits = [np.log(np.clip(a.probabilities, 1e-30, None)) for a in alone]
    softmax = np.exp((logits[0] + logits[1]) / 2)
    softmax /= softmax.sum(-1, keepdims=True)
    assert np.abs(softmax - probabilities).max() < 1e-3


@pytest.mark.slow
def test_the_2d_configuration_trains_and_predicts_on_real_acdc(tmp_path):
    root = requires_shared(SHARED_DATA / "Dataset027_ACDC")
    from medseg.train import train

    overrides = ["dataset=nnunet", f"dataset.root={root}", "dataset.max_cases=8", "trainer.max_epochs=1",
                 "trainer.steps_per_epoch=2", "trainer.device=cpu", "trainer.max_minutes=null", "trainer.val_every=1",
                 f"paths.cache_dir={tmp_path / 'cache'}"]
    cfg = compose_train(overrides, tmp_path / "run")
    train(cfg)
    config = yaml.safe_load((tmp_path / "run" / ".hydra" / "config.yaml").read_text())
    assert config["dataset"]["configuration"] == "2d" and config["dataset"]["slice_axis"] == 2
    image = sorted((root / "imagesTr").iterdir())[0]
    out = tmp_path / "preds"
    assert run_entry("predict", [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.pt'}", f"input={image}",
                                 f"output={out}", "save_overlays=false", f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    pred = nib.load(str(out / image.name.replace("_0000", "")))
    assert pred.shape == nib.load(str(image)).shape


# --- choosing a configuration or an ensemble from fold results ------------------------------------

def fold_run(sweep: Path, name: str, setting: str, fold: int, cases: dict[str, np.ndarray], labels: dict[str, Path]) -> Path:
    """A finished fold run as train() leaves it with trainer.export_validation=true."""
    from medseg.metrics.ensembles import save_validation_case

    run = sweep / name
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([f"dataset.configuration={setting}",
                                                                   "trainer.export_validation=true",
                                                                   f"dataset.fold={fold}"]))
    (run / "split.json").write_text(json.dumps({"fold": fold}))
    (run / "metrics.json").write_text(json.dumps({"best": {"epoch": 1, "metrics": {"mean_dice": 0.5}}}))
    for case, probabilities in cases.items():
        save_validation_case(run, case, probabilities, str(labels[case]))
    return run


def soft(labels: np.ndarray, noise: np.ndarray, classes: int = 3) -> np.ndarray:
    onehot = np.eye(classes)[labels]
    p = onehot * 0.6 + noise
    return p / p.sum(-1, keepdims=True)


@pytest.mark.parametrize("case_", ["ensemble wins", "3d wins"])
def test_the_configuration_and_ensemble_choice_is_reproducible_from_fold_results(case_, tmp_path, capsys):
    from medseg.cv_summary import main
    from medseg.metrics.ensembles import foreground_dice

    rng = np.random.default_rng(3)
    sweep, refs = tmp_path / "sweep", tmp_path / "labels"
    refs.mkdir()
    truth, files, probs = {}, {}, {"2d": {}, "3d": {}}
    for i in range(6):
        label = np.zeros((10, 12, 4), np.int64)
        label[2:6, 3:8, 1:3] = 1
        label[6:9, 2:5, :2] = 2
        truth[f"c{i}"], files[f"c{i}"] = label, refs / f"c{i}.nii.gz"
        nib.save(nib.Nifti1Image(label.astype(np.uint8), np.eye(4)), str(files[f"c{i}"]))
        for setting in ("2d", "3d"):  # each configuration errs on its own voxels; their average errs less
            noise = rng.uniform(0, 0.7 if (setting == "2d" and case_ == "3d wins") else 0.55, (*label.shape, 3))
            probs[setting][f"c{i}"] = soft(label, noise)
    for fold, cases in enumerate((["c0", "c1", "c2"], ["c3", "c4", "c5"])):
        for setting in ("2d", "3d"):
            fold_run(sweep, f"{fold}_{setting}", setting, fold, {c: probs[setting][c] for c in cases}, files)
    results = []
    for _ in range(2):
        main([str(sweep)])
        results.append(json.loads((sweep / "cv_choice.json").read_text()))
    assert results[0] == results[1]
    scores = {tuple(r["members"]): r["dice"] for r in results[0]["candidates"]}

    def expected(members):
        return np.mean([foreground_dice(np.argmax(np.mean([probs[m][c].astype(np.float16).astype(np.float32)
                                                           for m in members], 0), -1), truth[c], [1, 2])
                        for c in truth])

    key = {"2d": "dataset.configuration=2d", "3d": "dataset.configuration=3d"}
    for members in (("2d",), ("3d",), ("2d", "3d")):
        assert scores[tuple(key[m] for m in members)] == pytest.approx(expected(members), abs=1e-9)
    best = max(scores, key=lambda k: (round(scores[k], 6), -len(k)))
    assert tuple(results[0]["best"]["members"]) == best
    assert "Best:" in (sweep / "cv_summary.md").read_text() and "medseg.predict ckpt=[" in capsys.readouterr().out
