"""The embedded synthetic task: real MSD layout, CT-like, varied geometry, deterministic."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np

from medseg.data import datalist
from medseg.data.synthetic import TASK_NAME, make_case
from tests.conftest import ROOT, SHARED_DATA


def test_layout_and_dataset_json_keys_match_real_msd(synthetic_data_dir):
    task = synthetic_data_dir / TASK_NAME
    meta = json.loads((task / "dataset.json").read_text())
    real_spleen = SHARED_DATA / "msd_dataset_json" / "Task09_Spleen" / "dataset.json"
    expected_keys = (
        set(json.loads(real_spleen.read_text())) if real_spleen.exists()
        else {"name", "description", "reference", "licence", "release", "tensorImageSize", "modality",
              "labels", "numTraining", "numTest", "training", "test"}
    )
    assert set(meta) == expected_keys
    assert meta["numTraining"] == len(meta["training"]) == 10
    assert meta["numTest"] == len(meta["test"]) == 2 and all(isinstance(t, str) for t in meta["test"])
    for entry in meta["training"]:
        assert (task / entry["image"]).is_file() and (task / entry["label"]).is_file()
    assert len(datalist.test_images(task)) == 2
    assert not list(synthetic_data_dir.glob(".*partial"))


def test_cases_are_ct_like_with_two_organs_and_varied_geometry(synthetic_data_dir):
    task = synthetic_data_dir / TASK_NAME
    orientations, spacings, organ_sizes = set(), set(), []
    for case in datalist.training_cases(task).values():
        image, label = nib.load(case["image"]), nib.load(case["label"])
        assert np.allclose(image.affine, label.affine) and image.shape == label.shape
        img = np.asarray(image.dataobj)
        lab = np.asarray(label.dataobj)
        assert img.dtype == np.int16 and img.min() <= -900 and 60 < img[lab == 1].mean() < 160
        assert set(np.unique(lab)) == {0, 1, 2}
        zooms = image.header.get_zooms()
        assert zooms[2] > 1.3 * zooms[0]  # anisotropic: thick slices
        orientations.add(nib.aff2axcodes(image.affine))
        spacings.add(round(float(zooms[0]), 3))
        organ_sizes.append((lab == 1).sum() * np.prod(zooms))
    assert len(orientations) >= 3 and ("R", "A", "S") != orientations  # non-identity orientations occur
    assert len(spacings) >= 5
    assert np.std(organ_sizes) / np.mean(organ_sizes) > 0.05  # organ volume varies


def test_deterministic_per_seed():
    a, b, c = make_case(7), make_case(7), make_case(8)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1].shape, c[1].shape) or not np.array_equal(a[1], c[1])


def test_command_line_generator(tmp_path):
    cmd = [sys.executable, "-m", "medseg.data.synthetic", "--output", str(tmp_path), "--cases", "3", "--test-cases", "1", "--seed", "5"]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    meta = datalist.read_dataset_json(tmp_path / TASK_NAME)
    assert meta["numTraining"] == 3 and meta["numTest"] == 1
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert again.returncode != 0 and "already exists" in again.stderr
