"""A DICOM Segmentation (SEG) read as a label map on the grid of the series it was drawn on.

A SEG stores frames per source slice, not a volume: highdicom returns the segment numbers per source
instance, and the source series itself, read by :class:`medseg.data.dicom_reader.DicomSeriesReader`,
gives the grid and affine. So a SEG and a NIfTI/NRRD prediction of that series share one grid and
can be scored against each other. Segment numbers become label values (segment 1 -> 1, ...).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

import highdicom as hd
import numpy as np
import pydicom

from medseg.core.errors import MedsegError
from medseg.data.dicom_reader import DicomSeriesReader
from medseg.data.dicom_series import Series, find_series

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"


def source_series(seg: pydicom.Dataset, path: Path, series_dirs: Iterable[str | Path] = ()) -> Series:
    """The one image series ``seg`` references, looked up beside the SEG and in ``series_dirs``."""
    referenced = seg.get("ReferencedSeriesSequence") or []
    if len(referenced) != 1:
        raise MedsegError(f"{path}: references {len(referenced)} series; medseg reads a SEG drawn on one series")
    return find_series(str(referenced[0].SeriesInstanceUID), [path.parent, *series_dirs])


def _frame_item(seg: pydicom.Dataset, frame: pydicom.Dataset, sequence: str) -> pydicom.Dataset | None:
    """A functional group item of one frame, per-frame or shared."""
    for group in (frame, seg.SharedFunctionalGroupsSequence[0]):
        if sequence in group:
            return group[sequence].value[0]
    return None


def check_frames_on_source(seg: pydicom.Dataset, series: Series, path: Path) -> None:
    """Every frame lies exactly on the slice it was derived from (position, orientation, pixel size).

    Many SEGs (dcmqi's among them) leave SpatialLocationsPreserved out, and highdicom then refuses to
    index frames by their source; this check is what allows it, and a SEG resampled onto another
    grid is refused rather than read onto the wrong voxels.

    Raises:
        MedsegError: naming the first frame off its source slice.
    """
    first = series.headers[0]
    on_grid = {str(h.SOPInstanceUID): np.array(h.ImagePositionPatient, dtype=float) for h in series.headers}
    orientation = np.array(first.ImageOrientationPatient, dtype=float)
    spacing = np.array(first.PixelSpacing, dtype=float)
    same_size = (int(seg.Rows), int(seg.Columns)) == (int(first.Rows), int(first.Columns))
    for number, frame in enumerate(seg.PerFrameFunctionalGroupsSequence, start=1):
        plane = _frame_item(seg, frame, "PlaneOrientationSequence")
        measures = _frame_item(seg, frame, "PixelMeasuresSequence")
        position = _frame_item(seg, frame, "PlanePositionSequence")
        sources = [str(item.ReferencedSOPInstanceUID) for derivation in frame.get("DerivationImageSequence", [])
                   for item in derivation.SourceImageSequence]
        fits = (same_size and plane is not None and measures is not None and position is not None
                and np.allclose(np.array(plane.ImageOrientationPatient, dtype=float), orientation, atol=1e-4)
                and np.allclose(np.array(measures.PixelSpacing, dtype=float), spacing, rtol=1e-4)
                and all(u in on_grid and np.allclose(on_grid[u], np.array(position.ImagePositionPatient, dtype=float),
                                                     atol=1e-2) for u in sources) and sources)
        if not fits:
            raise MedsegError(f"{path}: frame {number} does not lie on the source slice it references in "
                              f"{series.source} (position, orientation or pixel size); medseg reads SEGs drawn on "
                              "the source series' own grid")


def read_segmentation(path: str | Path, series_dirs: Iterable[str | Path] = ()) -> tuple[np.ndarray, np.ndarray]:
    """Segment numbers ``(X, Y, Z)`` on the source series' grid, and that grid's RAS affine.

    Args:
        path: a DICOM SEG file.
        series_dirs: folders (searched with their subfolders) that may hold the source series,
            besides the SEG's own folder.

    Raises:
        MedsegError: not a SEG, its source series not found, or segments that overlap (a label
            map holds one class per voxel).
    """
    path = Path(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    if header.get("SOPClassUID") != SEGMENTATION_STORAGE:
        kind = pydicom.uid.UID(header.SOPClassUID).name if "SOPClassUID" in header else "no SOP class"
        raise MedsegError(f"{path}: not a DICOM Segmentation ({kind}); a label map in DICOM is a SEG")
    seg = hd.seg.segread(path)
    series = source_series(seg, path, series_dirs)
    reader = DicomSeriesReader()
    image, meta = reader.get_data(reader.read(series.source))
    check_frames_on_source(seg, series, path)
    try:
        frames = seg.get_pixels_by_source_instance(
            [str(h.SOPInstanceUID) for h in series.headers], combine_segments=True,
            assert_missing_frames_are_empty=True, ignore_spatial_locations=True, dtype=np.uint16)
    except RuntimeError as err:  # highdicom: overlapping segments cannot be combined
        raise MedsegError(f"{path}: {str(err)[:120]}; a label map holds one class per voxel: "
                          "write non-overlapping segments") from err
    labels = np.transpose(frames, (2, 1, 0))  # (slices, rows, columns) -> (columns, rows, slices) = X, Y, Z
    if labels.shape != image.shape[:3]:
        raise MedsegError(f"{path}: frames of {frames.shape[1:]} pixels do not fit the source series {series.source} "
                          f"({image.shape[:3]})")
    return labels, np.asarray(meta["affine"], dtype=np.float64)
