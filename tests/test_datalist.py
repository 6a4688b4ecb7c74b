"""dataset.json parsing (with the real files' quirks) and the saved 5-fold split."""

from __future__ import annotations

import json

import pytest

from medseg.core.errors import MedsegError
from medseg.data import datalist
from tests.conftest import SHARED_DATA, requires_shared


def test_folds_partition_cases_and_are_seeded():
    ids = [f"case_{i:02d}" for i in range(23)]
    folds = datalist.make_folds(ids, 5, seed=3)
    assert sorted(c for f in folds for c in f["val"]) == sorted(ids)
    for f in folds:
        assert not set(f["train"]) & set(f["val"]) and len(f["train"]) + len(f["val"]) == 23
    assert folds == datalist.make_folds(list(reversed(ids)), 5, seed=3)
    assert folds != datalist.make_folds(ids, 5, seed=4)


def test_splits_saved_beside_data_and_reused(tmp_path):
    ids = [f"c{i}" for i in range(10)]
    first = datalist.load_or_create_splits(tmp_path, ids)
    saved = json.loads((tmp_path / "splits.json").read_text())
    assert saved == first and len(first) == 5
    assert datalist.load_or_create_splits(tmp_path, ids) == first
    # a changed case list invalidates the saved split
    assert {c for f in datalist.load_or_create_splits(tmp_path, ids + ["c10"]) for c in f["val"]} == set(ids + ["c10"])


def test_too_few_cases_for_folds():
    with pytest.raises(MedsegError, match="num_folds"):
        datalist.make_folds(["a", "b"], 5)


def test_bad_dataset_json_names_the_file(tmp_path):
    with pytest.raises(MedsegError, match="dataset.json not found"):
        datalist.read_dataset_json(tmp_path)
    (tmp_path / "dataset.json").write_text("{not json")
    with pytest.raises(MedsegError, match=str(tmp_path / "dataset.json")):
        datalist.read_dataset_json(tmp_path)


@pytest.mark.parametrize("task", [f"Task{n:02d}" for n in range(1, 11)])
def test_real_msd_dataset_json_files_parse(task):
    root = requires_shared(SHARED_DATA / "msd_dataset_json")
    task_dir = next(root.glob(f"{task}_*"))
    meta = datalist.read_dataset_json(task_dir)
    cases = datalist.training_cases(task_dir, meta)
    assert len(cases) == meta["numTraining"]
    assert all(c["image"].endswith(".nii.gz") and "/imagesTr/" in c["image"] for c in cases.values())
    assert len(datalist.test_images(task_dir, meta)) == len(meta["test"])  # Task08 says numTest 140, lists 139
    names = datalist.label_names(meta)
    assert names[0] == "background" and all(n == n.strip() for n in names.values())
