"""How image files are named: the suffixes medseg reads and the case id a file name stands for.

Shared by the datalists, input discovery for prediction and evaluation, so a case is called the
same everywhere.
"""

from __future__ import annotations

from pathlib import Path

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd", ".nhdr")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
IMAGE_SUFFIXES = VOLUME_SUFFIXES + IMAGE_2D_SUFFIXES
DICOM_SUFFIX = ".dcm"  # a single DICOM object: a slice, or a DICOM SEG label map (evaluate)


def is_image_2d(path: str | Path) -> bool:
    """A 2D picture format (PNG, JPEG, TIFF, BMP), read as a one-slice volume."""
    return str(path).lower().endswith(IMAGE_2D_SUFFIXES)


def case_id(path: str | Path) -> str:
    """File name without its image suffix (``liver_3.nii.gz`` -> ``liver_3``, ``liver_3.dcm`` ->
    ``liver_3``); folder name for DICOM series."""
    name = Path(str(path).strip()).name
    for suffix in (*IMAGE_SUFFIXES, DICOM_SUFFIX):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
