"""Segmenting new scans from checkpoints alone, with the result in each scan's original geometry.

A checkpoint carries the resolved training config, so the network, preprocessing (orientation,
spacing, intensity, crop), sliding-window settings and label meaning are rebuilt from it. MONAI's
``Invertd`` undoes the spatial preprocessing on the probabilities, so the written label map has
the input's shape and affine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from hydra.utils import instantiate
from monai.data import MetaTensor
from monai.transforms import Invertd, KeepLargestConnectedComponent
from omegaconf import DictConfig, OmegaConf

from medseg.core.checkpoint import load_checkpoint
from medseg.core.errors import MedsegError
from medseg.core.utils import channels_last
from medseg.data.transforms import preprocessing
from medseg.inference.sliding_window import predict_probabilities


@dataclass
class Prediction:
    labels: np.ndarray  # (X, Y, Z) label map in the input's voxel grid
    affine: np.ndarray  # the input's voxel-to-world (RAS) affine
    probabilities: np.ndarray | None  # (X, Y, Z, C) in the input grid, when asked for
    preview: dict[str, torch.Tensor]  # preprocessed image and prediction, for pictures


def _same_task(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("in_channels", "num_classes", "spacing")
    return all(a["dataset"].get(k) == b["dataset"].get(k) for k in keys)


class Predictor:
    """An ensemble of checkpoints of one task, ready to segment scans.

    Args:
        checkpoints: one or more medseg checkpoints (their probabilities are averaged).
        device: where the networks run.
        inferer_overrides: keys of the training ``SlidingWindowInferer`` to change (overlap,
            ``sw_batch_size``, ``device="cpu"`` to stitch large volumes in host memory).
        amp: fp16 autocast on CUDA.
        mirror_axes: test-time mirroring over these spatial axes (``()`` = none, ``None`` = all).
        largest_component: keep only the largest connected component of each class.
    """

    def __init__(
        self,
        checkpoints: list[str | Path],
        device: torch.device,
        inferer_overrides: dict[str, Any] | None = None,
        amp: bool = False,
        mirror_axes: tuple[int, ...] | None = (),
        largest_component: bool = False,
    ):
        if not checkpoints:
            raise MedsegError("no checkpoint given: ckpt=<run>/checkpoints/best.pt (or a list for an ensemble)")
        self.device = device
        self.amp = amp
        self.mirror_axes = mirror_axes
        self.models = []
        first = None
        for path in checkpoints:
            state = load_checkpoint(path, map_location="cpu")
            config, names = state["config"], state["label_names"]
            if first is None:
                first = (path, config, names)
            elif names != first[2] or not _same_task(config, first[1]):
                raise MedsegError(
                    f"{path} was trained on another task than {first[0]} (labels {names} vs {first[2]}); "
                    "ensemble checkpoints of one task only"
                )
            model = instantiate(config["model"])
            model.load_state_dict(state["model"])
            model = model.to(device).eval()
            if config["trainer"].get("channels_last"):
                channels_last(model)
            self.models.append(model)
        _, config, names = first
        self.cfg: DictConfig = OmegaConf.create(config)
        self.label_names = {int(k): v for k, v in names.items()}
        self.target = instantiate(self.cfg.dataset.target)
        inferer_cfg = OmegaConf.merge(self.cfg.inferer, {k: v for k, v in (inferer_overrides or {}).items() if v is not None})
        self.inferer = instantiate(inferer_cfg)
        self.transform = preprocessing(self.cfg.dataset, keys=("image",))
        self.postprocess = (
            KeepLargestConnectedComponent(applied_labels=sorted(k for k in self.label_names if k != 0), independent=True)
            if largest_component else None
        )

    @property
    def in_channels(self) -> int:
        return int(self.cfg.dataset.in_channels)

    def load(self, image: str | list[str]) -> dict[str, Any]:
        """Reads and preprocesses one case; errors name the file."""
        name = image if isinstance(image, str) else image[0]
        try:
            data = self.transform({"image": image})
        except Exception as err:  # readers raise many types for truncated or foreign files
            cause = err.__cause__ or err
            raise MedsegError(f"{name}: cannot be read as an image ({type(cause).__name__}: {str(cause)[:120]})") from err
        channels = data["image"].shape[0]
        if channels != self.in_channels:
            raise MedsegError(
                f"{name}: has {channels} channel(s) but the model expects {self.in_channels} "
                f"({self.cfg.dataset.name}); give a {self.in_channels}-channel image or one file per channel"
            )
        return data

    def __call__(self, image: str | list[str], with_probabilities: bool = False) -> Prediction:
        data = self.load(image)
        x = data["image"]
        probs = predict_probabilities(self.models, x[None], self.inferer, self.device, self.target.activate,
                                      self.amp, self.mirror_axes)[0].cpu()
        preview = {"image": x.as_tensor().cpu(), "pred": self.target.label_map(probs[None])[0]}
        data["pred"] = MetaTensor(probs, meta=x.meta, applied_operations=x.applied_operations)
        inverted = Invertd(keys="pred", transform=self.transform, orig_keys="image", nearest_interp=False)(data)["pred"]
        labels = self.target.label_map(inverted[None])[0]
        if self.postprocess is not None:
            labels = self.postprocess(labels)
        affine = np.asarray(inverted.affine, dtype=np.float64)
        probabilities = np.moveaxis(inverted.numpy(), 0, -1).astype(np.float32) if with_probabilities else None
        return Prediction(np.asarray(labels[0]).astype(np.uint8), affine, probabilities, preview)


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Writes atomically (temp then rename), so an interrupted run leaves no truncated output."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)
