"""Scale-out: DDP under torchrun (gloo on CPU), Optuna sweeps, cross-validation summary, SLURM preset."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from medseg import cv_summary
from medseg.core import distributed
from medseg.core.checkpoint import load_checkpoint
from medseg.core.errors import MedsegError
from medseg.core.threads import usable_cores
from tests.conftest import CONF_DIR, ROOT, TINY


def run(cmd: list[str], cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def rank_reports(stdout: str) -> dict[int, dict]:
    """Parses each rank's ``[rank i/N] best {json}``: decodes exactly one JSON object after the
    marker, so the parse does not depend on how the ranks' lines are laid out in the pipe."""
    decoder = json.JSONDecoder()
    return {int(m.group(1)): decoder.raw_decode(stdout, m.end())[0]
            for m in re.finditer(r"\[rank (\d+)/\d+\] threads \d+ best ", stdout)}


def rank_threads(stdout: str) -> dict[int, int]:
    return {int(m.group(1)): int(m.group(2)) for m in re.finditer(r"\[rank (\d+)/\d+\] threads (\d+) ", stdout)}


def test_rank_reports_parse_interleaved_lines():
    # The layout CI once produced: rank 1's line without its newline, rank 0's glued on.
    glued = '[rank 1/2] threads 1 best {"epoch": 2, "m": {"a": 1}}[rank 0/2] threads 1 best {"epoch": 2, "m": {"a": 1}}\n'
    assert rank_reports(glued) == {0: {"epoch": 2, "m": {"a": 1}}, 1: {"epoch": 2, "m": {"a": 1}}}


