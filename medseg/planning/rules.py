"""Planning rules: the recipe's data-dependent values from a fingerprint, as plain functions.

Each rule is stated in its docstring and tested on generated fingerprints (tests/test_planning.py).
They follow nnU-Net's published heuristics (Isensee et al., Nature Methods 2021), re-stated here:

- target spacing: the median spacing; for anisotropic data (the coarsest axis more than 3x the
  others and the median image less than a third as many voxels along it) the coarse axis takes the
  10th percentile of its spacings instead, so thin-slice cases are not thrown away.
- patch: the largest patch the network divides inside the median image (after the foreground
  crop, resampled), shrunk along its longest (mm) axis until it fits the voxel budget.
- topology: an axis is down-sampled while its spacing is within 2x of the finest and the feature
  map stays >= 4 voxels; convolutions are 3 wide along axes within 2x of the finest spacing, 1
  wide along coarser ones (in-plane convolutions for thick slices).
- batch: as many patches as the batch voxel budget allows, at least 2, at most what covers 5 % of
  the dataset's voxels per step.
- mirroring: along every axis (training flips and test-time augmentation), except the coarse axis
  of anisotropic data and axes along which two classes keep their order in >= 90 % of the cases,
  separated by >= 1/4 of their distance (anterior/posterior, left/right structures): mirrored, such
  anatomy contradicts its labels.
- normalisation: CT clips to the foreground's 0.5/99.5 percentiles and z-scores with its mean and
  std (one scale for every case: Hounsfield units mean the same everywhere); MRI and other
  modalities z-score each case on its nonzero voxels (their scale differs per scanner).

Beyond one isotropic 3D task (the 2D configuration, unknown spacing, 2D pictures):

- configuration: ``2d`` (a 2D network on slices along the slice axis) for 2D images (every case
  has one voxel along an axis) and for thick-slice data: the coarse axis more than 3x the finest
  spacing *and* fewer than ``planner.min_slices_3d`` voxels along it in the median resampled image
  (a 3D network could pool such an axis at most twice: it sees little more than 2D context, at 3D
  cost; cine cardiac MRI, most prostate MRI); ``3d`` otherwise. nnU-Net trains both and picks by
  cross-validation; ``make cv`` over ``dataset.configuration=2d,3d`` and ``medseg.cv_summary`` do
  the same here.
- slice axis: the coarsest axis; among equally coarse axes, the one with the fewest voxels.
- unknown spacing: when every case is at exactly 1 mm isotropic (identity affines: data passed
  around without its geometry) yet one axis holds under a third of the voxels of the others, the
  spacing is taken as lost, not as isotropic: the planning decisions (configuration, topology,
  mirroring) see that axis as thick, ``clip(in-plane voxels / slices, 3.5, 10)`` times the
  in-plane spacing, while the data are not resampled (1 mm is the only grid there is).
- 2D pictures (PNG, JPEG, TIFF) carry no spacing; those whose median image holds more than
  ``planner.image_pixels`` pixels are resampled to a coarser grid holding about that many, so a
  step sees whole structures at a cost the budget affords (nnU-Net keeps full resolution on a GPU).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

MIN_FEATURE_MAP = 4      # voxels along an axis at the bottleneck
MAX_POOLS = 5
ANISOTROPY = 3.0         # the coarse/fine spacing ratio from which data counts as anisotropic
DATASET_FRACTION = 0.05  # a step's patches cover at most this share of the dataset's voxels


def target_spacing(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[int]]) -> list[float]:
    """Median spacing; the coarse axis of anisotropic data at its 10th percentile instead."""
    spacings, shapes = np.asarray(spacings, float), np.asarray(shapes, float)
    target = np.median(spacings, 0)
    median_shape = np.median(shapes, 0)
    worst = int(np.argmax(target))
    others = [i for i in range(len(target)) if i != worst]
    anisotropic_spacing = target[worst] > ANISOTROPY * max(target[others])
    few_slices = median_shape[worst] * ANISOTROPY < min(median_shape[others])
    if anisotropic_spacing and few_slices:
        coarse = float(np.percentile(spacings[:, worst], 10))
        target[worst] = max(coarse, max(target[others]) + 1e-5)  # never finer than the in-plane spacing
    return [round(float(s), 5) for s in target]


def resampled_shape(shape: Sequence[float], spacing: Sequence[float], target: Sequence[float]) -> list[float]:
    """Voxels along each axis after resampling from ``spacing`` to ``target`` (a target of 0 keeps
    the stored spacing along that axis, as MONAI's ``Spacingd`` does)."""
    return [s * sp / t if t > 0 else s for s, sp, t in zip(shape, spacing, target)]


def single_slice_axis(shapes: Sequence[Sequence[int]]) -> int | None:
    """The axis along which every case holds one voxel (2D images read as one-slice volumes), or None."""
    shapes = np.asarray(shapes)
    flat = [a for a in range(shapes.shape[1]) if np.all(shapes[:, a] == 1)]
    return flat[0] if flat else None


def spacing_unknown(spacings: Sequence[Sequence[float]], shapes: Sequence[Sequence[float]]) -> bool:
    """Every case at exactly 1 mm isotropic while one axis holds under a third of the others' voxels:
    the geometry was lost (identity affines), it is not isotropic data."""
    spacings, median = np.asarray(spacings, float), np.median(np.asarray(shapes, float), 0)
    if not np.allclose(spacings, 1.0, atol=1e-6):
        return False
    fewest = int(np.argmin(median))
    others = [median[a] for a in range(len(median)) if a != fewest]
    return median[fewest] * ANISOTROPY < min(others)


def effective_spacing(spacing: Sequence[float], median_shape: Sequence[float]) -> list[float]:
    """For unknown spacing: the axis with the fewest voxels taken as thick, ``clip(in-plane voxels /
    slices, 3.5, 10)`` times the others (what planning decisions see; the data keep their grid)."""
    fewest = int(np.argmin(median_shape))
    in_plane = float(np.median([median_shape[a] for a in range(len(median_shape)) if a != fewest]))
    ratio = float(np.clip(in_plane / max(median_shape[fewest], 1.0), ANISOTROPY + 0.5, 10.0))
    return [float(s) * (ratio if a == fewest else 1.0) for a, s in enumerate(spacing)]


def slice_axis(spacing: Sequence[float], median_shape: Sequence[float]) -> int:
    """The coarsest axis; among equally coarse ones (within 1 %), the one with the fewest voxels."""
    coarsest = max(spacing)
    candidates = [a for a, s in enumerate(spacing) if s >= 0.99 * coarsest]
    return min(candidates, key=lambda a: median_shape[a])


def default_configuration(spacing: Sequence[float], median_shape: Sequence[float], min_slices_3d: int) -> str:
    """``2d`` for thick, few slices (see the module docstring), else ``3d``."""
    axis = slice_axis(spacing, median_shape)
    others = [s for a, s in enumerate(spacing) if a != axis]
    thick = spacing[axis] > ANISOTROPY * min(others)
    return "2d" if thick and median_shape[axis] < min_slices_3d else "3d"


def picture_spacing(median_shape: Sequence[float], axis: int, pixel_budget: int) -> list[float]:
    """Target spacing of 2D pictures: 1 px unless the median image holds more than ``pixel_budget``
    pixels, then the factor that brings it to about that many (two decimals); ``0`` (keep) along
    the single-slice axis."""
    pixels = math.prod(s for a, s in enumerate(median_shape) if a != axis)
    factor = max(1.0, round(math.sqrt(pixels / pixel_budget), 2))
    return [0.0 if a == axis else factor for a in range(len(median_shape))]


def topology(patch: Sequence[int], spacing: Sequence[float]) -> dict[str, list[list[int]]]:
    """Down-sampling strides and kernel sizes of an encoder for ``patch`` at ``spacing``.

    Returns ``{"strides": [...], "kernels": [...]}``, one entry per resolution level (the first
    level has stride 1), as DynUNet takes them.
    """
    size, current = [int(p) for p in patch], [float(s) for s in spacing]
    strides, kernels = [[1] * len(size)], []
    while len(strides) <= MAX_POOLS:
        finest = min(current)
        fine = [sp <= 2 * finest for sp in current]
        kernels.append([3 if f else 1 for f in fine])
        pool = [f and s >= 2 * MIN_FEATURE_MAP for f, s in zip(fine, size)]
        if not any(pool):
            break
        strides.append([2 if p else 1 for p in pool])
        size = [s // 2 if p else s for s, p in zip(size, pool)]
        current = [sp * 2 if p else sp for sp, p in zip(current, pool)]
    else:
        finest = min(current)
        kernels.append([3 if sp <= 2 * finest else 1 for sp in current])
    return {"strides": strides, "kernels": kernels}


def divisor(strides: Sequence[Sequence[int]]) -> list[int]:
    """What the network's down-sampling needs each patch axis to be a multiple of."""
    return [math.prod(s[i] for s in strides) for i in range(len(strides[0]))]


def round_up(patch: Sequence[float], multiple: Sequence[int]) -> list[int]:
    return [int(math.ceil(p / m) * m) for p, m in zip(patch, multiple)]


def round_down(patch: Sequence[float], multiple: Sequence[int]) -> list[int]:
    return [max(m, int(p // m) * m) for p, m in zip(patch, multiple)]


def fit_patch(median_shape: Sequence[float], spacing: Sequence[float], voxel_budget: int,
              extra_divisor: int = 1) -> tuple[list[int], dict[str, list[list[int]]]]:
    """The largest patch the network divides that fits inside the median image (at least one
    divisor step per axis), shrunk one divisor step at a time along its longest axis in mm until
    it holds at most ``voxel_budget`` voxels. ``extra_divisor`` is a network's own requirement
    (e.g. 32 for SwinUNETR).

    Inside the image, not rounded up past it as nnU-Net does: random crops then still move over
    the image, and each step costs less. On the real hippocampus cases (median 35x50x36) the
    patch 32x48x32 trained to mean Dice 0.888 in 10 CPU minutes where 40x56x40 (the whole padded
    image in every patch) reached 0.874 (the hippocampus benchmark, fold 0; now benchmarks/real_tasks.py).
    """
    patch = [max(int(s), 2 * MIN_FEATURE_MAP) for s in median_shape]
    for _ in range(1000):  # one divisor step per round; bounded for safety
        net = topology(patch, spacing)
        multiple = [math.lcm(d, extra_divisor) for d in divisor(net["strides"])]
        rounded = round_down(patch, multiple)
        if math.prod(rounded) > voxel_budget:
            shrinkable = [i for i in range(len(rounded)) if rounded[i] > multiple[i]]
            if not shrinkable:
                break  # every axis is at its smallest multiple
            longest = max(shrinkable, key=lambda i: rounded[i] * spacing[i])
            rounded[longest] -= multiple[longest]
        if rounded == patch:
            break
        patch = rounded
    net = topology(patch, spacing)
    multiple = [math.lcm(d, extra_divisor) for d in divisor(net["strides"])]
    return round_up(patch, multiple), net


def patches_per_step(patch: Sequence[int], median_shape: Sequence[float], cases: int, batch_voxel_budget: int) -> int:
    """Patches per training step: the batch budget, at least 2, at most 5 % of the dataset's voxels."""
    voxels = math.prod(patch)
    by_budget = batch_voxel_budget // voxels
    by_dataset = int(DATASET_FRACTION * cases * math.prod(median_shape) / voxels)
    return max(2, min(by_budget, by_dataset))


def normalisation(modality: str, intensity: dict[str, float]) -> dict[str, Any] | None:
    """The intensity transform (a ``_target_`` config) for one modality, from the foreground
    statistics; None for a mixed or unknown modality (e.g. AMOS's ``CT/MRI``): the dataset's own
    transform is kept then."""
    kind = str(modality).strip().upper()
    if kind not in ("CT", "MRI", "MR"):
        return None
    if kind == "CT":
        low, high = intensity["percentile_00_5"], intensity["percentile_99_5"]
        mean, std = intensity["mean"], max(intensity["std"], 1e-8)
        # clip to [low, high] and z-score in one linear map: slope 1/std, output clipped likewise
        return {"_target_": "monai.transforms.ScaleIntensityRanged", "keys": "image",
                "a_min": round(low, 4), "a_max": round(high, 4),
                "b_min": round((low - mean) / std, 4), "b_max": round((high - mean) / std, 4), "clip": True}
    return {"_target_": "monai.transforms.NormalizeIntensityd", "keys": "image", "nonzero": True, "channel_wise": True}


def ordered_axes(centroids: Sequence[dict[str, Sequence[float]]], consistency: float = 0.9,
                 share: float = 0.25) -> list[int]:
    """RAS axes along which two foreground classes keep their order: the same sign of their centre
    difference in >= ``consistency`` of the cases, with a median separation along the axis of at
    least ``share`` of the median distance between the centres (the axis that tells them apart,
    not a slight tilt). The anterior and posterior hippocampus along A-P, a left and a right kidney
    along L-R. Mirroring along such an axis shows the network anatomy whose labels swapped places."""
    classes = sorted({c for case in centroids for c in case}, key=int)
    ordered = set()
    for i, a in enumerate(classes):
        for b in classes[i + 1:]:
            diffs = np.array([np.subtract(case[a], case[b]) for case in centroids if a in case and b in case])
            if len(diffs) < 3:
                continue
            distance = float(np.median(np.linalg.norm(diffs, axis=1)))
            for axis in range(3):
                signs = np.sign(diffs[:, axis])
                consistent = max(np.mean(signs > 0), np.mean(signs < 0)) >= consistency
                if consistent and abs(float(np.median(diffs[:, axis]))) >= share * distance:
                    ordered.add(axis)
    return sorted(ordered)


def mirror_axes(spacing: Sequence[float], ordered: Sequence[int] = (), slices: int | None = None) -> list[int]:
    """Axes to mirror, in training (random flips) and at test time: every axis except the coarse
    axis of anisotropic data (not sampled like the others), the slice axis of the 2D
    configuration, and axes along which classes keep their order (``ordered_axes``)."""
    finest = min(s for a, s in enumerate(spacing) if a != slices) if slices is not None else min(spacing)
    return [i for i, s in enumerate(spacing) if s <= ANISOTROPY * finest and i not in ordered and i != slices]


def rotation_axes(patch: Sequence[int], mirrored: Sequence[int] = (0, 1, 2)) -> list[int] | None:
    """Two mirrored axes of equal patch size (90-degree rotations keep the shape, and turn only
    within a plane the anatomy may be mirrored in), or None."""
    for a in range(len(patch)):
        for b in range(a + 1, len(patch)):
            if patch[a] == patch[b] and a in mirrored and b in mirrored:
                return [a, b]
    return None


def unet_channels(levels: int, base: int, cap: int) -> list[int]:
    return [min(base * 2 ** i, cap) for i in range(levels)]


# Transformers whose patch embedding and merging fix the multiple regardless of their config.
TOKEN_DIVISORS = {"monai.networks.nets.SwinUNETR": 32, "monai.networks.nets.UNETR": 16}


def network_divisors(model: Any, ndim: int) -> list[int] | None:
    """What a configured network needs each patch axis to be a multiple of, per axis (per-axis stride
    lists, as planned for anisotropic data, included), or None when its config does not say."""
    strides = model.get("strides") if str(model.get("_target_", "")) not in TOKEN_DIVISORS else None
    if strides is not None and any(hasattr(s, "__len__") for s in strides):
        per_axis = [[int(v) for v in s] if hasattr(s, "__len__") else [int(s)] * ndim for s in strides]
        if any(len(s) != ndim for s in per_axis):
            return None
        return [math.prod(s[i] for s in per_axis) for i in range(ndim)]
    factor = network_divisor(model)
    return None if factor is None else [factor] * ndim


def network_divisor(model: Any) -> int | None:
    """How much a configured network shrinks a patch (the patch must be a multiple), or None when
    its config does not say (per-axis stride lists are planned, not checked, here)."""
    target = str(model.get("_target_", ""))
    if target in TOKEN_DIVISORS:
        return TOKEN_DIVISORS[target]
    strides = model.get("strides")
    if strides is not None:
        if any(hasattr(s, "__len__") for s in strides):
            return None
        return int(math.prod(int(s) for s in strides))
    if model.get("blocks_down") is not None:  # SegResNet
        return 2 ** (len(model.blocks_down) - 1)
    return None
