"""nnU-Net v2 raw datasets in and out: medseg's export passes nnU-Net's own integrity check, a
dataset converted by nnU-Net trains here on the same cases and folds, both tools score the same
Dice, and broken datasets are one line naming the file. Generated data only."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

from medseg.core.config import compose, compose_train
from medseg.core.errors import MedsegError, user_error_in
from medseg.data import datalist as dl
from medseg.data.nnunet import NnunetRegionsd, nnunet_datalist, regions_target
from medseg.data.synthetic import generate_task
from medseg.export_dataset import export_dataset
from tests.conftest import ROOT, TINY


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """``<data_dir>/Task99_Synthetic``: 5 labelled cases (liver, spleen) and 1 test case."""
    folder = tmp_path_factory.mktemp("data")
    generate_task(folder, cases=5, test_cases=1, seed=3)
    return folder


@pytest.fixture
def nnunet_env(tmp_path, monkeypatch) -> Path:
    """nnU-Net's three folders, empty, under ``tmp_path``; returns nnUNet_raw."""
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        (tmp_path / var).mkdir()
        monkeypatch.setenv(var, str(tmp_path / var))
    return tmp_path / "nnUNet_raw"


def _save(array: np.ndarray, path: Path, affine: np.ndarray | None = None) -> None:
    if path.name.endswith((".nii.gz", ".nii")):
        nib.save(nib.Nifti1Image(array, np.diag([1.5, 1.5, 2.0, 1.0]) if affine is None else affine), str(path))
    else:
        import itk

        image = itk.image_from_array(np.ascontiguousarray(array.transpose(2, 1, 0)))
        image.SetSpacing([1.5, 1.5, 2.0])
        itk.imwrite(image, str(path))


def make_raw(folder: Path, cases: int = 3, channels: int = 2, ending: str = ".nii.gz",
             labels: dict | None = None, **extra) -> Path:
    """A tiny nnU-Net raw dataset written by hand (8x8x6 voxels): labels 0/1/2, ``channels`` files per case."""
    root = folder / "Dataset900_Tiny"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(cases):
        label = np.zeros((8, 8, 6), np.uint8)
        label[2:6, 2:6, 1:4] = 1
        label[3:5, 3:5, 2:3] = 2
        for k in range(channels):
            _save(rng.normal(size=(8, 8, 6)).astype(np.float32) + label, root / "imagesTr" / f"case_{i:03d}_{k:04d}{ending}")
        _save(label, root / "labelsTr" / f"case_{i:03d}{ending}")
    meta = {"channel_names": {str(k): f"MR{k}" for k in range(channels)},
            "labels": labels or {"background": 0, "organ": 1, "core": 2},
            "numTraining": cases, "file_ending": ending, **extra}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


# --- out: medseg -> nnU-Net -------------------------------------------------------------------

def test_exported_dataset_passes_nnunet_integrity_check(data_dir, tmp_path, nnunet_env, capfd):
    """``python -m medseg.export_dataset dataset=synthetic`` as nnU-Net checks it: ``verify_dataset_integrity``
    is what ``nnUNetv2_plan_and_preprocess/extract_fingerprint --verify_dataset_integrity`` run first
    (called directly: the fingerprint those commands go on to compute adds ~15 s on 2 cores)."""
    integrity = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity",
                                    reason="nnunetv2 not installed (pip install nnunetv2)")
    cfg = compose("export_dataset", [f"paths.data_dir={data_dir}", f"output={nnunet_env}", "dataset_id=501"], tmp_path / "out")
    folder = export_dataset(cfg)
    assert folder == nnunet_env / "Dataset501_Synthetic"
    assert sorted(p.name for p in nnunet_env.iterdir()) == ["Dataset501_Synthetic"]  # no hidden partial left
    capfd.readouterr()
    integrity.verify_dataset_integrity(str(folder), 1)
    out = capfd.readouterr().out
    assert "verify_dataset_integrity Done" in out and "Error" not in out and "Warning" not in out, out
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0, "liver": 1, "spleen": 2} and meta["channel_names"] == {"0": "CT"}
    assert sorted(p.name for p in (folder / "imagesTs").iterdir()) == ["synthetic_005_0000.nii.gz"]
    # medseg's folds carry over exactly
    task = data_dir / "Task99_Synthetic"
    medseg_folds = dl.load_or_create_splits(task, list(dl.msd_datalist(task).cases))
    assert json.loads((folder / "splits_final.json").read_text()) == medseg_folds
    # an existing DatasetNNN is never overwritten
    with pytest.raises(MedsegError, match="Dataset501_Synthetic already exists"):
        export_dataset(cfg)


