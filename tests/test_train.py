"""End-to-end training through the real entry points, on the tiny synthetic task."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medseg.core.checkpoint import load_checkpoint
from medseg.train import train
from tests.conftest import MIN_PATCH, ROOT, SEGMENTATION_MODELS, TINY

# SwinUNETR needs 64^3 patches and takes ~20 s for one step on 2 cores; tests/test_configs.py
# builds it and checks its output shape, and the training loop is the same for every network.
MODELS = [m for m in SEGMENTATION_MODELS if m != "swinunetr"]


def cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "medseg.train", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_trains_one_tiny_epoch(tiny_cfg, model):
    cfg = tiny_cfg(f"model={model}", "trainer.steps_per_epoch=2", *([MIN_PATCH[model]] if model in MIN_PATCH else []))
    result = train(cfg)
    assert result["epochs"] == 1
    dice = result["best"]["metrics"]
    assert set(dice) == {"liver", "spleen", "mean_dice"} and 0.0 <= dice["liver"] <= 1.0


def test_run_folder_contract(tiny_cfg):
    cfg = tiny_cfg("trainer.max_epochs=2")
    result = train(cfg)
    run = Path(cfg.paths.output_dir)

    split = json.loads((run / "split.json").read_text())
    assert split["fold"] == 0 and split["val"] and not set(split["train"]) & set(split["val"])

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["last"]["epoch"] == 2 and metrics["best"]["epoch"] in (1, 2)
    assert set(metrics["best"]["metrics"]) == {"liver", "spleen", "mean_dice"}
    assert metrics == json.loads(json.dumps(result))

    for name in ("best.pt", "last.pt"):
        state = load_checkpoint(run / "checkpoints" / name)
        assert {"model", "optimizer", "scheduler", "scaler", "epoch", "config", "label_names"} <= set(state)
        assert state["label_names"] == {"0": "background", "1": "liver", "2": "spleen"}
        assert state["config"]["model"]["_target_"] == "monai.networks.nets.UNet"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["epoch"] == 2
    assert not list((run / "checkpoints").glob("*.tmp"))

    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0}).Reload()
    scalars = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "val/liver", "val/spleen", "val/mean_dice"} <= scalars
    assert "val/image_label_prediction" in events.Tags()["images"]
    assert len(events.Scalars("train/loss")) == 2


class FakeClock:
    """A monotonic clock that moves ``step`` seconds each time it is read: the time budget then
    depends on how many steps ran, never on how fast this machine is."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_time_budget_stops_cleanly_with_validation_and_checkpoint(tiny_cfg):
    # 3 steps per epoch; the clock is read once per step and a few times per epoch, 10 s a read:
    # a 2-minute budget ends within the first few of 50 epochs, whatever the machine's speed.
    cfg = tiny_cfg("trainer.max_epochs=50", "trainer.max_minutes=2", "trainer.steps_per_epoch=3",
                   "trainer.val_every=100", "scheduler=cosine")
    result = train(cfg, clock=FakeClock(step=10.0))
    assert 1 <= result["epochs"] < 5 and result["last"]["epoch"] == result["epochs"]  # validated at the stop
    state = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")
    assert state["epoch"] == result["epochs"] and state["elapsed_seconds"] >= 120
    # the LR schedule followed the clock, not the epoch count: it ran to its end (50 scheduler steps)
    assert state["scheduler"]["last_epoch"] == 50


def test_validation_cadence_fits_the_time_budget(tiny_cfg):
    # one step per epoch and val_every=1 would validate every epoch; under a budget validation runs
    # at most budget_validations times, evenly over the budget, plus once at the end
    cfg = tiny_cfg("trainer.max_epochs=500", "trainer.max_minutes=10", "trainer.steps_per_epoch=1",
                   "trainer.val_every=1", "trainer.budget_validations=2")
    result = train(cfg, clock=FakeClock(step=5.0))
    history = load_checkpoint(Path(cfg.paths.output_dir) / "checkpoints" / "last.pt")["history"]
    validated = [h["epoch"] for h in history]
    assert result["epochs"] > 10, result["epochs"]
    assert 2 <= len(validated) <= 3 and validated[-1] == result["epochs"], validated
    gaps = [b["elapsed"] - a["elapsed"] for a, b in zip(history, history[1:])]
    assert all(g >= 600 / 3 - 1e-6 for g in gaps[:-1]), gaps


