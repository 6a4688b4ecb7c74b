"""MedSegBench (Kuş & Aydin, Scientific Data 2024): 35 2D segmentation sets as one npz file per
set and size, with the official train/val/test splits, converted once into medseg's 2D layout.

The facts (file URLs and MD5s, labels, channels, split sizes, sub-sets) come from
``medsegbench_info.json``, generated from the ``medsegbench`` package's ``INFO`` by
``scripts/medsegbench_table.py``. The npz files are read here, not through the package, whose
loader has traps: labels live under ``{split}_label`` (singular); sub-set datasets (``category``
C1..Cn: BUSI benign/malignant, PolypGen centres, WBC cell types, IDRiD lesions) use
``{split}_images_Ck`` / ``{split}_label_Ck``, except IDRiD, which shares ``{split}_images`` and has
per-category labels only; its ``len()`` asserts the whole-set count and fails for a category; and
it returns binary masks multiplied by 255.

Each (set, size, category) is written once as PNG files, ``<split>/images/<split>_NNNNN.png`` and
``<split>/masks/...`` (class indices), into a hidden folder renamed into place when complete, so
training, ``medseg.predict`` on the test images and ``medseg.evaluate`` all read ordinary files.
"""

from __future__ import annotations

import functools
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from medseg.core.errors import MedsegError
from medseg.core.folders import beside_data
from medseg.data.datalist import Datalist
from medseg.data.images2d import images2d_cases

log = logging.getLogger(__name__)

SIZES = (128, 256, 512)
SPLITS = ("train", "val", "test")


@functools.lru_cache(maxsize=1)
def info() -> dict[str, dict[str, Any]]:
    """The 35 sets' facts (``medsegbench_info.json``)."""
    return json.loads((Path(__file__).with_name("medsegbench_info.json")).read_text())["datasets"]


def flag_info(flag: str) -> dict[str, Any]:
    table = info()
    if flag not in table:
        raise MedsegError(f"unknown MedSegBench flag '{flag}'; valid: {', '.join(table)}")
    return table[flag]


def label_names(flag: str) -> dict[int, str]:
    """``{index: name}``; sets whose foreground is any non-zero value (PanDental, DynamicNuclear:
    ``"non-zero": "foreground"``) are binary, their masks binarised when converted."""
    labels = flag_info(flag)["pixel_labels"]
    if any(not str(k).isdigit() for k in labels):
        return {0: str(labels.get("0", "background")), 1: next(str(v) for k, v in labels.items() if not str(k).isdigit())}
    return {int(k): str(v) for k, v in sorted(labels.items(), key=lambda kv: int(kv[0]))}


def npz_name(flag: str, size: int) -> str:
    """The package's own file name: ``<flag>_<size>.npz``."""
    return f"{flag}_{size}.npz"


def npz_path(root: str | Path, flag: str, size: int) -> Path:
    """Where the download puts a set: ``<data_dir>/medsegbench/<flag>_<size>.npz`` (``root`` is that folder)."""
    return Path(root) / npz_name(flag, size)


def check_choice(flag: str, size: int, category: str | None) -> dict[str, Any]:
    """The set's facts, after checking ``size`` and ``category`` against them."""
    facts = flag_info(flag)
    if int(size) not in SIZES:
        raise MedsegError(f"dataset.size={size}: MedSegBench comes in sizes {', '.join(map(str, SIZES))}")
    if category is not None and category not in facts["categories"]:
        have = ", ".join(f"{k} ({v})" for k, v in facts["categories"].items()) or "none"
        raise MedsegError(f"dataset.category={category}: {flag} has sub-sets {have}")
    return facts


def split_keys(flag: str, split: str, category: str | None) -> tuple[str, str]:
    """npz keys of one split's images and labels (the layout of the published files)."""
    if category is None:
        return f"{split}_images", f"{split}_label"
    images = f"{split}_images" if flag == "idrib" else f"{split}_images_{category}"  # IDRiD shares its images
    return images, f"{split}_label_{category}"


def _write_png(array: np.ndarray, path: Path) -> None:
    from PIL import Image

    Image.fromarray(array).save(path)


