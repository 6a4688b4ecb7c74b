"""Planning: the rules on stated cases, fingerprint + plan on generated tasks of each kind, the
precedence command line > plan > dataset YAML, a hand-edited plan, and read-only data folders."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from medseg.core.config import compose, compose_train
from medseg.core.errors import MedsegError
from medseg.planning import apply_plan, rules
from medseg.planning.fingerprint import FINGERPRINT_FILE
from medseg.planning.plan import PLAN_FILE
from tests.conftest import TINY

SETTINGS = {"patch_voxels": 128 ** 3, "step_voxels": 2 * 128 ** 3, "unet_channels": 16, "max_channels": 256,
            "dynunet_filters": 32, "max_filters": 320}


# --- rules --------------------------------------------------------------------------------------

def test_isotropic_spacing_is_the_median():
    spacings = [[1.0, 1.0, 1.0], [0.9, 0.9, 0.9], [1.2, 1.2, 1.2]]
    assert rules.target_spacing(spacings, [[100, 100, 100]] * 3) == [1.0, 1.0, 1.0]


def test_anisotropic_ct_takes_the_tenth_percentile_along_the_coarse_axis():
    # 0.8 x 0.8 x 5 mm, ~40 slices of 512: the median would be 5 mm; nnU-Net's rule keeps thinner slices
    spacings = [[0.8, 0.8, s] for s in (2.5, 3.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0)]
    shapes = [[512, 512, 40]] * 10
    target = rules.target_spacing(spacings, shapes)
    assert target[:2] == [0.8, 0.8]
    assert target[2] == pytest.approx(np.percentile([s[2] for s in spacings], 10))
    # the same spacings with as many slices as in-plane voxels are not "few slices": the median stays
    assert rules.target_spacing(spacings, [[512, 512, 512]] * 10)[2] == 5.0


def test_topology_pools_fine_axes_first_and_keeps_feature_maps_of_four():
    net = rules.topology([160, 160, 48], [0.8, 0.8, 3.0])
    strides, kernels = net["strides"], net["kernels"]
    assert strides[0] == [1, 1, 1] and len(kernels) == len(strides)
    assert strides[1] == [2, 2, 1] and kernels[0] == [3, 3, 1]  # 3 mm is > 2x 0.8 mm: not pooled, 1-wide kernel
    assert [2, 2, 2] in strides  # once in-plane has coarsened to 1.6 mm, z (3 mm) is within 2x and joins
    bottleneck = [p // d for p, d in zip([160, 160, 48], rules.divisor(strides))]
    assert min(bottleneck) >= rules.MIN_FEATURE_MAP and len(strides) - 1 <= rules.MAX_POOLS


@pytest.mark.parametrize("median,spacing", [([36, 50, 35], [1, 1, 1]), ([300, 300, 90], [0.8, 0.8, 2.5]),
                                             ([9, 11, 7], [1, 1, 1]), ([512, 512, 512], [1, 1, 1])])
def test_patch_covers_the_median_image_within_the_budget_and_divides(median, spacing):
    budget = 128 ** 3
    patch, net = rules.fit_patch(median, spacing, budget)
    assert all(p % d == 0 for p, d in zip(patch, rules.divisor(net["strides"])))
    assert math.prod(patch) <= budget
    multiple = rules.divisor(net["strides"])
    if math.prod(median) <= budget:  # the largest divisible patch inside the median image
        floor = 2 * rules.MIN_FEATURE_MAP  # below it no network can pool
        assert all(p <= max(m, floor) and p + d > m for p, m, d in zip(patch, median, multiple)), (patch, multiple)
    assert min(patch) >= 2 * rules.MIN_FEATURE_MAP  # a tiny task still gets a patch a network can use


def test_batch_is_at_least_two_and_at_most_five_percent_of_the_data():
    assert rules.patches_per_step([128, 128, 128], [400, 400, 400], 100, 2 * 128 ** 3) == 2
    assert rules.patches_per_step([40, 56, 40], [36, 50, 35], 200, 2 * 128 ** 3) == 7  # 5 % of the data
    assert rules.patches_per_step([40, 56, 40], [36, 50, 35], 4, 2 * 128 ** 3) == 2    # floor of two


def test_normalisation_follows_the_modality():
    stats = {"mean": 50.0, "std": 10.0, "percentile_00_5": -100.0, "percentile_99_5": 300.0}
    ct = rules.normalisation("CT", stats)
    assert ct["_target_"] == "monai.transforms.ScaleIntensityRanged" and ct["clip"]
    assert (ct["a_min"], ct["a_max"]) == (-100.0, 300.0)
    assert (ct["b_min"], ct["b_max"]) == ((-100 - 50) / 10, (300 - 50) / 10)  # clip, then (x - mean) / std
    mri = rules.normalisation("MRI", stats)
    assert mri["_target_"] == "monai.transforms.NormalizeIntensityd" and mri["nonzero"] and mri["channel_wise"]


# --- generated tasks ----------------------------------------------------------------------------

def make_task(root: Path, name: str, shapes: list[tuple[int, ...]], spacing: tuple[float, float, float],
              channels: int = 1, modality: str = "CT", classes: int = 2, value: float = 100.0,
              ordered: bool = False) -> Path:
    """An MSD-layout task: images of the given shapes (4D channels-last when channels > 1); the
    classes sit in a random order per case, or always in the same order along every axis."""
    task = root / name
    (task / "imagesTr").mkdir(parents=True)
    (task / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    training = []
    for i, shape in enumerate(shapes):
        affine = np.diag([*spacing, 1.0])
        image = rng.normal(value, value / 5, (*shape, channels) if channels > 1 else shape).astype(np.float32)
        label = np.zeros(shape, np.uint8)
        places = list(range(1, classes)) if ordered else list(rng.permutation(np.arange(1, classes)))
        for c, place in zip(range(1, classes), places):
            size = [max(2, s // (2 * classes)) for s in shape]
            sl = tuple(slice(1 + place * sz, 1 + place * sz + sz) for sz in size)
            label[sl] = c
        nib.save(nib.Nifti1Image(image, affine), task / "imagesTr" / f"case_{i:03d}.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), task / "labelsTr" / f"case_{i:03d}.nii.gz")
        training.append({"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"})
    meta = {"name": name, "modality": {str(c): modality if c == 0 else f"{modality}{c}" for c in range(channels)},
            "labels": {str(c): "background" if c == 0 else f"class{c}" for c in range(classes)},
            "numTraining": len(training), "training": training, "test": []}
    (task / "dataset.json").write_text(json.dumps(meta))
    return task


def task_overrides(task: Path, channels: int = 1, modality: str = "CT", classes: int = 2,
                   cache: Path | None = None) -> list[str]:
    return ["dataset=synthetic", f"dataset.task_dir={task}", "dataset.prepare=null", "dataset.plan=auto",
            f"dataset.modality={modality}", f"dataset.in_channels={channels}", f"dataset.num_classes={classes}",
            f"dataset.name={task.name}", f"paths.cache_dir={cache or task.parent / 'cache'}"]


def planned(task: Path, tmp_path: Path, *extra: str, channels: int = 1, modality: str = "CT", classes: int = 2):
    overrides = [*task_overrides(task, channels, modality, classes), *extra]
    cfg = compose_train(overrides, tmp_path / "run")
    plan = apply_plan(cfg, overrides)
    return cfg, plan


def test_isotropic_mri_plan(tmp_path):
    task = make_task(tmp_path, "Task90_Mri", [(30, 40, 28), (34, 44, 30), (32, 42, 30)], (1.0, 1.0, 1.0),
                     modality="MRI", classes=3)
    cfg, plan = planned(task, tmp_path, modality="MRI", classes=3)
    assert plan["dataset"]["spacing"] == [1.0, 1.0, 1.0]
    # the median image is 32x42x30: 32 and 42 pool three times (divisor 8), 30 twice (15 -> 7 < 8)
    assert cfg.dataset.patch_size == [32, 40, 28]
    assert cfg.model.strides == [[2, 2, 2], [2, 2, 2], [2, 2, 1]] and cfg.model.channels == [16, 32, 64, 128]
    assert cfg.dataset.intensity._target_ == "monai.transforms.NormalizeIntensityd"
    assert cfg.dataset.rot90_axes is None and cfg.dataset.mirror_axes == [0, 1, 2]  # no two equal sides
    assert cfg.augment.random.flip_y is not None


def test_classes_in_a_fixed_order_are_not_mirrored_along_it(tmp_path):
    # like anterior/posterior hippocampus: class 1 always before class 2 (here along every axis)
    task = make_task(tmp_path, "Task98_Order", [(32, 32, 32)] * 4, (1.0, 1.0, 1.0), modality="MRI", classes=3,
                     ordered=True)
    cfg, plan = planned(task, tmp_path, modality="MRI", classes=3)
    assert plan["dataset"]["mirror_axes"] == [] and cfg.dataset.rot90_axes is None
    assert cfg.augment.random.flip_x is None and cfg.augment.random.rot90 is None
    assert rules.ordered_axes([{"1": [0, 5, 0], "2": [0, 9, 1]}, {"1": [3, 2, 0], "2": [1, 7, 0]},
                               {"1": [0, 1, 2], "2": [4, 8, 1]}]) == [1]  # only y keeps its order
    assert (task / FINGERPRINT_FILE).is_file() and (task / PLAN_FILE).is_file()


def test_anisotropic_ct_plan_with_dynunet(tmp_path):
    task = make_task(tmp_path, "Task91_Ct", [(96, 96, 12)] * 3, (0.8, 0.8, 5.0))
    _, default = planned(task, tmp_path, "model=dynunet")
    assert default["dataset"]["configuration"] == "2d"  # 12 slices of 5 mm: thick and few (tests/test_configurations.py)
    cfg, plan = planned(task, tmp_path, "model=dynunet", "dataset.configuration=3d")
    fingerprint = json.loads((task / FINGERPRINT_FILE).read_text())
    assert plan["dataset"]["spacing"] == [0.8, 0.8, 5.0]
    assert cfg.dataset.mirror_axes == [0, 1]  # the 5 mm axis is not mirrored (one class: no order to keep)
    strides, kernels = cfg.model.strides, cfg.model.kernel_size
    assert strides[1] == [2, 2, 1] and kernels[0] == [3, 3, 1]
    assert list(cfg.model.upsample_kernel_size) == list(strides[1:])
    assert all(p % d == 0 for p, d in zip(cfg.dataset.patch_size, rules.divisor(strides)))
    ct = cfg.dataset.intensity
    intensity = fingerprint["foreground_intensity"][0]
    assert ct.a_min == pytest.approx(intensity["percentile_00_5"], abs=1e-3)
    assert ct.b_max == pytest.approx((intensity["percentile_99_5"] - intensity["mean"]) / intensity["std"], abs=1e-3)


def test_multimodal_4d_plan_normalises_each_channel(tmp_path):
    task = make_task(tmp_path, "Task92_Mm", [(24, 28, 20)] * 3, (1.0, 1.0, 1.0), channels=4, modality="MRI", classes=4)
    cfg, plan = planned(task, tmp_path, channels=4, modality="MRI", classes=4)
    fingerprint = json.loads((task / FINGERPRINT_FILE).read_text())
    assert fingerprint["channels"] == 4 and len(fingerprint["foreground_intensity"]) == 4
    assert cfg.dataset.intensity.channel_wise
    assert set(fingerprint["class_presence"]) == {"0", "1", "2", "3"}


def test_tiny_task_gets_a_usable_patch_and_trains(tmp_path):
    task = make_task(tmp_path, "Task93_Tiny", [(9, 10, 7)] * 4, (1.0, 1.0, 1.0))
    overrides = [*task_overrides(task), *[o for o in TINY if not o.startswith(("dataset.patch_size", "dataset.spacing"))],
                 "dataset.num_folds=2", "trainer.steps_per_epoch=1"]
    from medseg.train import train

    cfg = compose_train(overrides, tmp_path / "run")
    apply_plan(cfg, overrides)
    assert min(cfg.dataset.patch_size) >= 2 * rules.MIN_FEATURE_MAP
    result = train(compose_train(overrides, tmp_path / "run2"))
    assert result["epochs"] == 1


# --- precedence, hand edits, re-planning --------------------------------------------------------

def test_command_line_wins_and_the_network_follows_its_patch(tmp_path):
    task = make_task(tmp_path, "Task94_Cl", [(60, 60, 60)] * 3, (1.0, 1.0, 1.0))
    cfg, plan = planned(task, tmp_path, "dataset.patch_size=[32,32,32]", "dataset.batch_size=3")
    assert cfg.dataset.patch_size == [32, 32, 32] and cfg.dataset.batch_size == 3
    assert plan["dataset"]["patch_size"] == [32, 32, 32]
    assert cfg.model.strides == [[2, 2, 2]] * 3  # 32 -> 16 -> 8 -> 4: the bottleneck keeps 4 voxels
    assert yaml.safe_load((task / PLAN_FILE).read_text())["dataset"]["patch_size"] == [56, 56, 56]  # file unchanged
    # the network is the user's, whole: the planned strides are not mixed with the user's channels,
    # and the patch is planned for what the user's network divides (16 here)
    cfg, _ = planned(task, tmp_path, "model.channels=[8,16,32,64,128]")
    assert cfg.model.channels == [8, 16, 32, 64, 128] and cfg.model.strides == [2, 2, 2, 2]
    assert cfg.dataset.patch_size == [48, 48, 48]
    # the user's mirror axes drive the training flips too
    cfg, _ = planned(task, tmp_path, "dataset.mirror_axes=[0]")
    assert cfg.augment.random.flip_x is not None and cfg.augment.random.flip_y is None
    cfg, _ = planned(task, tmp_path, "dataset.plan=none")
    assert cfg.dataset.patch_size == [64, 64, 32]  # the dataset YAML's own value


def test_hand_edited_plan_is_used_until_the_data_change(tmp_path):
    task = make_task(tmp_path, "Task95_Edit", [(40, 40, 40)] * 3, (1.0, 1.0, 1.0))
    planned(task, tmp_path)
    plan = yaml.safe_load((task / PLAN_FILE).read_text())
    plan["dataset"]["batch_size"] = 5
    plan["network"]["monai.networks.nets.UNet"]["channels"] = [8, 16, 32, 64]
    (task / PLAN_FILE).write_text(yaml.safe_dump(plan))
    cfg, _ = planned(task, tmp_path)
    assert cfg.dataset.batch_size == 5 and cfg.model.channels == [8, 16, 32, 64]
    shutil.copyfile(task / "imagesTr" / "case_000.nii.gz", task / "imagesTr" / "case_001.nii.gz")  # data changed
    cfg, _ = planned(task, tmp_path)
    assert cfg.dataset.batch_size != 5 and (task / f"{PLAN_FILE}.bak").is_file()
    cfg, _ = planned(task, tmp_path, f"dataset.plan={task / (PLAN_FILE + '.bak')}")
    assert cfg.dataset.batch_size == 5  # a plan file given by path is used as it is


def test_plan_entry_prints_the_table(tmp_path, capsys):
    from medseg.plan import plan

    task = make_task(tmp_path, "Task96_Entry", [(40, 40, 40)] * 3, (1.0, 1.0, 1.0))
    path = plan(compose("plan", task_overrides(task)))
    out = capsys.readouterr().out
    assert path == task / PLAN_FILE and "dataset.patch_size" in out and "model.strides" in out


# --- read-only data -----------------------------------------------------------------------------

def _immutable(folder: Path) -> None:
    if shutil.which("chattr") is None:
        pytest.skip("chattr not available: cannot make a folder immutable here")
    done = subprocess.run(["chattr", "-R", "+i", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"chattr +i failed ({done.stderr.decode().strip()}): needs root on a filesystem with attributes")


def _mutable(folder: Path) -> None:
    subprocess.run(["chattr", "-R", "-i", str(folder)], capture_output=True)


def test_read_only_data_folder_trains_plans_and_predicts(tmp_path, caplog):
    import logging

    from medseg.predict import predict
    from medseg.train import train

    task = make_task(tmp_path, "Task97_Ro", [(24, 24, 24)] * 5, (2.0, 2.0, 2.0))
    ids = [f"case_{i:03d}" for i in range(5)]
    shipped = [{"train": [c for c in ids if c != v], "val": [v]} for v in ids]  # a lab's own split, leave-one-out
    (task / "splits.json").write_text(json.dumps(shipped))
    _immutable(task)
    try:
        overrides = [*task_overrides(task), *[o for o in TINY if not o.startswith(("dataset.patch_size", "dataset.spacing"))],
                     "trainer.steps_per_epoch=1", "dataset.num_folds=5", "dataset.fold=2"]
        with caplog.at_level(logging.INFO):
            result = train(compose_train(overrides, tmp_path / "run"))
        cache = tmp_path / "cache" / task.name
        assert result["epochs"] == 1
        assert {p.name for p in cache.iterdir()} >= {FINGERPRINT_FILE, PLAN_FILE}
        assert not (task / PLAN_FILE).exists()
        split = json.loads((tmp_path / "run" / "split.json").read_text())
        assert split["val"] == ["case_002"]  # the split shipped in the read-only folder is the one used
        assert f"data folder {task} is read-only" in caplog.text and str(cache) in caplog.text
        assert (tmp_path / "run" / ".hydra" / "plan.yaml").is_file()
        out = predict(compose("predict", [f"ckpt={tmp_path / 'run' / 'checkpoints' / 'last.pt'}",
                                          f"input={task / 'imagesTr' / 'case_000.nii.gz'}", f"output={tmp_path / 'pred'}",
                                          "tta=false"]))
        assert len(out["written"]) == 1 and not out["failed"]
        # a cache folder inside the same read-only tree: one line saying which setting to change
        inside = task_overrides(task, cache=task / "cache")
        with pytest.raises(MedsegError, match="set paths.cache_dir="):
            apply_plan(compose_train(inside, tmp_path / "run3"), inside)
    finally:
        _mutable(task)


def test_tta_mirrors_the_axes_the_model_was_trained_to_mirror(tiny_checkpoint, tmp_path):
    from medseg.core.checkpoint import load_checkpoint, save_checkpoint
    from medseg.inference.predictor import Predictor

    state = load_checkpoint(tiny_checkpoint)
    for axes, expected in (([], ()), ([0], (0,)), (None, (0, 1, 2))):
        if axes is None:
            state["config"]["dataset"].pop("mirror_axes", None)  # a checkpoint from before planning: all axes
        else:
            state["config"]["dataset"]["mirror_axes"] = axes
        save_checkpoint(state, tmp_path / "model.pt")
        assert Predictor.from_checkpoint(tmp_path / "model.pt", device="cpu").mirror_axes == expected
        assert Predictor.from_checkpoint(tmp_path / "model.pt", device="cpu", tta=False).mirror_axes == ()


def test_read_only_data_without_a_split_gets_one_in_the_cache(tmp_path):
    from hydra.utils import instantiate

    from medseg.core.folders import beside_data
    from medseg.data.loaders import select_split

    task = make_task(tmp_path, "Task89_Ro", [(12, 12, 12)] * 5, (1.0, 1.0, 1.0))
    _immutable(task)
    try:
        cfg = compose_train([*task_overrides(task), "dataset.num_folds=5"], tmp_path / "run")
        data = instantiate(cfg.dataset.source)
        folder = beside_data(data.root, cfg.paths.cache_dir, cfg.dataset.name)
        train_cases, val_cases, _ = select_split(cfg.dataset, data, folder)
        assert folder == tmp_path / "cache" / task.name and (folder / "splits.json").is_file()
        assert len(train_cases) == 4 and len(val_cases) == 1 and not (task / "splits.json").exists()
    finally:
        _mutable(task)
