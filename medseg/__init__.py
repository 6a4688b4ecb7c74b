"""medseg: MONAI + Hydra framework for 3D medical image segmentation."""

__version__ = "0.1.0"

from omegaconf import OmegaConf as _OmegaConf

from medseg.core.config import CONF_DIR, compose_train


def _run_name() -> str:
    from medseg.core.distributed import run_name

    return run_name()


# `${medseg_run_name:}` in conf/hydra/default.yaml: the run folder name every torchrun rank agrees on.
_OmegaConf.register_new_resolver("medseg_run_name", _run_name, use_cache=True, replace=True)

__all__ = ["CONF_DIR", "compose_train", "__version__"]
