"""medseg: MONAI + Hydra framework for 3D medical image segmentation."""

__version__ = "0.1.0"

from omegaconf import OmegaConf as _OmegaConf

from medseg.core.config import CONF_DIR, compose_train


def _run_name() -> str:
    from medseg.core.distributed import run_name

    return run_name()


# `${medseg_run_name:}` in conf/hydra/default.yaml: the run folder name every torchrun rank agrees on.
_OmegaConf.register_new_resolver("medseg_run_name", _run_name, use_cache=True, replace=True)


def _nnunet_fact(fact: str, root: str):
    from medseg.data.nnunet import dataset_fact

    return dataset_fact(fact, root)


# `${medseg_nnunet:num_classes,${dataset.root}}` in conf/dataset/nnunet.yaml: facts read from an nnU-Net dataset.json.
_OmegaConf.register_new_resolver("medseg_nnunet", _nnunet_fact, replace=True)


def __getattr__(name: str):
    """``from medseg import Predictor`` loads torch and MONAI on first use only, so importing medseg
    (the CLI entry points, config composition) stays fast."""
    if name == "Predictor":
        from medseg.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")


__all__ = ["CONF_DIR", "Predictor", "compose_train", "__version__"]
