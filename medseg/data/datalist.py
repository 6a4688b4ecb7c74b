"""File lists from an MSD-layout task folder, and the seeded cross-validation split saved beside it.

Every dataset source ends up here as one format: a list of ``{"image": path, "label": path}``
dicts, so the loaders downstream never care where the data came from.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import case_id

SPLITS_FILE = "splits.json"


def read_dataset_json(task_dir: str | Path) -> dict[str, Any]:
    """Reads ``dataset.json`` of an MSD task, tolerating the quirks of the real files.

    The official files spell ``release`` as ``relase`` in several tasks, list test images as bare
    strings and carry stray spaces in values; none of that matters here, but paths are stripped.
    """
    path = Path(task_dir) / "dataset.json"
    if not path.is_file():
        raise MedsegError(f"{path} not found: is {task_dir} an MSD task folder (imagesTr/, labelsTr/, dataset.json)?")
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise MedsegError(f"{path} is not valid JSON ({err.msg} at line {err.lineno}); re-download the task") from err
    for key in ("labels", "training"):
        if key not in meta:
            raise MedsegError(f"{path} has no '{key}' entry; it is not an MSD dataset.json")
    return meta


def label_names(meta: dict[str, Any]) -> dict[int, str]:
    """``{class index: name}`` from the ``labels`` entry, names stripped."""
    return {int(k): str(v).strip() for k, v in sorted(meta["labels"].items(), key=lambda kv: int(kv[0]))}


def training_cases(task_dir: str | Path, meta: dict[str, Any] | None = None) -> dict[str, dict[str, str]]:
    """``{case id: {"image": abs path, "label": abs path}}`` for the labelled training cases."""
    task_dir = Path(task_dir)
    meta = meta or read_dataset_json(task_dir)
    cases = {}
    for entry in meta["training"]:
        image = (task_dir / entry["image"].strip()).resolve()
        label = (task_dir / entry["label"].strip()).resolve()
        cases[case_id(entry["image"])] = {"image": str(image), "label": str(label)}
    return cases


def test_images(task_dir: str | Path, meta: dict[str, Any] | None = None) -> list[str]:
    """Absolute paths of the unlabelled test images (entries are bare strings in MSD files)."""
    task_dir = Path(task_dir)
    meta = meta or read_dataset_json(task_dir)
    entries = meta.get("test", [])
    return [str((task_dir / (e["image"] if isinstance(e, dict) else e).strip()).resolve()) for e in entries]


def make_folds(case_ids: list[str], num_folds: int = 5, seed: int = 12345) -> list[dict[str, list[str]]]:
    """Seeded k-fold split of case ids: every case is validated exactly once."""
    if len(case_ids) < num_folds:
        raise MedsegError(f"{len(case_ids)} labelled cases cannot make {num_folds} folds; lower dataset.num_folds")
    ids = sorted(case_ids)
    random.Random(seed).shuffle(ids)
    folds = [sorted(ids[i::num_folds]) for i in range(num_folds)]
    return [
        {"train": sorted(c for j, f in enumerate(folds) if j != k for c in f), "val": folds[k]}
        for k in range(num_folds)
    ]


def load_or_create_splits(
    task_dir: str | Path, case_ids: list[str], num_folds: int = 5, seed: int = 12345,
    shipped: str | Path | None = None,
) -> list[dict[str, list[str]]]:
    """Returns the folds saved in ``<task_dir>/splits.json``, creating the file on first use.

    A saved split is reused as long as it covers exactly the current cases, so every model and
    every run on this task validates on the same cases. ``task_dir`` is where medseg keeps what
    it derives from the data (``medseg.core.folders.beside_data``: the data folder, or a cache
    folder when that is read-only); ``shipped`` is a read-only data folder whose own
    ``splits.json`` (a lab's shared split) is used before any new one is made.
    """
    path = Path(task_dir) / SPLITS_FILE
    for candidate in (path, *([Path(shipped) / SPLITS_FILE] if shipped is not None else [])):
        if candidate.is_file():
            folds = json.loads(candidate.read_text())
            saved = {c for f in folds for c in f["val"]}
            if saved == set(case_ids) and len(folds) == num_folds:
                return folds
    folds = make_folds(case_ids, num_folds, seed)
    try:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(folds, indent=2))
        tmp.replace(path)
    except OSError:
        pass  # nowhere to keep it: the split is deterministic, so recomputing it is equivalent
    return folds


@dataclass
class Datalist:
    """One format for every source: labelled cases, label names, where the split is saved.

    Attributes:
        cases: ``{case id: {"image": path or [paths per channel], "label": path}}``.
        label_names: ``{index: name}``; for exclusive classes index 0 is background.
        root: folder that holds ``splits.json``.
        fixed_val: an official validation set (AMOS); then folds split only ``cases``.
        folds: folds fixed by the source (nnU-Net's ``splits_final.json``), used as they are
            instead of the seeded split in ``splits.json``.
    """

    cases: dict[str, dict[str, Any]]
    label_names: dict[int, str]
    root: Path
    fixed_val: dict[str, dict[str, Any]] | None = None
    folds: list[dict[str, list[str]]] | None = None


def msd_datalist(root: str | Path) -> Datalist:
    """Training cases and label names of an MSD-layout task folder (``dataset.json`` + imagesTr/labelsTr)."""
    meta = read_dataset_json(root)
    return Datalist(training_cases(root, meta), label_names(meta), Path(root))