def test_export_splits_4d_msd_images_into_channels(tmp_path, nnunet_env):
    """A 4D channel-last MSD image (Task05_Prostate layout) becomes ``_0000``/``_0001`` files that
    nnU-Net accepts, and the export reads back here as the same 2-channel cases."""
    integrity = pytest.importorskip("nnunetv2.experiment_planning.verify_dataset_integrity",
                                    reason="nnunetv2 not installed (pip install nnunetv2)")
    task = tmp_path / "data" / "Task05_Prostate"
    for sub in ("imagesTr", "labelsTr"):
        (task / sub).mkdir(parents=True)
    training = []
    for i in range(3):
        label = np.zeros((8, 8, 6), np.uint8)
        label[2:6, 2:6, 1:4], label[3:5, 3:5, 2] = 1, 2
        _save(np.stack([label * 10.0 + i, label * -5.0], axis=-1).astype(np.float32), task / "imagesTr" / f"prostate_{i:02d}.nii.gz")
        _save(label, task / "labelsTr" / f"prostate_{i:02d}.nii.gz")
        training.append({"image": f"./imagesTr/prostate_{i:02d}.nii.gz", "label": f"./labelsTr/prostate_{i:02d}.nii.gz"})
    (task / "dataset.json").write_text(json.dumps({"modality": {"0": "T2", "1": "ADC"}, "labels": {"0": "background", "1": "PZ", "2": "TZ"},
                                                   "training": training, "test": []}))
    cfg = compose("export_dataset", ["dataset=msd/prostate", f"paths.data_dir={tmp_path / 'data'}", f"output={nnunet_env}",
                                     "dataset_id=5", "dataset.num_folds=3"], tmp_path / "out")
    folder = export_dataset(cfg)
    assert folder.name == "Dataset005_Prostate" and not (folder / "imagesTs").exists()
    integrity.verify_dataset_integrity(str(folder), 1)
    data = nnunet_datalist(folder)
    assert sorted(data.cases) == ["prostate_00", "prostate_01", "prostate_02"] and data.label_names == {0: "background", 1: "PZ", 2: "TZ"}
    channels = [nib.load(p).get_fdata() for p in data.cases["prostate_01"]["image"]]
    source = nib.load(task / "imagesTr" / "prostate_01.nii.gz").get_fdata()
    assert np.array_equal(channels[0], source[..., 0]) and np.array_equal(channels[1], source[..., 1])
    assert data.folds == dl.load_or_create_splits(task, list(data.cases), 3)


# --- in: nnU-Net -> medseg --------------------------------------------------------------------

def test_dataset_converted_by_nnunet_trains_on_its_cases_and_folds(data_dir, tmp_path, nnunet_env):
    """``nnUNetv2_convert_MSD_dataset`` output trains with ``dataset=nnunet``: same case ids, and
    the folds of a ``splits_final.json`` beside it are used as they are."""
    convert = pytest.importorskip("nnunetv2.dataset_conversion.convert_MSD_dataset",
                                  reason="nnunetv2 not installed (pip install nnunetv2)")
    convert.convert_msd_dataset(str(data_dir / "Task99_Synthetic"), overwrite_target_id=99, num_processes=1)
    root = nnunet_env / "Dataset099_Synthetic"
    msd_ids = sorted(dl.msd_datalist(data_dir / "Task99_Synthetic").cases)
    assert sorted(nnunet_datalist(root).cases) == msd_ids
    # folds that medseg's seeded split would never make: 2 folds, fold 1 validates on 2 cases
    folds = [{"train": msd_ids[2:], "val": msd_ids[:2]}, {"train": msd_ids[:3], "val": msd_ids[3:]}]
    (root / "splits_final.json").write_text(json.dumps(folds))
    cfg = compose_train(["dataset=nnunet", f"dataset.root={root}", "dataset.fold=1", *TINY, "trainer.steps_per_epoch=1",
                         "dataset.spacing=[6.0,6.0,6.0]"], tmp_path / "run")
    assert (cfg.dataset.num_classes, cfg.dataset.in_channels, cfg.dataset.modality) == (3, 1, "CT")  # from dataset.json
    from medseg.train import train

    result = train(cfg)
    assert result["epochs"] == 1
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert (split["fold"], split["train"], split["val"]) == (1, folds[1]["train"], folds[1]["val"])
    assert not (root / dl.SPLITS_FILE).exists()  # nnU-Net's split used, no seeded one made


