"""Plan a dataset: ``python -m medseg.plan dataset=msd/spleen`` (``force=true`` to plan again).

Fingerprints the labelled cases, writes ``medseg_plan.yaml`` and prints the values a training run
would use (the network's values for the chosen ``model=``). Training plans on its own the first
time; this entry lets you read, and edit, the plan before training.
"""

from __future__ import annotations

import logging
from pathlib import Path

import hydra
from omegaconf import DictConfig, open_dict

from medseg.core.config import CONF_DIR
from medseg.core.errors import exit_on_user_error
from medseg.engine.config_check import check_dataset_values
from medseg.planning import apply_plan, command_line_overrides, plan_files
from medseg.planning.plan import backup_path, table

log = logging.getLogger("medseg.plan")


def plan(cfg: DictConfig) -> Path:
    """Plans ``cfg.dataset`` (again, with ``force``) and returns the plan file's path."""
    overrides = command_line_overrides()
    check_dataset_values(cfg)
    if cfg.get("force"):
        _, path, _ = plan_files(cfg, overrides)
        backup = backup_path(path)
        path.replace(backup)
        log.info("force=true: planning again (the old plan is kept as %s)", backup.name)
    with open_dict(cfg):
        if str(cfg.dataset.get("plan") or "none") == "none":
            cfg.dataset.plan = "auto"  # asked for explicitly: plan even a dataset that trains unplanned
    result, path, fingerprint = plan_files(cfg, overrides)
    apply_plan(cfg, overrides, log_table=False)
    print(f"{cfg.dataset.name}: {fingerprint['cases']} cases, {fingerprint['channels']} channel(s), "
          f"median spacing {fingerprint['median_spacing']}, median shape {fingerprint['median_shape']}")
    print(table(result, cfg.model.get("_target_")))
    print(f"plan: {path}\nfingerprint: {path.parent / 'medseg_fingerprint.json'}")
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="plan")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    plan(cfg)


if __name__ == "__main__":
    main()
