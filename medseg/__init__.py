"""medseg: MONAI + Hydra framework for 3D medical image segmentation."""

__version__ = "0.1.0"

from pathlib import Path as _Path

# conf/ lives beside the package in the source checkout (editable install, see README).
CONF_DIR = str(_Path(__file__).resolve().parents[1] / "conf")

from omegaconf import OmegaConf as _OmegaConf


def _run_name() -> str:
    from medseg.engine.distributed import run_name

    return run_name()


# `${medseg_run_name:}` in conf/hydra/default.yaml: the run folder name every torchrun rank agrees on.
_OmegaConf.register_new_resolver("medseg_run_name", _run_name, use_cache=True, replace=True)
