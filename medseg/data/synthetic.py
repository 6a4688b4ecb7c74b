"""Synthetic CT task in the real MSD layout, so the whole pipeline runs without a download.

Each case is an abdomen-like CT volume in Hounsfield units: air around an elliptic body (fat rim,
soft tissue), a spine, a large lobed "liver" on the patient's right (label 1) and a smaller
"spleen" on the left (label 2). Organ size and position, voxel spacing (anisotropic) and the
stored orientation vary per case, so orientation/spacing handling in the pipeline is exercised.
Everything is a function of the seed.

Run as ``python -m medseg.data.synthetic --output data/ --cases 20 --seed 0``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel import orientations
from scipy import ndimage

TASK_NAME = "Task99_Synthetic"
LABELS = {"0": "background", "1": "liver", "2": "spleen"}
# Stored orientations: real scanners write LPS- and RAS-like and flipped-slice volumes.
ORIENTATIONS = (("R", "A", "S"), ("L", "P", "S"), ("L", "A", "S"), ("R", "P", "I"), ("P", "L", "S"))
FIELD_OF_VIEW_MM = np.array([170.0, 150.0, 120.0])


def _ellipsoid(grid: tuple[np.ndarray, ...], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1.0


def make_case(seed: int, shape: tuple[int, int, int] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Builds one case.

    Args:
        seed: case seed; equal seeds give identical cases.
        shape: fixed voxel grid (X, Y, Z) over the field of view, e.g. 512x512x600 for the
            large-data benchmark; the spacing follows from it. Default: random spacing like CT.

    Returns:
        ``(image, label, affine)``: int16 HU volume (X, Y, Z), uint8 label volume of the same
        shape with values {0, 1, 2}, and the 4x4 voxel-to-world (RAS mm) affine of both.
    """
    rng = np.random.default_rng(seed)
    spacing = np.array([rng.uniform(1.4, 1.9), 0.0, rng.uniform(2.5, 4.0)])
    spacing[1] = spacing[0]  # in-plane pixels are square, slices thicker: like real CT
    fixed_grid = shape is not None
    if not fixed_grid:
        shape = np.round(FIELD_OF_VIEW_MM * rng.uniform(0.92, 1.08, 3) / spacing).astype(int)
    else:
        shape = np.asarray(shape, dtype=int)
        spacing = large_task_spacing(shape)
    # World coordinates (mm, RAS) of every voxel centre, volume centred on the origin.
    axes = [(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    grid = np.meshgrid(*axes, indexing="ij", sparse=True)
    x, y, z = grid

    image = np.full(shape, -1000.0, dtype=np.float32 if fixed_grid else np.float64)  # float32 halves big cases
    body_radii = np.array([rng.uniform(72, 82), rng.uniform(58, 68)])
    body = ((x / body_radii[0]) ** 2 + (y / body_radii[1]) ** 2) <= 1.0
    inner = ((x / (body_radii[0] - 9)) ** 2 + (y / (body_radii[1] - 9)) ** 2) <= 1.0
    body = np.broadcast_to(body, shape)
    image[body] = -100.0  # subcutaneous fat
    image[np.broadcast_to(inner, shape)] = 40.0  # soft tissue
    spine = ((x / 12.0) ** 2 + ((y + body_radii[1] - 25) / 12.0) ** 2) <= 1.0
    image[np.broadcast_to(spine, shape)] = 500.0

    label = np.zeros(shape, dtype=np.uint8)
    # Liver: union of two ellipsoids on the patient's right (RAS x < 0), anterior-lateral.
    liver_center = np.array([rng.uniform(-40, -28), rng.uniform(-5, 12), rng.uniform(-10, 15)])
    liver = _ellipsoid(grid, liver_center, rng.uniform([30, 30, 28], [42, 40, 40]))
    lobe_center = liver_center + np.array([rng.uniform(18, 30), rng.uniform(5, 15), rng.uniform(-12, 0)])
    liver |= _ellipsoid(grid, lobe_center, rng.uniform([16, 14, 14], [24, 20, 22]))
    liver &= np.broadcast_to(inner, shape)
    # Spleen: a smaller ellipsoid on the patient's left (x > 0), posterior.
    spleen_center = np.array([rng.uniform(38, 50), rng.uniform(-30, -18), rng.uniform(-5, 20)])
    spleen = _ellipsoid(grid, spleen_center, rng.uniform([15, 12, 20], [21, 17, 30]))
    spleen &= np.broadcast_to(inner, shape) & ~liver

    label[liver] = 1
    label[spleen] = 2
    image[liver] = rng.uniform(95, 115)
    image[spleen] = rng.uniform(125, 145)
    image = ndimage.gaussian_filter(image, sigma=0.8)  # partial-volume edges
    image += rng.normal(0.0, 18.0, shape).astype(image.dtype)  # scanner noise
    image = np.clip(np.round(image), -1024, 3071).astype(np.int16)

    affine = np.diag([*spacing, 1.0])
    affine[:3, 3] = -(shape - 1) / 2 * spacing + rng.uniform(-30, 30, 3)
    return _reorient(image, label, affine, ORIENTATIONS[int(rng.integers(len(ORIENTATIONS)))])


def large_task_spacing(shape: tuple[int, int, int] | np.ndarray) -> np.ndarray:
    """Voxel spacing (mm) of cases generated on a fixed grid: the field of view over the grid."""
    return FIELD_OF_VIEW_MM / np.asarray(shape, dtype=float)


def _reorient(
    image: np.ndarray, label: np.ndarray, affine: np.ndarray, axcodes: tuple[str, str, str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stores the RAS-ordered arrays in another voxel orientation, keeping world geometry."""
    transform = orientations.ornt_transform(orientations.axcodes2ornt("RAS"), orientations.axcodes2ornt(axcodes))
    new_affine = affine @ orientations.inv_ornt_aff(transform, image.shape)
    return (
        orientations.apply_orientation(image, transform),
        orientations.apply_orientation(label, transform),
        new_affine,
    )


def _save(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    img = nib.Nifti1Image(np.ascontiguousarray(array), affine)
    img.header.set_xyzt_units("mm", "sec")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def generate_task(output: str | Path, cases: int = 20, test_cases: int = 4, seed: int = 0,
                  shape: tuple[int, int, int] | None = None, task_name: str = TASK_NAME) -> Path:
    """Writes ``<output>/<task_name>`` (imagesTr, labelsTr, imagesTs, dataset.json).

    The folder is written under a temporary name and renamed at the end, so an interrupted
    generation never leaves a task that looks complete.

    Returns:
        The task folder.
    """
    output = Path(output)
    task_dir = output / task_name
    tmp_dir = output / f".{task_name}.partial"
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (tmp_dir / sub).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for i in range(cases + test_cases):
        image, label, affine = make_case(seed * 100_003 + i, shape)
        name = f"synthetic_{i:03d}.nii.gz"
        if i < cases:
            _save(image, affine, tmp_dir / "imagesTr" / name)
            _save(label, affine, tmp_dir / "labelsTr" / name)
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            _save(image, affine, tmp_dir / "imagesTs" / name)
            test.append(f"./imagesTs/{name}")
    dataset = {
        "name": "Synthetic",
        "description": "Synthetic abdomen-like CT: liver and spleen (medseg generator)",
        "reference": "medseg.data.synthetic",
        "licence": "CC0 1.0",
        "release": f"1.0 seed={seed}",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": LABELS,
        "numTraining": cases,
        "numTest": test_cases,
        "training": training,
        "test": test,
    }
    (tmp_dir / "dataset.json").write_text(json.dumps(dataset, indent=4))
    tmp_dir.rename(task_dir)
    return task_dir


def ensure_task(output: str | Path, cases: int = 20, test_cases: int = 4, seed: int = 0,
                shape: tuple[int, int, int] | None = None, task_name: str = TASK_NAME) -> Path:
    """Returns the synthetic task folder, generating it on first use."""
    task_dir = Path(output) / task_name
    if not (task_dir / "dataset.json").is_file():
        generate_task(output, cases=cases, test_cases=test_cases, seed=seed, shape=shape, task_name=task_name)
    return task_dir


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="data", help="folder that receives Task99_Synthetic/")
    parser.add_argument("--cases", type=int, default=20, help="labelled training cases")
    parser.add_argument("--test-cases", type=int, default=4, help="unlabelled cases in imagesTs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    task_dir = Path(args.output) / TASK_NAME
    if task_dir.exists():
        raise SystemExit(f"error: {task_dir} already exists; delete it to regenerate")
    print(generate_task(args.output, args.cases, args.test_cases, args.seed))


if __name__ == "__main__":
    main()
