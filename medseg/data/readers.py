"""Reading images and label maps: MONAI's loaders plus the formats medseg adds to them.

``image_loader`` is the one ``LoadImaged`` of every preprocessing chain (training, validation,
prediction); medseg's own readers are registered on it, so MONAI tries them first and only for the
suffixes they claim, and every other file goes to MONAI's reader for its suffix as before.
``read_label_map`` is what evaluation reads a label map with, whatever its format (a DICOM SEG
included, placed on the grid of the series it references).
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from monai.data import ImageReader
from monai.transforms import LoadImaged

from medseg.core.errors import MedsegError
from medseg.data.dicom_reader import DicomSeriesReader

# With pydicom installed (medseg's DICOM dependency), MONAI >= 1.6 builds its GPU DICOM reader in every
# LoadImage and warns, each time, that nvImageCodec is absent; medseg reads DICOM with DicomSeriesReader.
logging.getLogger("monai.data.nvimgcodec_pydicom_plugin").setLevel(logging.ERROR)
warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader: nvImageCodec decoder plugin did not register")


def medseg_readers(kind: str = "image", channels: int | None = None) -> list[ImageReader]:
    """Readers medseg adds to MONAI's, tried first for the suffixes they claim.

    Args:
        kind: ``image`` or ``mask``: what the files hold (masks are checked more strictly).
        channels: the channels the network takes, for readers that can adapt (a grey 2D image
            for a colour network).
    """
    from medseg.data.images2d import Image2DReader

    # DICOM series folders: checked and ordered before ITK reads them; 2D pictures: rows first, one slice
    return [DicomSeriesReader(), Image2DReader(kind, channels)]


def image_loader(keys: Sequence[str], kind: str = "image", channels: int | None = None) -> LoadImaged:
    """``LoadImaged`` (channel first, image only) that also reads medseg's formats."""
    load = LoadImaged(keys=list(keys), ensure_channel_first=True, image_only=True)
    for reader in medseg_readers(kind, channels):
        load._loader.register(reader)
    return load


def load_array(path: str | Path, kind: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """Voxels (channels last, as stored: ``(X, Y, Z)`` or ``(X, Y, Z, C)``; a 2D image as a one-slice
    volume) and the voxel-to-world affine of one file, through the readers training uses."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True)
    for reader in medseg_readers(kind):
        load.register(reader)
    data = load(str(path))
    return np.asarray(data), np.asarray(data.affine, dtype=np.float64)


@dataclass
class LabelMap:
    """A label map as evaluation sees it: integer class values on the file's own grid."""

    array: np.ndarray  # int64, (X, Y, Z); 2D maps have a singleton third axis
    affine: np.ndarray  # 4x4 voxel-to-world (RAS, mm)

    @property
    def spacing(self) -> tuple[float, ...]:
        return tuple(float(v) for v in np.sqrt((self.affine[:3, :3] ** 2).sum(0)))


def integral_labels(values: np.ndarray, where: str | Path, tolerance: float = 0.01) -> np.ndarray:
    """Rounds a stored label map to class indices; refuses values that are not near an integer.

    A label map saved as float (0.9999, 1.9999 after a resampling or a float export) is read as
    the nearest class, never truncated; a map with values far from any integer is a probability
    or intensity map, not labels.

    Raises:
        MedsegError: naming the file and an offending value.
    """
    array = np.asarray(values)
    if np.issubdtype(array.dtype, np.integer) or array.dtype == bool:
        return array.astype(np.int64)
    if not np.isfinite(array).all():
        raise MedsegError(f"{where}: holds NaN/Inf values; a label map holds class indices")
    rounded = np.rint(array)
    off = np.abs(array - rounded)
    if off.max(initial=0) > tolerance:
        worst = float(array.flat[int(np.argmax(off))])
        raise MedsegError(f"{where}: holds non-integer values (e.g. {worst:g}); a label map holds class indices, "
                          "not probabilities: write argmax labels")
    return rounded.astype(np.int64)


def read_label_map(path: str | Path, series_dirs: Sequence[str | Path] = ()) -> LabelMap:
    """A label map file (NIfTI, a DICOM SEG, or any format MONAI reads), rounded to class indices.

    Args:
        series_dirs: where a DICOM SEG's source series may be, besides the SEG's own folder; the
            SEG is read onto that series' grid (:mod:`medseg.data.dicom_seg`).

    Raises:
        MedsegError: the file cannot be read, or holds values that are not class indices.
    """
    path = Path(path)
    try:
        if path.suffix.lower() == ".dcm":
            from medseg.data.dicom_seg import read_segmentation  # highdicom: imported when a SEG is read

            array, affine = read_segmentation(path, series_dirs)
        elif path.name.endswith((".nii", ".nii.gz")):
            import nibabel as nib

            img = nib.load(str(path))
            array, affine = np.asanyarray(img.dataobj), np.asarray(img.affine, dtype=np.float64)
        else:
            loaded = image_loader(["label"], kind="mask")({"label": str(path)})["label"]  # 2D 0/255 masks: 0/1
            array, affine = np.asarray(loaded[0]), np.asarray(loaded.affine, dtype=np.float64)
    except MedsegError:
        raise
    except Exception as err:  # readers raise many types for truncated or foreign files
        raise MedsegError(f"{path}: unreadable ({type(err).__name__}: {str(err)[:100]})") from err
    return LabelMap(integral_labels(array, path), affine)
