"""The run folder before training starts: writable, not someone else's finished run, no debris.

Checked before any data is cached or any epoch trained, so a mistake costs seconds, not an epoch.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf

from medseg.core.errors import MedsegError
from medseg.core.folders import ensure_writable

log = logging.getLogger(__name__)


def prepare_run_folder(run_dir: Path, resume: str | None) -> None:
    """Creates ``run_dir/checkpoints``, refuses to train over an existing run, removes temp files.

    Args:
        run_dir: the Hydra run folder.
        resume: ``trainer.resume``; with it, existing checkpoints are what the run continues from.

    Raises:
        MedsegError: the folder is not writable, or it holds checkpoints and no ``trainer.resume``
            was given (a second run would silently overwrite ``best.pt`` and ``last.pt``).
    """
    ckpt_dir = ensure_writable(run_dir / "checkpoints", f"the run folder {run_dir} must be writable: choose another hydra.run.dir")
    existing = sorted(p.name for p in ckpt_dir.glob("*.pt"))
    if existing and not resume:
        raise MedsegError(
            f"{run_dir} already holds a training run ({', '.join(existing)}): continue it with trainer.resume=auto, "
            "or train into a new folder (drop hydra.run.dir, or give another)")
    for debris in ckpt_dir.glob(".*.tmp"):  # a checkpoint write interrupted by a kill
        debris.unlink(missing_ok=True)
        log.info("removed %s, left by an interrupted checkpoint write", debris)


def record_config(cfg: DictConfig, plan: dict[str, Any] | None, run_dir: Path, overrides: list[str] | None = None) -> None:
    """``.hydra/config.yaml`` as the run uses it (the plan merged in), the command line's
    ``overrides.yaml`` and the plan as ``plan.yaml``: the run folder says which values made its model.

    Written by medseg, not by Hydra at start-up, so a job refused at the folder's claim never
    overwrites the record of the run that holds it.
    """
    hydra_dir = run_dir / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    files = {"config.yaml": OmegaConf.to_yaml(cfg), "overrides.yaml": yaml.safe_dump(list(overrides or []))}
    if plan is not None:
        files["plan.yaml"] = yaml.safe_dump(plan, sort_keys=False, default_flow_style=None, width=110)
    for name, text in files.items():  # temp file, then rename: never half-written
        tmp = hydra_dir / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(hydra_dir / name)


LOG_FORMAT = "[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"  # Hydra's job-logging format


@contextlib.contextmanager
def log_to(path: Path) -> Iterator[None]:
    """Appends the root logger's records to ``path`` while the run holds its folder (Hydra's own file
    handler is off: it would open the log of a run the job is then refused from)."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        handler.close()
