"""Segmenting new scans from checkpoints alone, with the result in each scan's original geometry.

A checkpoint carries the resolved training config, so the network, preprocessing (orientation,
spacing, intensity), sliding-window settings and label meaning are rebuilt from it. Windows that
see only zeros after preprocessing are skipped; the logits go back to the scan's grid (only the
foreground's box is resampled, with the labels ``Invertd`` would give), so the written label map
has the input's shape and affine. A single model at the tutorial's window settings writes the
labels of the MONAI tutorial's inference path (benchmarks/predict.py checks it).

The Python API is :class:`Predictor`: ``Predictor.from_checkpoint(path).predict(array, spacing=...)``
for arrays already in memory, ``predict_file(path)`` for files; both run the same chain.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from hydra.utils import instantiate
from monai.data import MetaTensor
from monai.transforms import Compose, Invertd, KeepLargestConnectedComponent, LoadImaged
from omegaconf import DictConfig, OmegaConf

from medseg.core.checkpoint import load_checkpoint, require_finite_weights
from medseg.core.errors import MedsegError, user_error_in
from medseg.core.networks import build_network
from medseg.core.trusted import trusted_config
from medseg.core.utils import channels_last, select_device
from medseg.data.transforms import preprocessing
from medseg.inference.inversion import labels_in_input_grid, supports_box_inversion
from medseg.inference.sliding_window import logits_where_signal

MAX_VOXEL_MM = 1000.0  # a voxel larger than a metre is a unit mistake, not a scan
MAX_RESAMPLED_VOXELS = 2.0 ** 31  # beyond this the resampled scan would not fit any machine's memory


@dataclass
class Prediction:
    labels: np.ndarray  # (X, Y, Z) label map in the input's voxel grid
    affine: np.ndarray  # the input's voxel-to-world (RAS) affine
    probabilities: np.ndarray | None  # (X, Y, Z, C) in the input grid, when asked for
    preview: dict[str, torch.Tensor]  # preprocessed image and prediction, for pictures


def expand_checkpoints(entries: list[str | Path]) -> list[str]:
    """Checkpoint files; a folder stands for every ``checkpoints/best.pt`` below it (a run folder,
    or a cross-validation sweep folder: the fold ensemble)."""
    ckpts = []
    for entry in map(Path, entries):
        found = sorted(entry.rglob("checkpoints/best.pt")) if entry.is_dir() else [entry]
        if not found:
            raise MedsegError(f"no checkpoints/best.pt below {entry}; point ckpt= to a run or sweep folder, or a .pt file")
        ckpts += [str(f) for f in found]
    return ckpts


def _label_names(state: dict[str, Any], path: str | Path) -> dict[str, str]:
    """The checkpoint's ``{"index": "name"}`` label names, checked to be just that."""
    names = state.get("label_names")
    if not isinstance(names, dict) or not names or not all(
            isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, str) for k, v in names.items()):
        raise MedsegError(f"{path}: its label_names entry is not a {{index: name}} mapping; point to a medseg checkpoint")
    return names


def check_inferer_overrides(overrides: dict[str, Any]) -> dict[str, Any]:
    """The sliding-window changes a user asked for (None = keep the checkpoint's), checked up front.

    Raises:
        MedsegError: naming the key, its value and the range it must be in.
    """
    chosen = {k: v for k, v in overrides.items() if v is not None}
    known = {"overlap", "mode", "sw_batch_size", "device", "sw_device"}
    for key in chosen:
        if key not in known:
            raise MedsegError(f"inferer.{key} is not a sliding-window setting medseg changes ({', '.join(sorted(known))})")
    overlap = chosen.get("overlap")
    if overlap is not None and (isinstance(overlap, bool) or not isinstance(overlap, (int, float)) or not 0 <= overlap < 1):
        raise MedsegError(f"inferer.overlap={overlap!r} must be a number in [0, 1): the fraction windows share")
    if "mode" in chosen and chosen["mode"] not in ("constant", "gaussian"):
        raise MedsegError(f"inferer.mode={chosen['mode']!r} must be constant or gaussian")
    batch = chosen.get("sw_batch_size")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise MedsegError(f"inferer.sw_batch_size={batch!r} must be a whole number >= 1 (windows per network call)")
    for key in ("device", "sw_device"):
        if key in chosen:
            try:
                torch.device(str(chosen[key]))
            except RuntimeError as err:
                raise MedsegError(f"inferer.{key}={chosen[key]!r} is not a device ({err}); use cpu or cuda[:N]") from err
    return chosen


