"""Every dataset config trains a step on data in its real layout: MSD tasks with their real
dataset.json and channel layout, the real hippocampus cases, and AMOS / BraTS folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.core.config import compose_train
from medseg.data import manual
from medseg.train import train
from tests.conftest import CONF_DIR, SHARED_DATA, requires_shared

MSD_CONFIGS = sorted(p.stem for p in (CONF_DIR / "dataset" / "msd").glob("*.yaml"))
STEP = ["trainer.max_epochs=1", "trainer.steps_per_epoch=1", "trainer.device=cpu", "dataset.patch_size=[16,16,16]",
        "dataset.batch_size=1", "dataset.num_samples=1", "cache.workers=0", "dataset.max_cases=4",
        "model.channels=[8,16,32]", "model.strides=[2,2]", "inferer.sw_batch_size=4"]


def _fake_volume(rng, shape, channels, spacing, num_classes):
    image = rng.normal(100, 20, (*shape, channels) if channels > 1 else shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    for c in range(1, num_classes):
        lo = [2 + c, 3 + c, 1 + c]
        label[lo[0]:lo[0] + 5, lo[1]:lo[1] + 6, lo[2]:lo[2] + 4] = c
    affine = np.diag([*spacing, 1.0])
    return nib.Nifti1Image(image, affine), nib.Nifti1Image(label, affine)


def fake_msd_task(real_json: Path, root: Path, channels: int, spacing) -> Path:
    """Writes a tiny image/label for every training entry of a real dataset.json (kept verbatim)."""
    task = root / real_json.parent.name
    meta = json.loads(real_json.read_text())
    num_classes = len(meta["labels"])
    rng = np.random.default_rng(0)
    cache = {}
    for entry in meta["training"]:
        for key in ("image", "label"):
            (task / entry[key].strip()).parent.mkdir(parents=True, exist_ok=True)
        if not cache:
            image, label = _fake_volume(rng, (20, 22, 14), channels, spacing, num_classes)
            nib.save(image, task / entry["image"].strip())
            nib.save(label, task / entry["label"].strip())
            cache = {"image": task / entry["image"].strip(), "label": task / entry["label"].strip()}
        else:  # identical bytes are fine for a pipeline test and keep 1700 files fast
            shutil.copyfile(cache["image"], task / entry["image"].strip())
            shutil.copyfile(cache["label"], task / entry["label"].strip())
    shutil.copyfile(real_json, task / "dataset.json")
    return task


@pytest.mark.parametrize("name", MSD_CONFIGS)
def test_msd_config_trains_a_step_on_its_real_dataset_json(name, tmp_path):
    cfg = compose_train([f"dataset=msd/{name}", f"paths.data_dir={tmp_path / 'data'}", *STEP], tmp_path / "run")
    folder = Path(cfg.dataset.task_dir).name
    real_json = requires_shared(SHARED_DATA / "msd_dataset_json" / folder / "dataset.json")
    meta = json.loads(real_json.read_text())
    assert cfg.dataset.num_classes == len(meta["labels"])
    assert cfg.dataset.in_channels == len(meta["modality"])  # 4D channel-last tasks: brain 4, prostate 2
    fake_msd_task(real_json, tmp_path / "data", cfg.dataset.in_channels, list(cfg.dataset.spacing))
    result = train(cfg)
    names = [v.strip() for k, v in sorted(meta["labels"].items()) if k != "0"]
    assert result["epochs"] == 1 and list(result["best"]["metrics"])[:-1] == names
    # `python -m medseg.plan dataset=msd/<name>`: the default network's plan, from the same fingerprint
    from medseg.core.config import compose
    from medseg.plan import plan

    path = plan(compose("plan", [f"dataset=msd/{name}", f"paths.data_dir={tmp_path / 'data'}"]))
    planned = yaml.safe_load(path.read_text())
    assert planned["fingerprint"]["cases"] == meta["numTraining"]
    assert (Path(cfg.paths.output_dir) / ".hydra" / "plan.yaml").is_file()


def test_missing_msd_task_names_the_download_command(tmp_path):
    from medseg.core.errors import MedsegError
    from medseg.data.loaders import resolve_task_dir

    cfg = compose_train(["dataset=msd/liver", f"paths.data_dir={tmp_path}"], tmp_path / "run")
    with pytest.raises(MedsegError, match="make download TASK=liver"):
        resolve_task_dir(cfg.dataset)


@pytest.mark.slow
def test_real_hippocampus_trains(tmp_path):
    requires_shared(SHARED_DATA / "Task04_Hippocampus" / "dataset.json")
    cfg = compose_train(["dataset=msd/hippocampus", f"paths.data_dir={SHARED_DATA}", "trainer=fast",
                         "trainer.max_epochs=2", "trainer.max_minutes=null", "trainer.val_every=1", "dataset.max_cases=24", "trainer.device=cpu",
                         f"paths.cache_dir={tmp_path / 'cache'}"],  # ../shared is read-only: split, fingerprint, plan go here
                        tmp_path / "run")
    result = train(cfg)
    assert set(result["best"]["metrics"]) == {"Anterior", "Posterior", "mean_dice"}
    assert all(0.0 <= v <= 1.0 for v in result["best"]["metrics"].values())
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert len(split["train"]) + len(split["val"]) == 200  # the 5-fold split covers every real case
    assert all(c.startswith("hippocampus_") for c in split["val"])
    assert (tmp_path / "cache" / "msd_hippocampus" / "medseg_plan.yaml").is_file()
    assert not (SHARED_DATA / "Task04_Hippocampus" / "medseg_plan.yaml").exists()


# --- AMOS / BraTS -------------------------------------------------------------------------------

def _pair(path_img: Path, path_lab: Path, values, shape=(16, 16, 10), label_shape=None, channels=None):
    rng = np.random.default_rng(len(str(path_img)))
    affine = np.diag([1.5, 1.5, 2.0, 1.0])
    lab = np.zeros(label_shape or shape, np.uint8)
    for i, v in enumerate(values):
        lab[2 + 2 * i: 5 + 2 * i, 3:9, 2:7] = v
    path_img.parent.mkdir(parents=True, exist_ok=True)
    path_lab.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(rng.normal(size=shape).astype(np.float32), affine), path_img)
    nib.save(nib.Nifti1Image(lab, affine), path_lab)


def make_amos(root: Path) -> Path:
    for split, ids in (("Tr", [1, 5, 7, 9, 508, 512]), ("Va", [2, 3, 510])):
        for i in ids:
            _pair(root / f"images{split}" / f"amos_{i:04d}.nii.gz", root / f"labels{split}" / f"amos_{i:04d}.nii.gz",
                  values=[1, 6, 15])
    (root / "imagesTs").mkdir()
    _pair(root / "imagesTs" / "amos_0100.nii.gz", root / "scratch.nii.gz", values=[])
    (root / "scratch.nii.gz").unlink()
    return root


def make_brats(root: Path, year: int, cases: int = 6) -> Path:
    layout = manual.BRATS_LAYOUTS[year]
    labels = sorted(layout["labels"] - {0})
    for i in range(cases):
        case = f"BraTS2021_{i:05d}" if year == 2021 else f"BraTS-GLI-{i:05d}-000"
        sep = layout["sep"]
        for m in layout["modalities"]:
            _pair(root / case / f"{case}{sep}{m}.nii.gz", root / case / f"{case}{sep}seg.nii.gz", values=labels)
    return root


def test_amos_verify_and_train(tmp_path):
    root = make_amos(tmp_path / "data" / "amos22")
    report = manual.verify_amos(root)
    assert report.ok, report.problems
    assert any("4 CT, 2 MRI" in s for s in report.summary)
    cfg = compose_train(["dataset=amos", f"paths.data_dir={tmp_path / 'data'}", *STEP, "dataset.max_cases=null"],
                        tmp_path / "run")
    result = train(cfg)
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    assert split["val"] == ["amos_0002", "amos_0003"]  # official validation set, CT only by default
    assert "liver" in result["best"]["metrics"]


def test_amos_broken_copy_is_reported_file_by_file(tmp_path):
    root = make_amos(tmp_path / "amos22")
    (root / "labelsTr" / "amos_0005.nii.gz").unlink()
    _pair(root / "imagesTr" / "amos_0007.nii.gz", root / "labelsTr" / "amos_0007.nii.gz", values=[1, 22])
    _pair(root / "imagesVa" / "amos_0003.nii.gz", root / "labelsVa" / "amos_0003.nii.gz", values=[1],
          label_shape=(16, 16, 9))
    (root / "imagesTr" / "scan_1.nii.gz").write_bytes(b"x")
    problems = manual.verify_amos(root).problems
    assert any("labelsTr/amos_0005.nii.gz" in p and "missing" in p for p in problems)
    assert any("labelsTr/amos_0007.nii.gz" in p and "[22]" in p for p in problems)
    assert any("labelsVa/amos_0003.nii.gz" in p and "shape" in p for p in problems)
    assert any("scan_1.nii.gz" in p and "amos_XXXX" in p for p in problems)
    assert len(problems) == 4


@pytest.mark.parametrize("year", [2021, 2023])
def test_brats_verify_and_train_regions(tmp_path, year):
    root = make_brats(tmp_path / "data" / "brats", year)
    report = manual.verify_brats(root)
    assert report.ok, report.problems
    assert manual.detect_brats_year(root) == year
    cfg = compose_train(["dataset=brats", f"dataset.year={year}", f"paths.data_dir={tmp_path / 'data'}", *STEP,
                         "dataset.max_cases=null"], tmp_path / "run")
    assert cfg.loss.loss.sigmoid is True
    # the nested label-to-regions Compose is spliced in, so the whole preprocessing is cached
    # (a preprocessing step the cache would stop at is refused when the data is built)
    from hydra.utils import instantiate

    from medseg.data.loaders import build_segmentation_data

    assert build_segmentation_data(cfg.dataset, cfg.augment, instantiate(cfg.cache)).meta_free_training
    result = train(cfg)
    assert list(result["best"]["metrics"]) == ["TC", "WT", "ET", "mean_dice"]


def test_brats_region_conversion_uses_the_year_label_set(tmp_path):
    from hydra.utils import instantiate

    for year, et in ((2021, 4), (2023, 3)):
        cfg = compose_train(["dataset=brats", f"dataset.year={year}"], tmp_path / "run")
        convert = instantiate(cfg.dataset.label_transform)
        label = np.zeros((1, 4, 1, 1), np.float32)
        label[0, :, 0, 0] = [0, 1, 2, et]  # background, NCR, ED, ET
        regions = np.asarray(convert({"label": label})["label"])[:, :, 0, 0]
        # channels TC, WT, ET per voxel
        assert regions.T.tolist() == [[0, 0, 0], [1, 1, 0], [0, 1, 0], [1, 1, 1]]


def test_brats_broken_copy_is_reported_file_by_file(tmp_path):
    root = make_brats(tmp_path / "brats", 2023, cases=3)
    (root / "BraTS-GLI-00000-000" / "BraTS-GLI-00000-000-seg.nii.gz").unlink()
    case = root / "BraTS-GLI-00001-000"
    _pair(case / "BraTS-GLI-00001-000-t1c.nii.gz", case / "BraTS-GLI-00001-000-seg.nii.gz", values=[1, 4])
    _pair(root / "BraTS-GLI-00002-000" / "BraTS-GLI-00002-000-t2w.nii.gz", tmp_path / "x.nii.gz", values=[1],
          shape=(16, 16, 12))
    problems = manual.verify_brats(root).problems
    assert any("BraTS-GLI-00000-000-seg.nii.gz: missing" in p for p in problems)
    assert any("BraTS-GLI-00001-000-seg.nii.gz" in p and "[4]" in p for p in problems)
    assert any("BraTS-GLI-00002-000-seg.nii.gz" in p and "shape" in p for p in problems)


def test_readme_worked_example_adds_a_dataset_with_one_yaml_file(synthetic_data_dir, tmp_path):
    """The README's 'Adding a dataset' file, as printed there, trains on a folder in MSD layout."""
    import re

    from medseg.train import train
    from tests.conftest import TINY

    readme = (CONF_DIR.parent / "README.md").read_text()
    section = readme[readme.index("### Adding a dataset"):]
    yaml_text = re.search(r"```yaml\n(.*?)```", section, flags=re.S)[1]
    (tmp_path / "conf" / "dataset").mkdir(parents=True)
    (tmp_path / "conf" / "dataset" / "kidney.yaml").write_text(yaml_text)
    shutil.copytree(synthetic_data_dir / "Task99_Synthetic", tmp_path / "data" / "Task50_Kidney")
    cfg = compose_train([f"hydra.searchpath=[file://{tmp_path / 'conf'}]", "dataset=kidney",
                         f"paths.data_dir={tmp_path / 'data'}", *TINY, "trainer.steps_per_epoch=1"], tmp_path / "run")
    assert cfg.dataset.name == "kidney" and cfg.task.builder._target_.endswith("SegmentationTask")
    assert cfg.model._target_ == "monai.networks.nets.UNet"  # the recipe comes from the task, not the file
    assert train(cfg)["epochs"] == 1