def test_nnunet_preprocessed_splits_are_found(tmp_path, monkeypatch):
    """``splits_final.json`` where nnU-Net writes it: ``$nnUNet_preprocessed/DatasetXXX_Name/``."""
    root = make_raw(tmp_path)
    pre = tmp_path / "pre" / root.name
    pre.mkdir(parents=True)
    folds = [{"train": ["case_000", "case_001"], "val": ["case_002"]}]
    (pre / "splits_final.json").write_text(json.dumps(folds))
    assert nnunet_datalist(root).folds is None
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "pre"))
    assert nnunet_datalist(root).folds == folds


@pytest.mark.parametrize("ending", [".mha", ".nrrd"])
def test_mha_and_nrrd_datasets_load(tmp_path, ending):
    from monai.transforms import LoadImaged

    root = make_raw(tmp_path, ending=ending)
    case = nnunet_datalist(root).cases["case_001"]
    assert case["image"][1].endswith(f"case_001_0001{ending}")
    loaded = LoadImaged(keys=["image", "label"], ensure_channel_first=True, image_only=True)(case)
    assert tuple(loaded["image"].shape) == (2, 8, 8, 6) and tuple(loaded["label"].shape) == (1, 8, 8, 6)
    assert set(np.unique(np.asarray(loaded["label"])).tolist()) == {0, 1, 2}


def test_region_labels_train_as_regions(tmp_path):
    """BraTS-style region labels: ``dataset=nnunet_regions`` gives one sigmoid channel per region,
    painted back in ``regions_class_order``; ``dataset=nnunet`` refuses them in one line."""
    import torch

    labels = {"background": 0, "whole": [1, 2], "core": [2]}
    root = make_raw(tmp_path, channels=1, labels=labels, regions_class_order=[1, 2])
    data = nnunet_datalist(root, regions=True)
    assert data.label_names == {0: "whole", 1: "core"}
    label = torch.tensor([[[[0.0, 1.0, 2.0]]]])
    channels = NnunetRegionsd(keys="label", root=root)({"label": label})["label"]
    assert channels[:, 0, 0].tolist() == [[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]
    assert regions_target(root).label_map(channels[None]).flatten().tolist() == [0.0, 1.0, 2.0]
    cfg = compose_train(["dataset=nnunet_regions", f"dataset.root={root}"], tmp_path / "run")
    assert cfg.dataset.num_classes == 2 and "sigmoid: true" in OmegaConf.to_yaml(cfg.loss)  # the regions task's loss
    with pytest.raises(MedsegError, match="dataset=nnunet_regions"):
        nnunet_datalist(root)


# --- scores: medseg.evaluate vs nnU-Net ---------------------------------------------------------

def test_evaluate_agrees_with_nnunet_dice(tmp_path):
    """Per-case Dice of ``medseg.evaluate`` equals nnU-Net's ``compute_metrics_on_folder`` to 1e-6.

    One convention differs: a class absent from both reference and prediction is Dice 1.0 in
    medseg and NaN in nnU-Net (which then leaves it out of its means); compared where both are defined.
    """
    evaluation = pytest.importorskip("nnunetv2.evaluation.evaluate_predictions",
                                     reason="nnunetv2 not installed (pip install nnunetv2)")
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    from medseg.evaluate import evaluate

    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir(), pred_dir.mkdir()
    rng = np.random.default_rng(1)
    affine = np.diag([1.2, 0.8, 2.5, 1.0])
    for i in range(3):
        ref = np.zeros((20, 18, 10), np.uint8)
        ref[4:14, 3:12, 2:8] = 1
        ref[12:18, 10:16, 3:7] = 2
        pred = ref.copy()
        flip = rng.random(ref.shape) < 0.15  # noisy prediction
        pred[flip] = rng.integers(0, 3, int(flip.sum()))
        if i == 1:
            pred[pred == 2] = 0  # spleen missed: Dice 0 in both tools
        if i == 2:
            ref[ref == 2], pred[pred == 2] = 0, 0  # spleen in neither: medseg 1.0, nnU-Net NaN
        _save(ref, ref_dir / f"case_{i}.nii.gz", affine)
        _save(pred, pred_dir / f"case_{i}.nii.gz", affine)
    cfg = compose("evaluate", [f"pred={pred_dir}", f"ref={ref_dir}", "labels={1:liver,2:spleen}", "overlays=false"], tmp_path / "eval")
    ours = {(r["case"], r["class"]): r["dice"] for r in evaluate(cfg)["rows"]}
    theirs = evaluation.compute_metrics_on_folder(str(ref_dir), str(pred_dir), None, SimpleITKIO(), ".nii.gz", [1, 2], num_processes=1)
    compared = 0
    for entry in theirs["metric_per_case"]:
        case = Path(entry["reference_file"]).name[: -len(".nii.gz")]
        for value, name in ((1, "liver"), (2, "spleen")):
            dice = entry["metrics"][value]["Dice"]
            if case == "case_2" and value == 2:
                assert math.isnan(dice) and ours[(case, name)] == 1.0
                continue
            assert abs(ours[(case, name)] - dice) < 1e-6, (case, name, ours[(case, name)], dice)
            compared += 1
    assert compared == 5 and ours[("case_1", "spleen")] == 0.0


# --- bad input: one line naming the file ----------------------------------------------------

def _missing_channel(root: Path) -> str:
    (root / "imagesTr" / "case_001_0001.nii.gz").unlink()
    return "imagesTr/case_001_0001.nii.gz"


def _wrong_ending(root: Path) -> str:
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".mha"}))
    return "imagesTr/case_000_0000.nii.gz"


