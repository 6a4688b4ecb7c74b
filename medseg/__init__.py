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


def _images2d_fact(fact: str, root: str):
    from medseg.data.images2d import dataset_fact

    return dataset_fact(fact, root)


# `${medseg_images2d:in_channels,${dataset.root}}` in conf/dataset/images2d.yaml: grey or colour, read from the images.
_OmegaConf.register_new_resolver("medseg_images2d", _images2d_fact, replace=True, use_cache=True)


def _medsegbench_fact(fact: str, flag: str):
    from medseg.data.medsegbench import dataset_fact

    return dataset_fact(fact, flag)


# `${medseg_medsegbench:num_classes,${dataset.flag}}` in conf/dataset/medsegbench/_base.yaml: the set's facts.
_OmegaConf.register_new_resolver("medseg_medsegbench", _medsegbench_fact, replace=True)


def _window(patch, slice_axis):
    """``dataset.window``: the crop and sliding window, ``patch_size`` with a 1 inserted at
    ``slice_axis`` for a 2D patch (slices of a volume), else ``patch_size`` itself."""
    patch = list(patch)
    if slice_axis is not None and len(patch) == 2:
        patch.insert(int(slice_axis), 1)
    return patch


# `${medseg_window:${dataset.patch_size},${dataset.slice_axis}}` and `${medseg_network_dims:${dataset.patch_size}}`
# in conf/dataset/_base.yaml: one patch size says both what the network takes and what is cropped.
_OmegaConf.register_new_resolver("medseg_window", _window, replace=True)
_OmegaConf.register_new_resolver("medseg_network_dims", lambda patch: len(list(patch)), replace=True)


def __getattr__(name: str):
    """``from medseg import Predictor`` loads torch and MONAI on first use only, so importing medseg
    (the CLI entry points, config composition) stays fast."""
    if name == "Predictor":
        from medseg.inference.predictor import Predictor

        return Predictor
    raise AttributeError(f"module 'medseg' has no attribute {name!r}")


__all__ = ["CONF_DIR", "Predictor", "compose_train", "__version__"]
