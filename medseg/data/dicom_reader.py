"""Reading a DICOM series as MONAI's ITK reader reads a scan, after medseg has checked it.

MONAI's own ITK path reads whatever GDCM groups in a folder: two series mixed, a missing slice
bridged by a wrong spacing, two stacks of one series interleaved. Here the series is checked and
ordered first (:mod:`medseg.data.dicom_series`), ITK (GDCM) decodes the pixels in the order along the
slice normal (the order ITK derives its geometry from), and MONAI's ``ITKReader.get_data`` gives the
array and RAS affine in exactly the convention of every other file medseg reads. A series acquired
against the normal is then turned to its acquisition (InstanceNumber) order, as dicom2nifti writes it:
the same voxels and world positions, the affine of the reference conversion.
"""

from __future__ import annotations

from typing import Any, Sequence

import itk
import numpy as np
from monai.data import ITKReader
from monai.utils import ensure_tuple

from medseg.data.dicom_series import Series, is_dicom_source, load_series


class DicomSeriesReader(ITKReader):
    """A MONAI ``ImageReader`` for one DICOM image series.

    Takes a folder holding one image series, ``<folder>#series=<SeriesInstanceUID>``, or a single
    ``.dcm`` slice. ``get_data`` returns ``(X, Y, Z)`` (columns, rows, slices) and the RAS affine,
    as ``monai.data.ITKReader`` does for any image.
    """

    def verify_suffix(self, filename: Sequence[str] | str) -> bool:
        names = ensure_tuple(filename)
        return len(names) == 1 and is_dicom_source(str(names[0]))

    def read(self, data: Sequence[str] | str, **kwargs: Any) -> tuple[Any, Series]:
        (name,) = ensure_tuple(data)
        series = load_series(str(name))
        files = [str(f) for f in (series.files if series.along_normal else series.files[::-1])]
        pixel_type = itk.F if series.varying_rescale else None
        image = itk.imread(files if len(files) > 1 else files[0], pixel_type)
        return image, series

    def get_data(self, img: tuple[Any, Series]) -> tuple[np.ndarray, dict]:
        image, series = img
        array, meta = super().get_data(image)
        if not series.along_normal:  # ITK read along the normal: flip the slice axis back, same world positions
            array = np.ascontiguousarray(array[:, :, ::-1])
            for key in ("affine", "original_affine"):
                affine = np.array(meta[key], dtype=np.float64)
                affine[:3, 3] += (array.shape[2] - 1) * affine[:3, 2]
                affine[:3, 2] *= -1
                meta[key] = affine
        return array, meta