@pytest.mark.slow
def test_torchrun_two_processes_gloo_one_run_folder_equal_metrics(synthetic_data_dir, tmp_path):
    """2-process DDP on CPU: one shared run folder (no hydra.run.dir given), one set of
    checkpoints written by rank 0, and the gathered validation metrics equal on both ranks."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = run([*torchrun, "-m", "medseg.train", f"paths.data_dir={synthetic_data_dir}", *TINY,
                "trainer.max_epochs=2"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "synthetic" / "unet3d").iterdir())
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert load_checkpoint(run_dir / "checkpoints" / "last.pt")["epoch"] == 2
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["world_size"] == 2
    reported = rank_reports(proc.stdout)
    assert sorted(reported) == [0, 1], proc.stdout[-2000:]
    assert reported[0] == reported[1] == metrics["best"]
    # The thread policy shares the machine's cores between the two local ranks (at least one each):
    # two full-width OpenMP pools on one machine is what makes every small op wait (issue 13).
    threads = rank_threads(proc.stdout)
    assert sorted(threads) == [0, 1] and threads[0] == threads[1] == max(1, usable_cores() // 2), threads
    # Each rank trained on its own shard: 8 training cases -> 4 per rank, 2 validation cases -> 1 each.
    assert "4 training / 1 validation cases" in (run_dir / "train.log").read_text() + proc.stderr


@pytest.mark.slow
def test_optuna_sweep_of_three_trials_reports_the_best_and_survives_a_failed_trial(synthetic_data_dir, tmp_path):
    # fold 7 does not exist (5 folds): with the preset's seed the 2nd and 3rd trials draw it and fail.
    proc = run([sys.executable, "-m", "medseg.train", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=3",
                "dataset.fold=choice(0,7)", f"paths.data_dir={synthetic_data_dir}", *TINY,
                f"hydra.sweep.dir={tmp_path}/sweep"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert "Failed experiment: dataset.fold=7" in log
    trials = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert len(trials) == 3
    finished = {t.name: json.loads((t / "metrics.json").read_text()) for t in trials if (t / "metrics.json").is_file()}
    assert 0 < len(finished) < 3
    results = yaml.safe_load((tmp_path / "sweep" / "optimization_results.yaml").read_text())
    assert results["best_value"] == pytest.approx(max(m["best"]["metrics"]["mean_dice"] for m in finished.values()))
    assert results["best_params"]["dataset.fold"] == 0 and 1e-4 <= results["best_params"]["optimizer.lr"] <= 3e-3


@pytest.mark.slow
def test_two_fold_cross_validation_summary(synthetic_data_dir, tmp_path):
    sweep = tmp_path / "cv"
    proc = run([sys.executable, "-m", "medseg.train", "-m", "dataset.fold=0,1", f"paths.data_dir={synthetic_data_dir}",
                *TINY, f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run([sys.executable, "-m", "medseg.cv_summary", str(sweep)], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    dice = [json.loads((sweep / f"{i}_unet3d" / "metrics.json").read_text())["best"]["metrics"] for i in (0, 1)]
    rows = list(__import__("csv").DictReader((sweep / "cv_summary.csv").open()))
    assert len(rows) == 1 and rows[0]["folds"] == "0 1"
    for name in ("liver", "spleen", "mean_dice"):
        values = [d[name] for d in dice]
        assert float(rows[0][f"{name}_mean"]) == pytest.approx(np.mean(values))
        assert float(rows[0][f"{name}_std"]) == pytest.approx(np.std(values, ddof=1))
    assert "± " in (sweep / "cv_summary.md").read_text() and "mean_dice" in proc.stdout


def _fake_run(folder: Path, overrides: list[str], fold: int, dice: float) -> None:
    """A finished run folder in the layout train() writes (metrics.json, split.json, .hydra/overrides.yaml)."""
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump([*overrides, f"dataset.fold={fold}"]))
    (folder / "split.json").write_text(json.dumps({"fold": fold, "train": [], "val": []}))
    (folder / "metrics.json").write_text(json.dumps({"best": {"epoch": 1, "metrics": {"organ": dice, "mean_dice": dice}}}))


def test_cv_summary_groups_a_models_by_folds_sweep_and_rejects_mixed_sweeps(tmp_path):
    for i, (model, fold, dice) in enumerate([("unet3d", 0, 0.8), ("unet3d", 1, 0.6), ("segresnet", 0, 0.9), ("segresnet", 1, 0.7)]):
        _fake_run(tmp_path / f"{i}_{model}", [f"model={model}", "optimizer=sgd"], fold, dice)
    table = {row["setting"]: row for row in cv_summary.summarize(cv_summary.collect_runs([tmp_path]))}
    assert set(table) == {"model=unet3d", "model=segresnet"}
    assert table["model=unet3d"]["mean_dice"][0] == pytest.approx(0.7)
    assert table["model=segresnet"]["mean_dice"][1] == pytest.approx(np.std([0.9, 0.7], ddof=1))
    _fake_run(tmp_path / "again", ["model=unet3d", "optimizer=sgd"], 0, 0.5)
    with pytest.raises(MedsegError, match="fold 0 appears twice"):
        cv_summary.summarize(cv_summary.collect_runs([tmp_path]))
    with pytest.raises(MedsegError, match="no metrics.json"):
        cv_summary.collect_runs([tmp_path / "again" / ".hydra"])


def _compose_with_hydra(overrides: list[str]):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_slurm_preset_runs_one_ddp_task_per_gpu():
    cfg = _compose_with_hydra(["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=4", "hydra.launcher.partition=gpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert launcher.tasks_per_node == 4 and launcher.partition == "gpu" and launcher.nodes == 1


@pytest.mark.slow
def test_submitit_job_with_two_tasks_forms_one_ddp_group(synthetic_data_dir, tmp_path):
    """The path hydra/launcher=slurm takes (submitit tasks -> one process group), run with submitit's
    local executor since CI has no SLURM."""
    sweep = tmp_path / "sweep"
    proc = run([sys.executable, "-m", "medseg.train", "-m", "hydra/launcher=submitit_local",
                "hydra.launcher.tasks_per_node=2", "dataset.fold=0", f"paths.data_dir={synthetic_data_dir}", *TINY,
                f"hydra.sweep.dir={sweep}"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job = sweep / "0_unet3d"
    assert json.loads((job / "metrics.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in (job / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_optuna_preset_maximises_the_value_train_returns():
    cfg = _compose_with_hydra(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.hydra_optuna_sweeper.optuna_sweeper.OptunaSweeper"
    assert sweeper.direction == "maximize" and sweeper.max_failure_rate == 1.0
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay"}


def test_run_folder_name_is_shared_by_the_ranks_of_a_job(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    # On one node every rank's parent is the torchrun agent: its start time names the folder.
    name = distributed.run_name()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}_\d{2}-\d{2}-\d{2}", name) and name == distributed.run_name()
    monkeypatch.setenv("WORLD_SIZE", "8")  # several nodes: the rendezvous id they share
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "slurm-1234")
    assert distributed.run_name() == "ddp_slurm-1234"


def test_predict_takes_a_sweep_folder_as_the_fold_ensemble(tmp_path):
    from medseg.predict import expand_checkpoints

    for fold in (1, 0):
        (tmp_path / f"{fold}_unet3d" / "checkpoints").mkdir(parents=True)
        (tmp_path / f"{fold}_unet3d" / "checkpoints" / "best.pt").write_bytes(b"")
    single = tmp_path / "other.pt"
    assert expand_checkpoints([str(tmp_path), str(single)]) == [
        str(tmp_path / "0_unet3d" / "checkpoints" / "best.pt"), str(tmp_path / "1_unet3d" / "checkpoints" / "best.pt"), str(single)]
    with pytest.raises(MedsegError, match="no checkpoints/best.pt below"):
        expand_checkpoints([str(tmp_path / "0_unet3d" / "checkpoints")])
