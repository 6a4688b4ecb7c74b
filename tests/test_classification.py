"""MedMNIST classification through the same engine: tiny npz files in the official format."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from medmnist import INFO, Evaluator

from medseg.core.checkpoint import load_checkpoint
from medseg.core.config import compose_train
from medseg.train import train
from tests.conftest import CONF_DIR, ROOT

SMALL = ["trainer.max_epochs=2", "trainer.device=cpu", "dataset.batch_size=16", "trainer.max_minutes=null",
         "model.block_inplanes=[8,16,32,64]"]


def write_npz(data_dir, flag: str, n=(48, 16, 20), seed=0) -> None:
    """An npz in MedMNIST's official format; the label is encoded in the image so it is learnable."""
    info = INFO[flag]
    rng = np.random.default_rng(seed)
    shape = (28, 28, 28) if flag.endswith("3d") else (28, 28)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        if info["task"].startswith("multi-label"):
            labels = rng.integers(0, 2, (count, len(info["label"])))
            labels[:, 0] = np.arange(count) % 2  # both values present for every AUC
        else:
            labels = (np.arange(count) % len(info["label"]))[:, None]
            rng.shuffle(labels)
        images = rng.integers(0, 60, (count, *shape))
        images[..., :4] += (labels[:, :1].reshape(-1, *[1] * len(shape)) * 190 // max(labels.max(), 1))
        if info["n_channels"] == 3:
            images = np.repeat(images[..., None], 3, axis=-1)
        arrays[f"{split}_images"] = np.clip(images, 0, 255).astype(np.uint8)
        arrays[f"{split}_labels"] = labels.astype(np.uint8)
    (data_dir / "medmnist").mkdir(parents=True, exist_ok=True)
    np.savez_compressed(data_dir / "medmnist" / f"{flag}.npz", **arrays)


@pytest.mark.parametrize("flag", ["pathmnist", "chestmnist", "organmnist3d", "pneumoniamnist"])
def test_one_small_training_matches_medmnist_evaluator(flag, tmp_path):
    data = tmp_path / "data"
    write_npz(data, flag)
    cfg = compose_train([f"dataset=medmnist/{flag}", f"paths.data_dir={data}", *SMALL], tmp_path / "run")
    result = train(cfg)
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["test"]["metrics"] == result["test"]["metrics"] and set(result["test"]["metrics"]) == {"auc", "acc"}
    scores = np.load(tmp_path / "run" / "test_scores.npy")
    expected = Evaluator(flag, "test", root=str(data / "medmnist")).evaluate(scores)
    assert result["test"]["metrics"]["auc"] == pytest.approx(expected.AUC, abs=1e-6)
    assert result["test"]["metrics"]["acc"] == pytest.approx(expected.ACC, abs=1e-6)
    best = load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt")
    assert result["test"]["epoch"] == best["epoch"] == result["best"]["epoch"]  # tested with best-validation weights
    assert cfg.optimized_metric == "val/auc"


@pytest.mark.parametrize("flag", sorted(INFO))
def test_every_flag_config_matches_the_package_info(flag):
    cfg = compose_train([f"dataset=medmnist/{flag}"], ROOT / "unused")
    info = INFO[flag]
    assert cfg.dataset.num_classes == len(info["label"]) and cfg.dataset.in_channels == info["n_channels"]
    assert cfg.dataset.task_type == info["task"] and cfg.dataset.spatial_dims == (3 if flag.endswith("3d") else 2)
    assert cfg.loss._target_ == ("torch.nn.BCEWithLogitsLoss" if info["task"].startswith("multi-label") else "torch.nn.CrossEntropyLoss")


@pytest.mark.parametrize("model", ["resnet18", "resnet50", "densenet121"])
@pytest.mark.parametrize("dims,size", [(2, 64), (3, 32)])
def test_classifiers_build_in_2d_and_3d(model, dims, size):
    import torch
    from hydra.utils import instantiate

    flag = "pathmnist" if dims == 2 else "organmnist3d"
    cfg = compose_train([f"dataset=medmnist/{flag}", f"model={model}"], ROOT / "unused")
    net = instantiate(cfg.model).eval()
    with torch.no_grad():
        out = net(torch.zeros(2, cfg.dataset.in_channels, *[size] * dims))
    assert out.shape == (2, cfg.dataset.num_classes)


def test_seed_script_resolves_configs_paths(tmp_path):
    data = tmp_path / "data"
    write_npz(data, "pathmnist")
    proc = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/medmnist_example.yaml", "trainer=fast",
                           f"paths.data_dir={data}", "trainer.max_epochs=1", "trainer.max_minutes=null", "model.block_inplanes=[8,16,32,64]",
                           f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "validation AUC" in proc.stdout and "test AUC" in proc.stdout
    assert "pathmnist" in (tmp_path / "run" / ".hydra" / "config.yaml").read_text()
    bad = subprocess.run([sys.executable, "scripts/train.py", "--config", "configs/nope.yaml"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode != 0 and "medmnist_example" in bad.stderr and "msd_liver" in bad.stderr
    assert (CONF_DIR / "experiment" / "msd_liver.yaml").is_file()
