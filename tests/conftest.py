"""Shared fixtures: configs composed the way a user composes them, shrunk to run in seconds on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import DictConfig

from medseg.core.config import compose_train
from medseg.data.synthetic import generate_task

ROOT = Path(__file__).resolve().parents[1]
CONF_DIR = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tiny but complete: 2 validation cases, patches divisible by 32 so every model preset fits.
TINY = [
    "trainer.max_epochs=1",
    "trainer.val_every=1",
    "trainer.max_minutes=null",
    "trainer.device=cpu",
    "dataset.patch_size=[32,32,32]",
    "dataset.spacing=[4.0,4.0,4.0]",
    "dataset.batch_size=1",
    "dataset.num_samples=1",
    "dataset.num_workers=0",
    "inferer.sw_batch_size=2",
    "inferer.overlap=0.25",
]


CLASSIFIERS = {"resnet18", "resnet50", "densenet121"}  # model/ options for MedMNIST classification
SEGMENTATION_MODELS = sorted({p.stem for p in (CONF_DIR / "model").glob("*.yaml")} - CLASSIFIERS)

# Smallest patch each network accepts (SwinUNETR's bottleneck is 1/32 of the patch and needs > 1 voxel).
MIN_PATCH = {"swinunetr": "dataset.patch_size=[64,64,64]"}


@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory) -> Path:
    """A data folder holding a small synthetic task (10 cases: 8 train / 2 val in fold 0)."""
    data_dir = tmp_path_factory.mktemp("data")
    generate_task(data_dir, cases=10, test_cases=2, seed=1)
    return data_dir


@pytest.fixture
def tiny_cfg(synthetic_data_dir, tmp_path):
    """``tiny_cfg(*overrides)``: a training config on the synthetic task, shrunk for CPU tests."""

    def make(*overrides: str) -> DictConfig:
        return compose_train([f"paths.data_dir={synthetic_data_dir}", *TINY, *overrides], tmp_path / "run")

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(synthetic_data_dir, tmp_path_factory) -> Path:
    """A real unet3d checkpoint from one tiny training step, for predict, export, resume and fault tests."""
    from medseg.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    train(compose_train([f"paths.data_dir={synthetic_data_dir}", *TINY, "trainer.steps_per_epoch=1",
                         f"paths.cache_dir={run / 'cache'}"], run))
    return run / "checkpoints" / "best.pt"


def requires_shared(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not found: real data lives in ../shared beside the checkout (CI has it; a user clone does not)")
    return path
