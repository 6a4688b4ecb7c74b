"""2D segmentation end to end: image folders, nnU-Net 2D datasets, MedSegBench npz files, the
MedSegBench metric, and bad 2D inputs. Generated images only (real HC18 data: benchmarks/)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medseg.core.config import compose_train
from medseg.core.errors import MedsegError
from medseg.data.images2d import Image2DReader, images2d_cases, read_image_2d
from medseg.metrics.medsegbench import dataset_score, medsegbench_dice
from tests.test_faults import assert_one_line, checksums, run_checked, run_entry

SHAPE = (70, 100)  # rows x columns: never square, so a transposed mask cannot even have the right shape
FAST = ["trainer.device=cpu", "trainer.max_minutes=null", "trainer.val_every=100", "dataset.num_workers=0",
        "inferer.sw_batch_size=4"]


def ellipse_case(rng: np.random.Generator, rgb: bool) -> tuple[np.ndarray, np.ndarray]:
    """A textured image with one bright ellipse placed off-centre (left third, upper half)."""
    rows, cols = np.mgrid[: SHAPE[0], : SHAPE[1]]
    cy, cx = rng.uniform(18, 30), rng.uniform(20, 38)
    ry, rx = rng.uniform(9, 13), rng.uniform(11, 16)
    mask = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 <= 1
    image = rng.normal(60, 12, SHAPE) + 110 * mask
    image = np.clip(image, 0, 255).astype(np.uint8)
    if rgb:
        image = np.stack([image, np.clip(image * 0.8, 0, 255), np.clip(255 - image, 0, 255)], -1).astype(np.uint8)
    return image, mask.astype(np.uint8)


def write_folder(root: Path, cases: int = 12, rgb: bool = False, seed: int = 0) -> Path:
    """``root/images/*.png`` and ``root/masks/*.png`` (0/255, as most 2D datasets store them)."""
    rng = np.random.default_rng(seed)
    for sub in ("images", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in range(cases):
        image, mask = ellipse_case(rng, rgb)
        Image.fromarray(image).save(root / "images" / f"{i:03d}_scan.png")
        Image.fromarray(mask * 255).save(root / "masks" / f"{i:03d}_scan.png")
    return root


def write_nnunet_2d(root: Path, cases: int = 12, rgb: bool = True, seed: int = 1) -> Path:
    """An nnU-Net v2 raw 2D dataset as nnU-Net's NaturalImage2DIO reads it: RGB in one _0000.png."""
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr"):
        (root / sub).mkdir(parents=True)
    for i in range(cases):
        image, mask = ellipse_case(rng, rgb)
        Image.fromarray(image).save(root / "imagesTr" / f"case_{i:03d}_0000.png")
        Image.fromarray(mask).save(root / "labelsTr" / f"case_{i:03d}.png")
    channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "ultrasound"}
    (root / "dataset.json").write_text(json.dumps({"channel_names": channels, "labels": {"background": 0, "head": 1},
                                                   "numTraining": cases, "file_ending": ".png"}))
    return root


def centroid(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask > 0).mean(0)


def check_overlay(pred_file: Path, mask_file: Path) -> float:
    """The predicted mask has the image's rows and columns and lies on the object: Dice, centroid within 2 px."""
    pred = np.asarray(Image.open(pred_file))
    ref = read_image_2d(mask_file, "mask")
    assert pred.shape == ref.shape == SHAPE, (pred.shape, ref.shape)
    assert (pred > 0).any(), f"{pred_file} is empty"
    assert np.abs(centroid(pred) - centroid(ref)).max() < 2.0, (centroid(pred), centroid(ref))
    return 2 * np.logical_and(pred > 0, ref > 0).sum() / ((pred > 0).sum() + (ref > 0).sum())


def train_predict_evaluate(dataset_overrides: list[str], images: Path, masks: Path, tmp_path: Path,
                           suffix: str = "") -> dict:
    run = tmp_path / "run"
    assert run_entry("train", [*dataset_overrides, *FAST, "trainer.max_epochs=30", f"hydra.run.dir={run}",
                               f"paths.cache_dir={tmp_path / 'cache'}"]) == 0
    import torch

    config = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["config"]
    assert config["dataset"]["configuration"] == "2d" and config["model"]["spatial_dims"] == 2
    out, evaluated = tmp_path / "preds", tmp_path / "evaluated"
    assert run_entry("predict", [f"ckpt={run / 'checkpoints' / 'last.pt'}", f"input={images}", f"output={out}",
                                 f"hydra.run.dir={tmp_path / 'p'}"]) == 0
    for mask in sorted(masks.iterdir()):
        name = mask.name.replace("_0000", "") if suffix else mask.name
        assert check_overlay(out / name, mask) > 0.8
    assert (out / "overlays").is_dir()
    assert run_entry("evaluate", [f"pred={out}", f"ref={masks}", f"output={evaluated}", "metric=medsegbench",
                                  f"hydra.run.dir={tmp_path / 'e'}"]) == 0
    return json.loads((evaluated / "summary.json").read_text())


@pytest.mark.slow
def test_an_image_folder_with_0_255_masks_trains_predicts_and_evaluates(tmp_path):
    root = write_folder(tmp_path / "us", cases=12)
    summary = train_predict_evaluate(["dataset=images2d", f"dataset.root={root}", "dataset.num_folds=3"],
                                     root / "images", root / "masks", tmp_path)
    assert summary["classes"]["label_1"]["dice"]["mean"] > 0.8 and summary["medsegbench_dice"] > 0.8
    assert math.isfinite(summary["classes"]["label_1"]["hd95"]["mean"])  # outlines in the plane, in pixels


@pytest.mark.slow
def test_an_nnunet_2d_rgb_dataset_trains_predicts_and_evaluates(tmp_path):
    root = write_nnunet_2d(tmp_path / "Dataset123_Heads", cases=12, rgb=True)
    cfg = compose_train(["dataset=nnunet", f"dataset.root={root}"], tmp_path / "x")
    assert cfg.dataset.in_channels == 3 and cfg.dataset.image_kind == "2d"
    summary = train_predict_evaluate(["dataset=nnunet", f"dataset.root={root}", "dataset.num_folds=3"],
                                     root / "imagesTr", root / "labelsTr", tmp_path, suffix="_0000")
    assert summary["classes"]["head"]["dice"]["mean"] > 0.8


def test_grey_saved_as_rgb_is_read_as_one_channel_and_rows_come_first(tmp_path):
    grey = (np.arange(SHAPE[0] * SHAPE[1]) % 251).reshape(SHAPE).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "grey_rgb.png")
    assert np.array_equal(read_image_2d(tmp_path / "grey_rgb.png"), grey)
    data, meta = Image2DReader().get_data(Image2DReader().read(str(tmp_path / "grey_rgb.png")))
    assert data.shape == (*SHAPE, 1) and meta["original_channel_dim"] == "no_channel"
    assert np.array_equal(data[..., 0], grey) and np.array_equal(meta["affine"], np.eye(4))
    colour, _ = Image2DReader(channels=3).get_data(Image2DReader().read(str(tmp_path / "grey_rgb.png")))
    assert colour.shape == (*SHAPE, 1, 3)  # a grey frame for a colour network


def _bad(kind: str, root: Path) -> str:
    """Breaks case 003 of an image folder; returns what the one error line must name."""
    image, mask = root / "images" / "003_scan.png", root / "masks" / "003_scan.png"
    ref = np.asarray(Image.open(mask))
    if kind == "anti-aliased mask":
        blurred = ref.astype(float)
        blurred[1:-1, 1:-1] = (ref[:-2, 1:-1] + ref[2:, 1:-1] + ref[1:-1, :-2] + ref[1:-1, 2:]) / 4
        Image.fromarray(blurred.astype(np.uint8)).save(mask)
    elif kind == "JPEG mask":
        mask.unlink()
        Image.fromarray(ref).save(mask.with_suffix(".jpg"), quality=75)
        return "003_scan.jpg"
    elif kind == "mask of another size":
        Image.fromarray(ref[:-5]).save(mask)
    elif kind == "16-bit mask":
        Image.fromarray((ref // 255).astype(np.uint16)).save(mask)
    elif kind == "palette mask":
        Image.fromarray(ref // 255).convert("P").save(mask)
    elif kind == "palette image":
        Image.open(image).convert("P").save(image)
        return "images/003_scan.png"
    elif kind == "unreadable image":
        image.write_bytes(image.read_bytes()[:60])
        return "images/003_scan.png"
    elif kind == "mask with a third class":
        Image.fromarray(np.where(ref > 0, 2, 0).astype(np.uint8)).save(mask)
    elif kind == "image without a mask":
        mask.unlink()
        return "images/003_scan.png"
    return "masks/003_scan.png"


BAD_2D = ["anti-aliased mask", "JPEG mask", "mask of another size", "16-bit mask", "palette mask", "palette image",
          "unreadable image", "mask with a third class", "image without a mask"]


@pytest.mark.parametrize("kind", BAD_2D)
def test_bad_2d_inputs_are_one_line_naming_the_file(kind, tmp_path, capsys):
    root = write_folder(tmp_path / "data", cases=6)
    names = _bad(kind, root)
    run = tmp_path / "run"
    outcome = run_checked(capsys, "train", ["dataset=images2d", f"dataset.root={root}", "dataset.num_folds=2", *FAST,
                                            "trainer.max_epochs=1", f"hydra.run.dir={run}",
                                            f"paths.cache_dir={tmp_path / 'cache'}"], watched=[root], outputs=[run])
    assert_one_line(outcome, 2, names)
    assert not list(run.glob("checkpoints/*.pt"))


def test_images_and_masks_pair_by_file_name(tmp_path):
    root = write_folder(tmp_path / "data", cases=3)
    cases = images2d_cases(root)
    assert sorted(cases) == ["000_scan", "001_scan", "002_scan"]
    assert cases["001_scan"]["label"].endswith("masks/001_scan.png")


# --- MedSegBench ----------------------------------------------------------------------------------

def test_the_medsegbench_metric_follows_their_definition():
    empty = np.zeros((4, 4), np.uint8)
    one = empty.copy()
    one[0, 0] = 1
    two = empty.copy()
    two[0:2, 0] = 1
    assert math.isnan(medsegbench_dice(empty, empty, 2))           # binary, both empty: dropped
    assert medsegbench_dice(one, empty, 2) == 0.0                   # empty reference, a false positive: 0
    assert medsegbench_dice(empty, one, 2) == 0.0
    assert medsegbench_dice(one, two, 2) == pytest.approx(2 * 1 / 3)
    assert dataset_score([math.nan, 1.0, 0.5]) == pytest.approx(0.75)
    ref = np.array([[0, 0], [1, 1]])
    pred = np.array([[0, 1], [1, 1]])
    # 3 classes incl. background: background 2*1/(1+2)=2/3, class 1 2*2/(3+2)=0.8, class 2 absent from both: 1
    assert medsegbench_dice(pred, ref, 3) == pytest.approx((2 / 3 + 0.8 + 1.0) / 3)
    assert medsegbench_dice(ref, ref, 4) == pytest.approx(1.0)


def test_download_lists_35_medsegbench_sets(capsys):
    assert run_entry("download", ["--dataset", "medsegbench", "--list"]) == 0
    out = capsys.readouterr().out
    assert "35 sets" in out and "busi" in out and "C2 malignant" in out and "ultrasound" in out


def test_every_medsegbench_config_composes():
    from medseg.data.medsegbench import info

    flags = sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "dataset" / "medsegbench").glob("*.yaml")
                   if p.stem != "_base")
    assert flags == sorted(info()) and len(flags) == 35
    for flag in flags:
        cfg = compose_train([f"dataset=medsegbench/{flag}", "dataset.size=128"], "/tmp/unused")
        assert cfg.dataset.in_channels in (1, 3) and cfg.dataset.num_classes >= 2
        assert cfg.model.spatial_dims == 2 and cfg.dataset.window == [256, 256, 1]


def msb_npz(flag: str, path: Path, side: int = 24, seed: int = 0) -> Path:
    """An npz in the published layout: ``{split}_images``, ``{split}_label`` (singular), per-category
    ``{split}_images_Ck`` / ``{split}_label_Ck`` (IDRiD: labels only), with the set's split sizes."""
    from medseg.data.medsegbench import flag_info, label_names

    facts, rng = flag_info(flag), np.random.default_rng(seed)
    classes = len(label_names(flag))
    arrays = {}

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = np.zeros((n, side, side), np.uint8)
        for i in range(n):
            for c in range(1, classes):
                y, x = rng.integers(2, side - 8, 2)
                labels[i, y:y + 6, x:x + 6] = c
        images = (labels * 60 + rng.integers(0, 40, labels.shape)).astype(np.uint8)
        if facts["n_channels_im"] == 3:
            images = np.stack([images, 255 - images, images // 2], -1).astype(np.uint8)
        return images, labels

    for split in ("train", "val", "test"):
        arrays[f"{split}_images"], arrays[f"{split}_label"] = draw(facts["n_samples"][split])
        for category in facts["categories"]:
            images, labels = draw(facts["n_samples"][f"{split}_{category}"])
            if flag == "idrib":  # shared images, per-category labels
                labels = labels[: len(arrays[f"{split}_images"])]
            else:
                arrays[f"{split}_images_{category}"] = images
            arrays[f"{split}_label_{category}"] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return path


@pytest.mark.parametrize("flag,category", [("drive", None), ("wbc", None), ("idrib", "C4")],
                         ids=["binary", "multi-class", "category"])
def test_a_medsegbench_set_trains_a_step_from_its_npz(flag, category, tmp_path):
    from medseg.train import train

    msb_npz(flag, tmp_path / "data" / "medsegbench" / f"{flag}_128.npz")
    overrides = [f"dataset=medsegbench/{flag}", "dataset.size=128", f"paths.data_dir={tmp_path / 'data'}",
                 *FAST, "trainer.max_epochs=1", "trainer.steps_per_epoch=1", "trainer.val_every=1"]
    if category:
        overrides.append(f"dataset.category={category}")
    result = train(compose_train(overrides, tmp_path / "run"))
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    name = f"{flag}_128" + (f"_{category}" if category else "")
    from medseg.data.medsegbench import flag_info

    count = flag_info(flag)["n_samples"]
    assert len(split["train"]) == count[f"train_{category}" if category else "train"]
    assert len(split["val"]) == count[f"val_{category}" if category else "val"]
    assert (tmp_path / "data" / "medsegbench" / name / "test" / "masks").is_dir()
    assert 0.0 <= result["best"]["metrics"]["mean_dice"] <= 1.0


def test_medsegbench_download_is_md5_checked_and_resumes(tmp_path):
    from medseg.data import download
    from tests.test_download import ArchiveServer

    npz = msb_npz("drive", tmp_path / "src" / "drive_128.npz")
    blob = npz.read_bytes()
    server = ArchiveServer()
    try:
        server.files["/drive_128.npz"] = blob
        with pytest.raises(MedsegError, match="does not match its MD5"):
            download.fetch_medsegbench("drive", tmp_path / "out", 128, base_url=server.url, md5="0" * 32)
        assert not (tmp_path / "out" / "medsegbench" / "drive_128.npz").exists()
        server.cut_first["/drive_128.npz"] = len(blob) // 3
        good = hashlib.md5(blob).hexdigest()
        with pytest.raises(MedsegError, match="rerun to resume"):
            download.fetch_medsegbench("drive", tmp_path / "out", 128, base_url=server.url, md5=good)
        partial = tmp_path / "out" / "medsegbench" / "drive_128.npz.partial"
        assert partial.stat().st_size == len(blob) // 3
        path = download.fetch_medsegbench("drive", tmp_path / "out", 128, base_url=server.url, md5=good)
        assert path.read_bytes() == blob and server.requests[-1][1] == f"bytes={len(blob) // 3}-"
    finally:
        server.close()
    official = download.fetch_medsegbench.__doc__
    assert "MD5" in official


def test_a_medsegbench_npz_without_the_categorys_keys_is_one_line(tmp_path, capsys):
    npz = msb_npz("drive", tmp_path / "data" / "medsegbench" / "busi_128.npz")  # the wrong set's layout
    outcome = run_checked(capsys, "train", ["dataset=medsegbench/busi", "dataset.size=128", "dataset.category=C1",
                                            f"paths.data_dir={tmp_path / 'data'}", *FAST, f"hydra.run.dir={tmp_path / 'r'}"],
                          watched=[npz.parent], outputs=[tmp_path / "r"])
    assert_one_line(outcome, 2, "busi_128.npz")
    assert checksums(npz.parent)  # the npz is still there, untouched (checked by run_checked)
