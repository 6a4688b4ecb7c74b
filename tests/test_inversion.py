"""Labels in the scan's grid from the foreground box only (medseg.inference.inversion) against
MONAI's ``Invertd`` of the whole probability map, on real preprocessing of generated scans."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from monai.data import MetaTensor
from monai.transforms import Invertd

from medseg.core.targets import ClassLabels, Regions
from medseg.data.synthetic import TASK_NAME
from medseg.data.transforms import preprocessing
from medseg.inference.inversion import labels_in_input_grid, supports_box_inversion
from tests.conftest import CONF_DIR


def _dataset_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose("train", ["dataset=synthetic", *overrides]).dataset


def _smooth_probabilities(shape: tuple[int, ...], centres: list[tuple[float, float, float]], channels: int,
                          seed: int) -> torch.Tensor:
    """Softmax of smooth blobs (one per foreground class), some placed on the grid's edges."""
    grid = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij"))
    rng = np.random.default_rng(seed)
    noise = torch.Generator().manual_seed(seed)
    logits = [torch.zeros(shape)]
    for c in range(1, channels):
        centre = torch.tensor(centres[(c - 1) % len(centres)]).view(3, 1, 1, 1) * torch.tensor(shape).view(3, 1, 1, 1)
        radius = float(rng.uniform(3, 6))
        logits.append(3.0 * (1 - (((grid - centre) ** 2).sum(0).sqrt() / radius)) + torch.randn(shape, generator=noise) * 0.3)
    return torch.softmax(torch.stack(logits), dim=0)


@pytest.mark.parametrize("case", [0, 1, 3, 4])  # stored LPS/RAS/flipped/permuted orientations
@pytest.mark.parametrize("crop", [True, False])
def test_box_inversion_gives_the_labels_of_invertd(synthetic_data_dir, case, crop):
    cfg = _dataset_cfg([f"dataset.crop_foreground={str(crop).lower()}", "dataset.spacing=[1.7,2.3,2.9]"])
    transform = preprocessing(cfg, keys=("image",))
    image_file = str(synthetic_data_dir / TASK_NAME / "imagesTr" / f"synthetic_{case:03d}.nii.gz")
    data = transform({"image": image_file})
    x = data["image"]
    # Blobs inside, on a corner of the network's grid and on a face: where the crop and the scan edge meet them.
    probs = _smooth_probabilities(tuple(x.shape[1:]), [(0.5, 0.4, 0.5), (0.0, 0.0, 0.0), (0.98, 0.5, 1.0)], 4, case)
    pred = MetaTensor(probs, meta=x.meta, applied_operations=x.applied_operations)
    assert supports_box_inversion(pred)
    target = ClassLabels()
    reference = target.label_map(Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)(
        {**data, "pred": MetaTensor(probs.clone(), meta=x.meta, applied_operations=list(x.applied_operations))}
    )["pred"][None])[0]
    ours = labels_in_input_grid(pred, transform, target.label_map, x.meta["original_affine"],
                                tuple(int(n) for n in x.meta["spatial_shape"]))
    assert ours.shape == reference.shape == (1, *map(int, x.meta["spatial_shape"]))
    assert set(torch.unique(reference).tolist()) >= {0, 1}  # the case has foreground in the scan's grid
    assert torch.equal(ours.cpu(), torch.as_tensor(reference).cpu()), f"{(ours != reference).sum().item()} voxels differ"


def test_regions_and_an_empty_prediction(synthetic_data_dir):
    cfg = _dataset_cfg([])
    transform = preprocessing(cfg, keys=("image",))
    data = transform({"image": str(synthetic_data_dir / TASK_NAME / "imagesTr" / "synthetic_002.nii.gz")})
    x = data["image"]
    shape = tuple(int(n) for n in x.meta["spatial_shape"])
    target = Regions(threshold=0.5, label_values=[1, 2])
    probs = _smooth_probabilities(tuple(x.shape[1:]), [(0.5, 0.5, 0.5), (0.1, 0.9, 0.0)], 3, 0)[1:]  # 2 regions
    pred = MetaTensor(probs, meta=x.meta, applied_operations=x.applied_operations)
    reference = target.label_map(Invertd(keys="pred", transform=transform, orig_keys="image", nearest_interp=False)(
        {**data, "pred": MetaTensor(probs.clone(), meta=x.meta, applied_operations=list(x.applied_operations))}
    )["pred"][None])[0]
    ours = labels_in_input_grid(pred, transform, target.label_map, x.meta["original_affine"], shape)
    assert reference.sum() > 0 and torch.equal(ours.cpu(), torch.as_tensor(reference).cpu())
    empty = MetaTensor(torch.zeros_like(probs), meta=x.meta, applied_operations=x.applied_operations)
    assert labels_in_input_grid(empty, transform, target.label_map, x.meta["original_affine"], shape).sum() == 0


def test_class_indices_is_argmax_with_the_first_index_on_ties():
    from medseg.core.targets import class_indices

    probs = torch.rand(2, 5, 6, 7, 8)
    probs[:, 3] = probs[:, 1]  # exact ties between two classes
    probs[0, :, :2] = 0  # all classes tied: a zero-padded border
    assert torch.equal(class_indices(probs), probs.argmax(dim=1, keepdim=True))
    assert class_indices(probs)[0, :, :2].eq(0).all()


def test_window_aligned_box_gives_the_whole_scan_windows_where_there_is_signal():
    from monai.inferers import SlidingWindowInferer

    from medseg.inference.sliding_window import window_aligned_box

    torch.manual_seed(0)
    image = torch.zeros(1, 1, 70, 50, 40)
    image[..., 30:45, 10:20, 5:30] = torch.rand(15, 10, 25)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 4, 5, padding=2), torch.nn.ReLU(), torch.nn.Conv3d(4, 2, 5, padding=2))
    inferer = SlidingWindowInferer(roi_size=(16, 16, 16), overlap=0.25, mode="gaussian")
    with torch.no_grad():
        full = inferer(image, model)
        box = window_aligned_box(image[0, 0] != 0, (16, 16, 16), 0.25)
        assert any(b.stop - b.start < n for b, n in zip(box, image.shape[2:]))  # windows were skipped
        part = inferer(image[(slice(None), slice(None), *box)], model)
        tight = inferer(image[..., 28:47, 8:22, 3:32], model)  # a foreground crop moves the tiling
    signal = (slice(30, 45), slice(10, 20), slice(5, 30))
    inside_box = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(signal, box))
    assert torch.allclose(part[(..., *inside_box)], full[(..., *signal)], atol=1e-6)
    assert not torch.allclose(tight[..., 2:17, 2:12, 2:27], full[(..., *signal)], atol=1e-4)