def export_pngs(npz: Path, flag: str, category: str | None, folder: Path) -> Path:
    """Writes every split of the npz as PNG images and masks under ``folder`` (atomically).

    Raises:
        MedsegError: a missing key or a split whose size differs from the set's facts (a truncated
            or foreign file), naming the npz and the fix.
    """
    facts = flag_info(flag)
    if (folder / ".complete").is_file():
        return folder
    binarise = any(not str(k).isdigit() for k in facts["pixel_labels"])
    staging = folder.with_name(f".{folder.name}.writing")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with np.load(npz) as data:
            for split in SPLITS:
                image_key, label_key = split_keys(flag, split, category)
                missing = [k for k in (image_key, label_key) if k not in data.files]
                if missing:
                    raise MedsegError(f"{npz}: has no '{missing[0]}' array (it holds {', '.join(sorted(data.files))}); "
                                      "re-download it, or check dataset.category")
                images, labels = data[image_key], data[label_key]
                count_key = split if category is None else f"{split}_{category}"
                expected = facts["n_samples"].get(count_key, facts["n_samples"].get(split))
                if len(images) != len(labels) or (expected is not None and len(labels) != expected):
                    raise MedsegError(f"{npz}: {split} holds {len(images)} images and {len(labels)} labels, the set has "
                                      f"{expected}; re-download it (make download DATASET=medsegbench TASK={flag})")
                for sub in ("images", "masks"):
                    (staging / split / sub).mkdir(parents=True)
                for i, (image, label) in enumerate(zip(images, labels)):
                    name = f"{split}_{i:05d}.png"
                    _write_png(np.asarray(image, dtype=np.uint8), staging / split / "images" / name)
                    mask = np.asarray(label).reshape(label.shape[:2])
                    _write_png((mask > 0 if binarise else mask).astype(np.uint8), staging / split / "masks" / name)
    except MedsegError:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    except (OSError, ValueError, KeyError) as err:  # not an npz, truncated archive
        shutil.rmtree(staging, ignore_errors=True)
        raise MedsegError(f"{npz} is not a readable MedSegBench npz ({type(err).__name__}: {str(err)[:100]}); "
                          f"delete it and download again") from err
    (staging / ".complete").write_text(json.dumps({"npz": str(npz), "flag": flag, "category": category}))
    shutil.rmtree(folder, ignore_errors=True)
    staging.rename(folder)
    log.info("wrote %s's %s images as PNG into %s", npz.name, "+".join(SPLITS), folder)
    return folder


def converted_folder(root: str | Path, flag: str, size: int, category: str | None, cache_dir: str | Path) -> Path:
    """The PNG copy of one (set, size, category), made on first use beside the npz (or in the cache
    folder when the data folder is read-only)."""
    check_choice(flag, size, category)
    npz = npz_path(root, flag, size)
    if not npz.is_file():
        raise MedsegError(f"{npz} not found: run `make download DATASET=medsegbench TASK={flag} ARGS=\"--size {size}\"`")
    name = f"{flag}_{size}" + (f"_{category}" if category else "")
    return export_pngs(npz, flag, category, beside_data(npz.parent, cache_dir, "medsegbench") / name)


def medsegbench_datalist(root: str | Path, flag: str, size: int = 512, category: str | None = None,
                         cache_dir: str | Path = "data/cache") -> Datalist:
    """Training cases of the official train split, validation on the official val split (the test
    split is for ``medseg.predict`` / ``medseg.evaluate``: ``<folder>/test/images`` and ``masks``)."""
    folder = converted_folder(root, flag, size, category, cache_dir)
    names = label_names(flag)
    return Datalist(images2d_cases(folder / "train"), names, folder, fixed_val=images2d_cases(folder / "val"))


def dataset_fact(fact: str, flag: str) -> Any:
    """``${medseg_medsegbench:<fact>,<flag>}``: ``in_channels``, ``num_classes`` or ``modality``."""
    facts = flag_info(flag)
    values = {"in_channels": int(facts["n_channels_im"]), "num_classes": len(label_names(flag)),
              "modality": facts["modality"]}
    if fact not in values:
        raise MedsegError(f"${{medseg_medsegbench:{fact},...}}: unknown fact '{fact}' ({', '.join(values)})")
    return values[fact]
