"""File lists from an MSD-layout task folder, and the seeded cross-validation split saved beside it.

Every dataset source ends up here as one format: a list of ``{"image": path, "label": path}``
dicts, so the loaders downstream never care where the data came from.
"""

from __future__ import annotations

import json
import logging
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from medseg.core.errors import MedsegError
from medseg.core.imagefiles import case_id

SPLITS_FILE = "splits.json"
log = logging.getLogger(__name__)


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
    if not isinstance(meta, dict):
        raise MedsegError(f"{path} is not an MSD dataset.json (a JSON object with labels and training)")
    for key in ("labels", "training"):
        if key not in meta:
            raise MedsegError(f"{path} has no '{key}' entry; it is not an MSD dataset.json")
    if not isinstance(meta["labels"], dict) or not meta["labels"] or not all(
            str(k).strip().isdigit() for k in meta["labels"]):
        raise MedsegError(f"{path}: labels must map class indices to names ({{\"0\": \"background\", \"1\": ...}})")
    if not isinstance(meta["training"], list):
        raise MedsegError(f"{path}: training must be a list of {{\"image\": ..., \"label\": ...}} entries")
    for i, entry in enumerate(meta["training"]):
        if not isinstance(entry, dict) or not isinstance(entry.get("image"), str) or not isinstance(entry.get("label"), str):
            raise MedsegError(f"{path}: training entry {i} needs \"image\" and \"label\" paths ({str(entry)[:80]})")
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
        # absolute, links kept: a dangling symlink is then reported as itself, not as its missing target
        image = os.path.abspath(task_dir / entry["image"].strip())
        label = os.path.abspath(task_dir / entry["label"].strip())
        cases[case_id(entry["image"])] = {"image": str(image), "label": str(label)}
    return cases


def test_images(task_dir: str | Path, meta: dict[str, Any] | None = None) -> list[str]:
    """Absolute paths of the unlabelled test images (entries are bare strings in MSD files)."""
    task_dir = Path(task_dir)
    meta = meta or read_dataset_json(task_dir)
    entries = meta.get("test", [])
    return [os.path.abspath(task_dir / (e["image"] if isinstance(e, dict) else e).strip()) for e in entries]


def check_folds(folds: Any, case_ids: Sequence[str], path: str | Path) -> None:
    """A split file's folds, checked: a list of ``{"train": [...], "val": [...]}`` whose lists are
    non-empty and name only known cases; a case in both lists of a fold is logged (validating on
    a training case overstates the score).

    Raises:
        MedsegError: naming the file, the fold and the fix.
    """
    if not isinstance(folds, list) or not folds or not all(
            isinstance(f, dict) and isinstance(f.get("train"), list) and isinstance(f.get("val"), list) for f in folds):
        raise MedsegError(f"{path} is not a split file: expected a list of {{\"train\": [...], \"val\": [...]}} per fold")
    known = set(case_ids)
    for k, fold in enumerate(folds):
        for part in ("train", "val"):
            if not fold[part]:
                raise MedsegError(f"{path}: fold {k} has an empty {part} list; every fold needs training and validation "
                                  "cases: regenerate the split")
            unknown = [c for c in fold[part] if c not in known]
            if unknown:
                raise MedsegError(f"{path}: fold {k} {part} lists case '{unknown[0]}' that is not in the dataset "
                                  f"({len(unknown)} unknown); regenerate the split or restore the case")
        both = sorted(set(fold["train"]) & set(fold["val"]))
        if both:
            log.warning("%s: fold %d lists %d case(s) in both train and val (e.g. %s): its validation scores are "
                        "not held out", path, k, len(both), both[0])


def make_folds(case_ids: list[str], num_folds: int = 5, seed: int = 12345,
               groups: dict[str, str] | None = None) -> list[dict[str, list[str]]]:
    """Seeded k-fold split of case ids: every case is validated exactly once.

    With ``groups`` (``{case: subject}``) a subject's cases stay in one fold (two frames of one
    patient, two images of one fetus): validating on a subject trained on overstates the score.
    """
    units = sorted(set(groups[c] for c in case_ids)) if groups else sorted(case_ids)
    if len(units) < num_folds:
        what = "subjects" if groups else "labelled cases"
        raise MedsegError(f"{len(units)} {what} cannot make {num_folds} folds; lower dataset.num_folds")
    random.Random(seed).shuffle(units)
    members = {u: sorted(c for c in case_ids if groups[c] == u) for u in units} if groups else {u: [u] for u in units}
    folds = [sorted(c for u in units[i::num_folds] for c in members[u]) for i in range(num_folds)]
    return [
        {"train": sorted(c for j, f in enumerate(folds) if j != k for c in f), "val": folds[k]}
        for k in range(num_folds)
    ]


def load_or_create_splits(
    task_dir: str | Path, case_ids: list[str], num_folds: int = 5, seed: int = 12345,
    shipped: str | Path | None = None, groups: dict[str, str] | None = None,
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
            try:
                folds = json.loads(candidate.read_text())
            except (OSError, json.JSONDecodeError) as err:
                raise MedsegError(f"{candidate} is not a readable split ({type(err).__name__}); fix it, or delete it to "
                                  "make a new seeded split") from err
            if not isinstance(folds, list) or not all(isinstance(f, dict) and isinstance(f.get("val"), list) for f in folds):
                raise MedsegError(f"{candidate} is not a split file (a list of {{\"train\": [...], \"val\": [...]}}); "
                                  "fix it, or delete it to make a new seeded split")
            saved = {c for f in folds for c in f["val"]}
            if saved == set(case_ids) and len(folds) == num_folds and _keeps_groups(folds, groups):
                check_folds(folds, case_ids, candidate)
                return folds
    folds = make_folds(case_ids, num_folds, seed, groups)
    try:
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(folds, indent=2))
        tmp.replace(path)
    except OSError:
        pass  # nowhere to keep it: the split is deterministic, so recomputing it is equivalent
    return folds


def _keeps_groups(folds: list[dict[str, list[str]]], groups: dict[str, str] | None) -> bool:
    """Whether every subject's cases are validated in one fold (a saved split made without the
    grouping is made again)."""
    if not groups:
        return True
    fold_of: dict[str, int] = {}
    for k, fold in enumerate(folds):
        for case in fold["val"]:
            if fold_of.setdefault(groups.get(case, case), k) != k:
                return False
    return True


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
        groups: ``{case: subject}``; the seeded split keeps a subject's cases in one fold.
    """

    cases: dict[str, dict[str, Any]]
    label_names: dict[int, str]
    root: Path
    fixed_val: dict[str, dict[str, Any]] | None = None
    folds: list[dict[str, list[str]]] | None = None
    groups: dict[str, str] | None = None


def msd_datalist(root: str | Path) -> Datalist:
    """Training cases and label names of an MSD-layout task folder (``dataset.json`` + imagesTr/labelsTr)."""
    meta = read_dataset_json(root)
    return Datalist(training_cases(root, meta), label_names(meta), Path(root))