def test_fold_all_trains_on_every_labelled_case(tiny_cfg):
    cfg = tiny_cfg("dataset.fold=all", "trainer.steps_per_epoch=1")
    train(cfg)
    split = json.loads((Path(cfg.paths.output_dir) / "split.json").read_text())
    assert split["fold"] == "all" and len(split["train"]) == 10  # every case of the synthetic task
    assert set(split["val"]) < set(split["train"])  # scored on fold 0's cases, seen in training


def test_missing_data_folder_is_one_clear_line(tmp_path):
    proc = cli(f"paths.data_dir={tmp_path / 'nowhere'}", "dataset.prepare=null",
               "+dataset.download_hint='make download TASK=spleen'", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "nowhere" in errors[0] and "make download TASK=spleen" in errors[0]
    assert "dataset=synthetic" in errors[0]


@pytest.mark.slow
def test_sigkill_then_resume_auto_reaches_the_epoch_count(synthetic_data_dir, tmp_path):
    run = tmp_path / "run"
    args = [f"paths.data_dir={synthetic_data_dir}", *TINY, "trainer.max_epochs=8", "trainer.val_every=3",
            f"hydra.run.dir={run}"]
    last = run / "checkpoints" / "last.pt"
    proc = subprocess.Popen([sys.executable, "-m", "medseg.train", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    seen: list[int] = []
    try:
        deadline = time.monotonic() + 900  # a hang guard, not a verdict
        while time.monotonic() < deadline and proc.poll() is None:
            if last.exists():
                seen.append(load_checkpoint(last)["epoch"])  # must load at every moment
                if seen[-1] >= 3:
                    break
            time.sleep(0.05)
        assert proc.poll() is None, "training finished before it could be killed; make epochs longer"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = load_checkpoint(last)["epoch"]
    assert 3 <= killed_at < 8 and seen == sorted(seen)

    resumed = cli(*args, "trainer.resume=auto")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    state = load_checkpoint(last)
    assert state["epoch"] == 8
    assert f"resumed from {last} at epoch {killed_at}" in (run / "train.log").read_text()
    epochs_logged = [h["epoch"] for h in state["history"]]
    assert epochs_logged == sorted(set(epochs_logged)) and epochs_logged[-1] == 8
    assert json.loads((run / "metrics.json").read_text())["last"]["epoch"] == 8


@pytest.mark.slow
def test_multirun_sweep_makes_one_complete_run_folder_per_model(synthetic_data_dir, tmp_path):
    proc = cli("-m", "model=unet3d,segresnet", "trainer=fast", f"paths.data_dir={synthetic_data_dir}", *TINY,
               f"hydra.sweep.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [r.name for r in runs] == ["0_unet3d", "1_segresnet"]
    for run in runs:
        assert (run / ".hydra" / "config.yaml").is_file()
        assert (run / "checkpoints" / "best.pt").is_file() and (run / "checkpoints" / "last.pt").is_file()
        assert json.loads((run / "metrics.json").read_text())["best"]["metrics"]["mean_dice"] >= 0.0
    assert "segresnet" in (runs[1] / ".hydra" / "overrides.yaml").read_text()


def test_gpu_trainer_without_cuda_is_one_line_exit_2(tiny_cfg, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: trainer=gpu is valid here")
    proc = cli("trainer=gpu", f"paths.data_dir={tmp_path / 'unused'}", f"hydra.run.dir={tmp_path / 'run'}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(errors) == 1 and "no usable CUDA GPU" in errors[0] and "trainer=gpu" in errors[0]