def _same_task(a: dict[str, Any], b: dict[str, Any]) -> bool:
    keys = ("in_channels", "num_classes")
    return all(a["dataset"].get(k) == b["dataset"].get(k) for k in keys)


def _member_key(config: dict[str, Any]) -> str:
    """What checkpoints must share to be averaged in the network's grid: preprocessing and windows."""
    dataset = config["dataset"]
    keys = ("spacing", "intensity", "slice_axis", "window", "patch_size", "in_channels", "image_kind", "mirror_axes")
    return json.dumps([{k: dataset.get(k) for k in keys}, config.get("inferer"), config.get("model", {}).get("_target_")],
                      sort_keys=True, default=str)


@dataclass
class Member:
    """Checkpoints that share one preprocessing and sliding window: the folds of one configuration.
    Their logits are averaged on the network's grid; those of different members (a 2D and a 3D
    configuration) are averaged in the input's grid."""

    cfg: DictConfig
    models: list[torch.nn.Module]
    inferer: Any
    transform: Compose
    array_transform: Compose
    mirror_axes: tuple[int, ...]


class Predictor:
    """An ensemble of checkpoints of one task, ready to segment scans.

    Args:
        checkpoints: one or more medseg checkpoints (their logits are averaged, as nnU-Net does);
            checkpoints of different configurations (2D and 3D) are averaged in the input grid.
        device: where the networks run.
        inferer_overrides: keys of the training ``SlidingWindowInferer`` to change (overlap,
            ``sw_batch_size``, ``device="cpu"`` to stitch large volumes in host memory).
        amp: autocast on CUDA (bf16 where supported, else fp16).
        mirror_axes: test-time mirroring over these spatial axes (``()`` = none, ``None`` = the
            axes each checkpoint was trained to be mirrored along).
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
        inferer_overrides = check_inferer_overrides(inferer_overrides or {})
        self.device = device
        self.amp = amp
        groups: dict[str, tuple[dict[str, Any], list[torch.nn.Module]]] = {}
        first = None
        for path in checkpoints:
            state = load_checkpoint(path, map_location="cpu")
            require_finite_weights(state, path)
            # Values only: every _target_ is checked against medseg's own configs before anything is built.
            config, names = trusted_config(state.get("config"), path), _label_names(state, path)
            if first is None:
                first = (path, config, names)
            elif names != first[2] or not _same_task(config, first[1]):
                raise MedsegError(
                    f"{path} was trained on another task than {first[0]} (labels {names} vs {first[2]}); "
                    "ensemble checkpoints of one task only"
                )
            model = build_network(config["model"], config["dataset"].get("slice_axis"))
            model.load_state_dict(state["model"])
            model = model.to(device).eval()
            if config["trainer"].get("channels_last"):
                channels_last(model)
            groups.setdefault(_member_key(config), (config, []))[1].append(model)
        self.members = [self._member(config, models, inferer_overrides, mirror_axes) for config, models in groups.values()]
        lead = self.members[0]
        self.cfg: DictConfig = lead.cfg
        self.models = [m for member in self.members for m in member.models]
        self.inferer, self.transform, self.mirror_axes = lead.inferer, lead.transform, lead.mirror_axes
        self.label_names = {int(k): v for k, v in first[2].items()}
        self.target = instantiate(self.cfg.dataset.target)
        # The reader is the same for every member (one input, one channel count): read once, then each
        # member's own preprocessing.
        self.loader = next(t for t in self.transform.transforms if isinstance(t, LoadImaged))
        self.array_transform = lead.array_transform
        self.postprocess = (
            KeepLargestConnectedComponent(applied_labels=sorted(k for k in self.label_names if k != 0), independent=True)
            if largest_component else None
        )

    @staticmethod
    def _member(config: dict[str, Any], models: list[torch.nn.Module], inferer_overrides: dict[str, Any],
                mirror_axes: tuple[int, ...] | None) -> Member:
        cfg = OmegaConf.create(config)
        if mirror_axes is None:  # "all": the axes the model was trained to be mirrored along (the plan's)
            planned = cfg.dataset.get("mirror_axes")
            in_plane = tuple(a for a in range(3) if a != cfg.dataset.get("slice_axis"))
            mirror_axes = in_plane if planned is None else tuple(int(a) for a in planned)
        # The whole field of view: the windows are cropped instead (window_aligned_box), so that
        # the sliding windows, and the labels, are those of the uncropped scan.
        transform = preprocessing(cfg.dataset, keys=("image",), crop_foreground=False)
        # The same transform objects minus the reader: arrays and files take one path, and
        # ``Invertd`` (driven by each tensor's applied operations) undoes either.
        array_transform = Compose([t for t in transform.transforms if not isinstance(t, LoadImaged)])
        return Member(cfg, models, instantiate(OmegaConf.merge(cfg.inferer, inferer_overrides)), transform,
                      array_transform, tuple(mirror_axes))

    @classmethod
    def from_checkpoint(
        cls,
        path_or_list: str | Path | list[str | Path],
        device: str | torch.device = "auto",
        tta: bool = True,
        amp: bool = False,
        largest_component: bool = False,
        inferer_overrides: dict[str, Any] | None = None,
    ) -> Predictor:
        """The Python entry: the predictor ``python -m medseg.predict`` builds from the same arguments.

        Args:
            path_or_list: a checkpoint, a list of them (an ensemble), or a folder standing for every
                ``checkpoints/best.pt`` below it (a run, or a cross-validation sweep).
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda:1``, ... or a ``torch.device``.
            tta: mirror over the spatial axes (``dataset.mirror_axes`` of the checkpoint: all three unless
                the data are anisotropic) and average: up to 8 passes per model.
        """
        entries = list(path_or_list) if isinstance(path_or_list, (list, tuple)) else [path_or_list]
        device = device if isinstance(device, torch.device) else select_device(str(device))
        return cls(expand_checkpoints(entries), device, inferer_overrides, amp=amp,
                   mirror_axes=None if tta else (), largest_component=largest_component)

    @property
    def window(self) -> list[int]:
        """The sliding window: the training patch, one voxel thick along the slice axis in 2D."""
        window = self.cfg.dataset.get("window") or self.cfg.dataset.patch_size  # older checkpoints: the patch
        return [int(w) for w in window]

    @property
    def in_channels(self) -> int:
        return int(self.cfg.dataset.in_channels)

    def read(self, image: str | list[str]) -> dict[str, Any]:
        """Reads one case, as stored (not yet preprocessed); errors name the file."""
        name = image if isinstance(image, str) else image[0]
        try:
            data = self.loader({"image": image})
        except Exception as err:  # readers raise many types for truncated or foreign files
            refusal = user_error_in(err)  # a reader's own one-line refusal (a DICOM series with a gap) stays as it is
            if refusal is not None:
                raise refusal from None
            cause = err.__cause__ or err
            raise MedsegError(f"{name}: cannot be read as an image ({type(cause).__name__}: {str(cause)[:120]})") from err
        scan = data["image"]
        finite = torch.isfinite(scan)
        if not bool(finite.all()):
            raise MedsegError(f"{name}: holds {int(scan.numel() - finite.sum())} NaN/Inf voxel(s); "
                              "fix the file (replace them with the background value)")
        if scan.shape[0] != self.in_channels:
            raise MedsegError(
                f"{name}: has {scan.shape[0]} channel(s) but the model expects {self.in_channels} "
                f"({self.cfg.dataset.name}); give a {self.in_channels}-channel image or one file per channel"
            )
        self._check_geometry(tuple(scan.shape[1:]), np.asarray(scan.affine, dtype=np.float64), name)
        return data

    def load(self, image: str | list[str]) -> dict[str, Any]:
        """Reads and preprocesses one case (the first configuration's preprocessing); errors name the file."""
        return self._preprocess(self.members[0], self.read(image))

    @staticmethod
    def _preprocess(member: Member, data: dict[str, Any]) -> dict[str, Any]:
        name = data["image"].meta.get("filename_or_obj", "array")
        try:
            return member.array_transform({"image": MetaTensor(data["image"].as_tensor().clone(), meta=data["image"].meta)})
        except Exception as err:
            cause = err.__cause__ or err
            raise MedsegError(f"{name}: cannot be preprocessed ({type(cause).__name__}: {str(cause)[:120]})") from err

    def predict_file(self, image: str | Path | list[str], with_probabilities: bool = False) -> Prediction:
        """Segments one scan file (or one file per channel), as ``medseg.predict`` writes it."""
        return self._infer(self.read(str(image) if isinstance(image, Path) else image), with_probabilities)

    def __call__(self, image: str | list[str], with_probabilities: bool = False) -> Prediction:
        return self.predict_file(image, with_probabilities)

    def predict(
        self,
        array: np.ndarray,
        spacing: tuple[float, float, float] | list[float] | None = None,
        affine: np.ndarray | None = None,
        with_probabilities: bool = False,
    ) -> Prediction:
        """Segments a scan already in memory; the same result ``medseg.predict`` writes for it on disk.

        The array is in nibabel's convention, so ``img.get_fdata()`` and ``img.affine`` of a NIfTI
        go in unchanged: ``(X, Y, Z)`` for one channel, ``(X, Y, Z, C)`` channels last (as a 4D
        NIfTI is stored) for several. Channels last is also how ``Prediction.probabilities``
        comes back, so arrays go in and come out in one layout. A channels-first ``(C, X, Y, Z)``
        array is refused with the ``np.moveaxis`` that fixes it, never guessed.

        Args:
            array: intensities in the scan's units (HU for CT), any real dtype.
            spacing: voxel size in mm along X, Y, Z; means the diagonal affine ``diag(spacing)``.
            affine: the full 4x4 voxel-to-world (RAS+, mm) matrix instead, as nibabel gives it.
            with_probabilities: also return ``(X, Y, Z, C)`` probabilities in the input grid.

        Returns:
            :class:`Prediction`: ``labels`` ``(X, Y, Z)`` uint8 in the input's voxel grid, its
            ``affine`` (the given one), and ``probabilities`` when asked for.

        Raises:
            MedsegError: the array's shape or the geometry does not fit the model.
        """
        x = _channels_first(_checked_array(array), self.in_channels)
        if (spacing is None) == (affine is None):
            raise MedsegError("give either spacing=(sx, sy, sz) in mm or affine=<4x4 voxel-to-world matrix>, not both or neither")
        if affine is None:
            spacing = np.asarray(spacing, dtype=np.float64).ravel() if np.ndim(spacing) else np.asarray([spacing], np.float64)
            if spacing.size != 3 or not np.isfinite(spacing).all() or spacing.min() <= 0:
                raise MedsegError(f"spacing={tuple(spacing.tolist())} must be 3 positive, finite voxel sizes in mm (X, Y, Z)")
            affine = np.diag([*spacing.tolist(), 1.0])
        affine = np.asarray(affine, dtype=np.float64)
        if affine.shape != (4, 4) or not np.isfinite(affine).all():
            raise MedsegError(f"affine must be a finite 4x4 voxel-to-world matrix (got shape {affine.shape}"
                              f"{', with NaN/Inf' if affine.shape == (4, 4) else ''})")
        if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
            raise MedsegError("affine is singular (a zero voxel size or collinear axes); give the scan's real voxel-to-world matrix")
        self._check_geometry(x.shape[1:], affine, "array")
        meta = {"affine": torch.as_tensor(affine), "original_affine": affine.copy(),
                "spatial_shape": np.asarray(x.shape[1:]), "space": "RAS", "filename_or_obj": "array"}
        image = MetaTensor(torch.as_tensor(x, dtype=torch.float32), meta=meta)
        return self._infer({"image": image}, with_probabilities)

    def _check_geometry(self, shape: tuple[int, ...], affine: np.ndarray, name: str) -> None:
        """Voxel sizes a scan can have, and a resampled grid that fits in memory: a spacing of 1e6 mm
        would otherwise ask the resampler for an astronomically large volume."""
        spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
        if spacing.max() > MAX_VOXEL_MM:
            raise MedsegError(f"{name}: voxel size {spacing.round(3).tolist()} mm is over {MAX_VOXEL_MM:g} mm; "
                              "give the spacing in millimetres")
        target = np.min([np.resize(np.asarray(m.cfg.dataset.spacing, dtype=np.float64), spacing.shape)
                         for m in self.members], axis=0)  # the finest grid any member resamples to
        target = np.where(target > 0, target, spacing)  # 0: the stored spacing is kept along that axis
        voxels = float(np.prod(np.ceil(np.asarray(shape[: spacing.size], float) * spacing / target)))
        if voxels > MAX_RESAMPLED_VOXELS:
            raise MedsegError(f"{name}: resampled to the model's {target.tolist()} mm it would hold {voxels:.3g} voxels "
                              f"(over {MAX_RESAMPLED_VOXELS:.3g}); check the spacing or affine given")

    def _logits(self, member: Member, data: dict[str, Any]) -> MetaTensor:
        """One member's averaged logits on its network grid, carrying its preprocessing record."""
        x = data["image"]
        logits = logits_where_signal(member.models, x, member.inferer, self.device,
                                     self.target.background_logits(int(self.cfg.dataset.num_classes)),
                                     self.amp, member.mirror_axes)
        return MetaTensor(logits, meta=x.meta, applied_operations=x.applied_operations)

    def _infer(self, raw: dict[str, Any], with_probabilities: bool) -> Prediction:
        """Networks, then back to the input grid: the one path of files and arrays."""
        if len(self.members) > 1:
            return self._infer_across_configurations(raw, with_probabilities)
        data = self._preprocess(self.members[0], raw)
        x = data["image"]
        pred = self._logits(self.members[0], data)
        preview = {"image": x.as_tensor().cpu(), "pred": self.target.labels_from_logits(pred.as_tensor()[None])[0].cpu()}
        probabilities = None
        if not with_probabilities and supports_box_inversion(pred):
            # Only the foreground's box is resampled (medseg.inference.inversion): same labels as Invertd.
            affine = np.asarray(x.meta["original_affine"], dtype=np.float64)
            labels = labels_in_input_grid(pred, self.transform, self.target.labels_from_logits, affine,
                                          tuple(int(n) for n in x.meta["spatial_shape"])).cpu()
        else:
            inverted = self._in_input_grid(self.members[0], data, pred)
            labels = self.target.labels_from_logits(inverted[None])[0]
            affine = np.asarray(inverted.affine, dtype=np.float64)
            if with_probabilities:
                probabilities = np.moveaxis(self.target.activate(inverted[None])[0].numpy(), 0, -1).astype(np.float32)
        return self._result(labels, affine, probabilities, preview)

    @staticmethod
    def _in_input_grid(member: Member, data: dict[str, Any], pred: MetaTensor) -> MetaTensor:
        data = {**data, "pred": pred.cpu()}
        return Invertd(keys="pred", transform=member.transform, orig_keys="image", nearest_interp=False)(data)["pred"]

    def _infer_across_configurations(self, raw: dict[str, Any], with_probabilities: bool) -> Prediction:
        """Each configuration's logits resampled to the input grid, averaged there (weighted by its
        number of checkpoints), then labelled: an ensemble of a 2D and a 3D configuration."""
        total, weight, preview, affine = None, 0, None, None
        for member in self.members:
            data = self._preprocess(member, raw)
            pred = self._logits(member, data)
            if preview is None:
                preview = {"image": data["image"].as_tensor().cpu(),
                           "pred": self.target.labels_from_logits(pred.as_tensor()[None])[0].cpu()}
            inverted = self._in_input_grid(member, data, pred)
            affine = np.asarray(inverted.affine, dtype=np.float64)
            part = inverted.as_tensor().float() * len(member.models)
            total = part if total is None else total + part
            weight += len(member.models)
        logits = total / weight
        labels = self.target.labels_from_logits(logits[None])[0]
        probabilities = (np.moveaxis(self.target.activate(logits[None])[0].numpy(), 0, -1).astype(np.float32)
                         if with_probabilities else None)
        return self._result(labels, affine, probabilities, preview)

    def _result(self, labels: torch.Tensor, affine: np.ndarray, probabilities: np.ndarray | None,
                preview: dict[str, torch.Tensor]) -> Prediction:
        if self.postprocess is not None:
            labels = self.postprocess(labels)
        return Prediction(np.asarray(labels[0]).astype(np.uint8), affine, probabilities, preview)


def _checked_array(array: Any) -> np.ndarray:
    """A real-valued, non-empty, finite image array; anything else is one line naming the problem."""
    array = np.asarray(array)
    if array.dtype == bool or not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise MedsegError(f"array of dtype {array.dtype} is not an image: give real intensities "
                          "(integer or float; a boolean mask or complex data is not a scan)")
    if array.size == 0:
        raise MedsegError(f"array of shape {array.shape} is empty")
    if np.issubdtype(array.dtype, np.floating):
        finite = np.isfinite(array)
        if not finite.all():
            first = tuple(int(i) for i in np.argwhere(~finite)[0])
            raise MedsegError(f"array holds {int(array.size - finite.sum())} NaN/Inf value(s), e.g. at index {first}; "
                              "replace them (e.g. with the background value) before predicting")
    return array


def _channels_first(array: np.ndarray, in_channels: int) -> np.ndarray:
    """``(X, Y, Z)`` or ``(X, Y, Z, C)`` -> ``(C, X, Y, Z)``; anything else is one line naming the fix."""
    if array.ndim == 3 and in_channels == 1:
        return array[None]
    if array.ndim == 4 and array.shape[-1] == in_channels:
        return np.moveaxis(array, -1, 0)
    hint = ""
    if array.ndim == 4 and array.shape[0] == in_channels:
        hint = "; it looks channels first: pass np.moveaxis(array, 0, -1)"
    expected = "(X, Y, Z)" if in_channels == 1 else f"(X, Y, Z, {in_channels})"
    raise MedsegError(f"array of shape {array.shape} does not fit the model: it expects {expected}, channels last{hint}")
