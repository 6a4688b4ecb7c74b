"""``output_format=dicom-seg``: a DICOM Segmentation per input series, written with highdicom.

A SEG is drawn on its source series: each frame references the slice it segments, and the patient
and study identifiers are the source's (highdicom copies them, as the standard requires). So it
needs a DICOM series as input; any other input is refused before its prediction is computed.
The label map arrives in the reader's grid (columns, rows, slices in the order of
:class:`medseg.data.dicom_series.Series`), so slice ``k`` of it is frame ``k`` of the source.
"""

from __future__ import annotations

import logging
import platform
import warnings
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Mapping

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from medseg.core.errors import MedsegError
from medseg.data.dicom_series import Series, is_dicom_source, load_series

logging.getLogger("highdicom").setLevel(logging.WARNING)  # at INFO it logs every module it copies, per case
PRIVATE_SCHEME = "99MEDSEG"  # a private coding scheme (DICOM PS3.16 "99" prefix): the checkpoint's own label names


def _medseg_version() -> str:
    try:
        return version("medseg")
    except PackageNotFoundError:
        return "unknown"


def _concept(spec: Any, default: tuple[str, str]) -> hd.sr.CodedConcept:
    """``[value, scheme, meaning]`` from the config, else ``(value, meaning)`` in medseg's private scheme."""
    if spec:
        value, scheme, meaning = (str(v) for v in spec)
        return hd.sr.CodedConcept(value, scheme, meaning)
    return hd.sr.CodedConcept(default[0], PRIVATE_SCHEME, default[1])


class DicomSegWriter:
    """``<case>.dcm``: a binary DICOM SEG with one segment per foreground label of the checkpoint.

    Segment ``n`` is the ``n``-th foreground label in value order (label ``n`` itself for labels
    ``1..N``), named after it, empty where nothing was found. Property codes default to the private
    scheme ``99MEDSEG`` (type: the label name; category: "medseg label"); ``codes`` maps a label name
    to standard ones.

    Args:
        series_description: the SEG series' description.
        codes: ``{label name: {category: [value, scheme, meaning], type: [value, scheme, meaning]}}``,
            e.g. ``liver: {category: [91723000, SCT, Anatomical Structure], type: [10200004, SCT, Liver]}``.
    """

    suffix = ".dcm"

    def __init__(self, series_description: str = "medseg segmentation", codes: Mapping[str, Any] | None = None):
        self.series_description = series_description
        self.codes = dict(codes or {})

    def check_source(self, source: str | list[str]) -> None:
        """Refuses an input that is not a DICOM series, before anything is predicted for it."""
        first = source if isinstance(source, str) else source[0]
        if not isinstance(source, str) or not is_dicom_source(first):
            raise MedsegError(f"{first}: output_format=dicom-seg needs a DICOM series input (a SEG references the "
                              "slices it segments, and this input has none); use output_format=nifti or nrrd")

    def segments(self, label_names: Mapping[int, str]) -> list[hd.seg.SegmentDescription]:
        algorithm = hd.AlgorithmIdentificationSequence(
            name="medseg", version=_medseg_version(), family=codes.cid7162.ArtificialIntelligence)
        described = []
        for number, value in enumerate(sorted(v for v in label_names if int(v) != 0), start=1):
            name = str(label_names[value])
            spec = self.codes.get(name) or {}
            described.append(hd.seg.SegmentDescription(
                segment_number=number, segment_label=name,
                segmented_property_category=_concept(spec.get("category"), ("label", "medseg label")),
                segmented_property_type=_concept(spec.get("type"), (name, name)),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm))
        return described

    def __call__(self, case: str, source: str | list[str], labels: np.ndarray, affine: np.ndarray,
                 label_names: Mapping[int, str], output: Path) -> list[Path]:
        self.check_source(source)
        series = load_series(source)
        first = series.headers[0]
        grid = (int(first.Columns), int(first.Rows), len(series.files))
        if tuple(labels.shape) != grid:
            raise MedsegError(f"{source}: a label map of shape {tuple(labels.shape)} is not on the series' grid {grid} "
                              "(columns, rows, slices); a SEG is written in the source's own grid")
        foreground = sorted(int(v) for v in label_names if int(v) != 0)
        unknown = sorted(set(np.unique(labels).tolist()) - {0, *foreground})
        if unknown:
            raise MedsegError(f"{source}: label value(s) {unknown} have no name among the checkpoint's labels {dict(label_names)}")
        lookup = np.zeros(max([0, *foreground]) + 1, dtype=np.uint8 if len(foreground) < 256 else np.uint16)
        lookup[foreground] = np.arange(1, len(foreground) + 1)
        frames = np.ascontiguousarray(np.transpose(lookup[labels], (2, 1, 0)))  # (slices, rows, columns): frame k = file k
        with warnings.catch_warnings():  # pydicom questions the source's own PatientName ("JANCT000"): copied as it is
            warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
            seg = self.segmentation(series, frames, label_names)
        path = output / f"{case}{self.suffix}"
        tmp = path.with_name(f".{path.name}.tmp")
        seg.save_as(tmp)
        tmp.replace(path)
        return [path]

    def segmentation(self, series: Series, frames: np.ndarray, label_names: Mapping[int, str]) -> hd.seg.Segmentation:
        """The SEG object of ``frames`` (segment numbers, one frame per file of ``series``, in its order)."""
        datasets = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
        first = datasets[0]
        # An empty SpecificCharacterSet (GE's CT has one) means the default repertoire, as an absent one does;
        # highdicom copies the source's value and would reject the empty string.
        charset = {} if first.get("SpecificCharacterSet") else {"specific_character_set": None}
        return hd.seg.Segmentation(
            source_images=datasets,
            pixel_array=frames,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=self.segments(label_names),
            series_instance_uid=hd.UID(),
            series_number=int(first.get("SeriesNumber") or 0) + 1000,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="medseg",
            manufacturer_model_name="medseg.predict",
            software_versions=_medseg_version(),
            device_serial_number=platform.node() or "unknown",
            series_description=self.series_description,
            content_label="MEDSEG",
            content_description=f"medseg prediction of {series.name}"[:64],
            **charset,
        )