def _gap_in_labels(root: Path) -> str:
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "organ": 1, "core": 3}}))
    return "dataset.json"


def _unknown_split_case(root: Path) -> str:
    (root / "splits_final.json").write_text(json.dumps([{"train": ["case_000", "case_009"], "val": ["case_001"]}]))
    return "splits_final.json"


def _two_d(root: Path) -> str:
    meta = json.loads((root / "dataset.json").read_text())
    (root / "dataset.json").write_text(json.dumps({**meta, "file_ending": ".png"}))
    return "dataset.json"


def _missing_label(root: Path) -> str:
    (root / "labelsTr" / "case_002.nii.gz").unlink()
    return "labelsTr/case_002.nii.gz"


@pytest.mark.parametrize("breakage", [_missing_channel, _wrong_ending, _gap_in_labels, _unknown_split_case, _two_d, _missing_label],
                         ids=lambda f: f.__name__.strip("_"))
def test_broken_dataset_is_one_line_naming_the_file(tmp_path, breakage):
    root = make_raw(tmp_path)
    culprit = breakage(root)
    with pytest.raises(MedsegError) as err:
        nnunet_datalist(root)
    message = str(err.value)
    assert str(root / culprit) in message and "\n" not in message, message
    if breakage is _unknown_split_case:
        assert "case_009" in message


def test_broken_dataset_reaches_the_user_error_path(tmp_path):
    """Through the config the way ``python -m medseg.train dataset=nnunet`` builds the datalist:
    Hydra's instantiate wraps the error, the entry's ``exit_on_user_error`` finds it."""
    root = make_raw(tmp_path)
    _missing_channel(root)
    cfg = compose_train(["dataset=nnunet", f"dataset.root={root}"], tmp_path / "run")
    with pytest.raises(Exception) as err:
        instantiate(cfg.dataset.source)
    assert "case_001_0001.nii.gz is missing" in str(user_error_in(err.value))


def test_unreadable_root_reaches_the_user_error_path(tmp_path):
    """``${medseg_nnunet:...}`` on a folder without dataset.json: the resolver's MedsegError is
    what ``exit_on_user_error`` prints, even wrapped by OmegaConf."""
    cfg = compose_train(["dataset=nnunet", f"dataset.root={tmp_path / 'nothere'}"], tmp_path / "run")
    with pytest.raises(Exception) as err:
        _ = cfg.dataset.num_classes
    assert f"{tmp_path / 'nothere' / 'dataset.json'} not found" in str(user_error_in(err.value))


def test_resolver_is_registered_by_importing_medseg():
    """``python -m medseg.train dataset=nnunet`` resolves ``${medseg_nnunet:...}`` before anything
    imports medseg.data.nnunet, so ``import medseg`` must register it (as it does medseg_run_name)."""
    code = "import medseg; from omegaconf import OmegaConf; assert OmegaConf.has_resolver('medseg_nnunet')"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_source_splits_must_exist(tmp_path):
    root = make_raw(tmp_path)
    with pytest.raises(MedsegError, match="dataset.splits=.*nope.json not found"):
        nnunet_datalist(root, splits=tmp_path / "nope.json")
