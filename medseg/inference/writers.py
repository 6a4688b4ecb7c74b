"""How ``medseg.predict`` writes a label map: one writer per output format (``output_format=``).

A writer gets the prediction in the input's own voxel grid and the input it came from, so a format
that must point back at its source (a DICOM Segmentation referencing the scan's instances) can.
Every writer writes to a temporary name and renames, so an interrupted run leaves nothing that
looks complete. ``auto`` picks the format that matches the input: PNG label maps for 2D images,
NIfTI for everything else; ``nrrd`` keeps the input's space directions and origin in NRRD; the
DICOM SEG writer lives in :mod:`medseg.inference.dicom_seg`. A writer that cannot write for some
inputs defines ``check_source(source)``, which ``medseg.predict`` calls before predicting the case.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import nibabel as nib
import numpy as np

from medseg.core.imagefiles import is_image_2d


class LabelWriter(Protocol):
    """Writes one case's label map; returns the files written (the label map first)."""

    def __call__(self, case: str, source: str | list[str], labels: np.ndarray, affine: np.ndarray,
                 label_names: dict[int, str], output: Path) -> list[Path]: ...


def save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Writes atomically (temp then rename), so an interrupted run leaves no truncated output."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    tmp = path.with_name(f".{path.name}.tmp.nii.gz")
    nib.save(img, str(tmp))
    tmp.replace(path)


class NiftiWriter:
    """``<case>.nii.gz`` with the input's shape and affine (uint8 class indices)."""

    suffix = ".nii.gz"

    def __call__(self, case, source, labels, affine, label_names, output):
        path = output / f"{case}{self.suffix}"
        save_nifti(labels, affine, path)
        return [path]


class PngWriter:
    """``<case>.png``: the 2D label map with the input image's rows and columns (pixel for pixel).

    Args:
        mask_values: ``index`` writes class indices (nnU-Net's convention); ``255`` writes a binary
            map as 0/255, the way most 2D datasets store masks.
    """

    suffix = ".png"

    def __init__(self, mask_values: str | int = "index"):
        self.scale = 255 if str(mask_values) == "255" else 1

    def __call__(self, case, source, labels, affine, label_names, output):
        from PIL import Image

        plane = np.asarray(labels)
        plane = plane.reshape(plane.shape[:2]) if plane.ndim == 3 and plane.shape[2] == 1 else plane
        if self.scale != 1 and int(plane.max(initial=0)) > 1:
            raise ValueError(f"mask_values=255 writes binary masks, but {case} holds classes up to {int(plane.max())}")
        path = output / f"{case}{self.suffix}"
        tmp = path.with_name(f".{path.name}.tmp.png")
        Image.fromarray((plane * self.scale).astype(np.uint8), mode="L").save(tmp)
        tmp.replace(path)
        return [path]


class AutoWriter:
    """The input's own kind: PNG for 2D images (PNG, JPEG, TIFF, BMP), NIfTI for volumes."""

    def __init__(self, mask_values: str | int = "index"):
        self.png, self.nifti = PngWriter(mask_values), NiftiWriter()

    def __call__(self, case, source, labels, affine, label_names, output):
        first = source if isinstance(source, str) else source[0]
        writer = self.png if is_image_2d(first) else self.nifti
        return writer(case, source, labels, affine, label_names, output)


class NrrdWriter:
    """``<case>.nrrd``: the label map with the input's space directions and origin (uint8, gzip).

    Written by MONAI's ``ITKWriter``, which turns the RAS affine back into the LPS ``space
    directions`` / ``space origin`` that ITK and 3D Slicer read (and write: an NRRD input keeps its
    geometry through predict).
    """

    suffix = ".nrrd"

    def __call__(self, case, source, labels, affine, label_names, output):
        from monai.data import ITKWriter

        path = output / f"{case}{self.suffix}"
        tmp = path.with_name(f".{path.name}.tmp.nrrd")  # ITK picks the format by the suffix
        writer = ITKWriter(output_dtype=np.uint8, affine_lps_to_ras=True)
        writer.set_data_array(np.asarray(labels), channel_dim=None)
        writer.set_metadata({"affine": affine, "original_affine": affine}, resample=False)
        writer.write(str(tmp), compression=True)
        tmp.replace(path)
        return [path]
