"""Train a segmentation network: ``python -m medseg.train dataset=msd/spleen model=unet3d``.

The Hydra entry is thin; :func:`train` is a plain function that tests and other code call.
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from medseg.core import distributed
from medseg.core.config import CONF_DIR
from medseg.core.errors import exit_on_user_error
from medseg.core.folders import claim_folder
from medseg.core.networks import build_network
from medseg.core.threads import apply_thread_policy
from medseg.core.utils import seed_everything
from medseg.engine.config_check import check_dataset_values, check_train_config
from medseg.engine.run_folder import log_to, prepare_run_folder, record_config
from medseg.engine.trainer import Trainer
from medseg.engine.validation_export import export_validation
from medseg.planning import apply_plan, command_line_overrides

log = logging.getLogger("medseg.train")


def train(cfg: DictConfig, clock: Callable[[], float] = time.monotonic) -> dict[str, Any]:
    """Trains and validates as configured; writes the run folder ``cfg.paths.output_dir``.

    Under ``torchrun`` every process calls this; they share the run folder, rank 0 writes it, and
    all return the same (gathered) validation results.

    Args:
        cfg: the composed ``train`` config.
        clock: monotonic seconds that ``trainer.max_minutes`` is measured on (tests inject a fake one).

    Returns:
        ``{"best": {"epoch", "metrics"}, "last": {...}, "epochs", "train_minutes"}``.
    """
    device = distributed.setup(cfg.trainer.device)
    run_dir = Path(cfg.paths.output_dir)
    with contextlib.ExitStack() as held:
        if distributed.is_main():  # before anything is read or written: one job per run folder
            held.enter_context(claim_folder(run_dir, "training", "choose another hydra.run.dir"))
        distributed.barrier()
        held.enter_context(log_to(run_dir / "train.log"))
        return _train(cfg, run_dir, device, clock)


def _train(cfg: DictConfig, run_dir: Path, device: torch.device, clock: Callable[[], float]) -> dict[str, Any]:
    """:func:`train` once the run folder is this job's."""
    kept_plan = run_dir / ".hydra" / "plan.yaml"
    if cfg.trainer.resume and cfg.dataset.get("plan") == "auto" and kept_plan.is_file():
        with open_dict(cfg):  # a resumed run keeps the plan it started with, even if the data's plan changed since
            cfg.dataset.plan = str(kept_plan)
    check_dataset_values(cfg)  # before planning around them (a negative spacing used to be planned and trained)
    with distributed.main_process_first():  # rank 0 fingerprints and plans; the others read its files
        plan = apply_plan(cfg)
    check_train_config(cfg)
    apply_thread_policy(cfg.trainer.get("threads", "auto"))
    seed_everything(cfg.seed, cfg.trainer.deterministic)  # same seed on all ranks: same initial weights
    if distributed.is_main():
        prepare_run_folder(run_dir, cfg.trainer.resume)
        record_config(cfg, plan, run_dir, command_line_overrides())
    distributed.barrier()

    data = instantiate(cfg.task.builder).build(cfg)
    if distributed.is_main():
        (run_dir / "split.json").write_text(json.dumps({"fold": cfg.dataset.get("fold"), **data.split}, indent=2))

    model = build_network(cfg.model, cfg.dataset.get("slice_axis"))  # 2D configuration: a 2D network on slices
    optimizer = instantiate(cfg.optimizer)(params=model.parameters())
    scheduler = instantiate(cfg.scheduler)(optimizer=optimizer) if cfg.get("scheduler") else None
    trainer = Trainer(
        cfg=cfg.trainer,
        model=model,
        loss_fn=instantiate(cfg.loss),
        optimizer=optimizer,
        scheduler=scheduler,
        data=data,
        run_dir=run_dir,
        config=OmegaConf.to_container(cfg, resolve=True),
        device=device,
        clock=clock,
    )
    if cfg.trainer.resume:
        trainer.resume(str(cfg.trainer.resume))
    log.info("training %s on %s (%s x %d), run folder %s", type(model).__name__, data.source.name, device,
             distributed.world_size(), run_dir)
    result = trainer.fit()
    result["summary"] = f"{data.validator.describe(result['best']['metrics'])} (best, epoch {result['best']['epoch']})"
    if "test" in result:
        result["summary"] += "\ntest " + ", ".join(f"{k.upper()} {v:.4f}" for k, v in result["test"]["metrics"].items())
    result["world_size"] = distributed.world_size()
    exclusive = OmegaConf.select(cfg, "dataset.target._target_") == "medseg.core.targets.ClassLabels"
    if cfg.trainer.get("export_validation") and exclusive and distributed.is_main():  # probabilities argmax: exclusive classes
        export_validation(cfg, run_dir, data.split["val"], device)
    log.info("%s; run folder: %s", result["summary"], run_dir)
    if distributed.is_main():
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def metric_value(result: dict[str, Any], name: str) -> float:
    """Looks up ``val/<metric>`` of the best validation, the value a sweeper optimises."""
    return float(result["best"]["metrics"][name.removeprefix("val/")])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
@exit_on_user_error
def main(cfg: DictConfig) -> float:
    try:
        result = train(cfg)
    finally:
        distributed.cleanup()
    value = metric_value(result, cfg.optimized_metric)
    if result["world_size"] > 1:  # every rank reports: the gathered metrics must agree
        # One write per line: ranks share the terminal, and print() issues the text and its
        # newline as two writes, which interleave across processes when stdout is unbuffered.
        line = (f"[rank {distributed.rank_from_env()}/{result['world_size']}] threads {torch.get_num_threads()} "
                f"best {json.dumps(result['best'])}\n")
        sys.stdout.write(line)
        sys.stdout.flush()
    if distributed.rank_from_env() == 0:
        print(result["summary"])
        print(f"run folder: {cfg.paths.output_dir}")
    return value


if __name__ == "__main__":
    main()
