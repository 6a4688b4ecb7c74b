"""Clinical formats on real files: DICOM series in (checked against dicom2nifti's conversions),
DICOM SEG out and in (checked against dcmqi's SEG of the same CT), NRRD both ways.

The scanner data live in ../shared/data (dcmqi, dicom2nifti and pyradiomics test data); every
test here reads them and skips with the reason where they are absent.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import highdicom as hd
import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from nibabel import orientations

from medseg.core.config import compose
from medseg.core.errors import MedsegError
from medseg.data.readers import LabelMap, image_loader, read_label_map
from medseg.evaluate import evaluate
from medseg.inference.cases import discover_cases
from medseg.inference.dicom_seg import DicomSegWriter
from medseg.inference.writers import NrrdWriter
from medseg.predict import predict
from tests.conftest import SHARED_DATA, requires_shared

DICOM = SHARED_DATA / "dicom"
CT = DICOM / "ct-3slice_dcmqi"
MR = DICOM / "mr_dicom2nifti"
NRRD = SHARED_DATA / "nrrd"
VENDORS = ["ge", "philips", "siemens"]


def read(source: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` array and RAS affine, through the loader every preprocessing chain uses."""
    image = image_loader(["image"])({"image": str(source)})["image"]
    return np.asarray(image[0]), np.asarray(image.affine, dtype=np.float64)


def canonical(label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    """The map in RAS voxel order and its affine: maps of one grid stored in two orders compare equal."""
    transform = orientations.ornt_transform(orientations.io_orientation(label_map.affine), orientations.axcodes2ornt("RAS"))
    return (orientations.apply_orientation(label_map.array, transform),
            label_map.affine @ orientations.inv_ornt_aff(transform, label_map.array.shape))


def onto(label_map: LabelMap, affine: np.ndarray) -> np.ndarray:
    """``label_map`` in the voxel order of another grid that covers the same voxels (flips/permutations only)."""
    transform = orientations.ornt_transform(orientations.io_orientation(label_map.affine), orientations.io_orientation(affine))
    moved = orientations.apply_orientation(label_map.array, transform)
    assert np.allclose(label_map.affine @ orientations.inv_ornt_aff(transform, label_map.array.shape), affine, atol=1e-3)
    return moved


def copy_series(src: Path, dst: Path, prefix: str = "") -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(f, dst / f"{prefix}{f.name}")) for f in sorted(src.glob("*.dcm"))]


def predict_cfg(ckpt: Path, source: Path, output: Path, *overrides: str):
    return compose("predict", [f"ckpt={ckpt}", f"input={source}", f"output={output}", "save_overlays=false",
                               "tta=false", *overrides])


# --- DICOM series in --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("vendor", VENDORS)
def test_mr_series_read_with_the_geometry_and_voxels_of_dicom2nifti(vendor):
    series = requires_shared(MR / vendor / "anatomical" / "001")
    reference = nib.load(str(series.parent / "001_ground_truth.nii.gz"))
    array, affine = read(series)
    assert np.abs(affine - reference.affine).max() < 1e-3  # orientation, spacing, origin and slice order
    assert array.shape == reference.shape and np.array_equal(array, np.asarray(reference.dataobj))


def test_ct_series_reads_with_its_pixel_spacing_and_slice_step():
    array, affine = read(requires_shared(CT))  # the folder also holds dcmqi's SEG: not an image, not read
    assert array.shape == (512, 512, 3)
    assert np.allclose(np.sqrt((affine[:3, :3] ** 2).sum(0)), [0.810547, 0.810547, 1.0], atol=1e-6)
    first = pydicom.dcmread(CT / "01.dcm", stop_before_pixels=True)
    assert np.allclose(affine[:3, 3], np.array(first.ImagePositionPatient, float) * [-1, -1, 1])  # acquisition order, LPS -> RAS


def test_a_folder_of_two_series_gives_one_case_each_never_mixed(tiny_checkpoint, tmp_path):
    requires_shared(MR)
    mixed = tmp_path / "scans" / "mixed"
    copy_series(MR / "ge" / "anatomical" / "001", mixed)       # SeriesNumber 4
    copy_series(MR / "philips" / "anatomical" / "001", mixed)  # SeriesNumber 401
    cases, skipped = discover_cases(mixed)
    assert sorted(cases) == ["mixed_4", "mixed_401"] and skipped == []
    out = tmp_path / "preds"
    result = predict(predict_cfg(tiny_checkpoint, mixed, out))
    assert result["failed"] == [] and sorted(Path(p).name for p in result["written"]) == ["mixed_4.nii.gz", "mixed_401.nii.gz"]
    for case, vendor in (("mixed_4", "ge"), ("mixed_401", "philips")):
        reference = nib.load(str(MR / vendor / "anatomical" / "001_ground_truth.nii.gz"))
        written = nib.load(str(out / f"{case}.nii.gz"))
        assert written.shape == reference.shape and np.abs(written.affine - reference.affine).max() < 1e-3

    # SeriesNumber 4 twice (GE and Siemens): the numbers cannot tell them apart, the UIDs can
    same = tmp_path / "same_number"
    copy_series(MR / "ge" / "anatomical" / "001", same, "ge_")
    copy_series(MR / "siemens" / "anatomical" / "001", same, "siemens_")
    uids = {str(pydicom.dcmread(f, stop_before_pixels=True).SeriesInstanceUID) for f in same.iterdir()}
    assert set(discover_cases(same)[0]) == {f"same_number_{uid}" for uid in uids}


def test_a_missing_middle_slice_is_refused_in_one_line(tiny_checkpoint, tmp_path):
    series = tmp_path / "scans" / "gap"
    files = copy_series(requires_shared(MR / "ge" / "anatomical" / "001"), series)
    files[1].unlink()
    out = tmp_path / "preds"
    result = predict(predict_cfg(tiny_checkpoint, series, out))
    assert result["written"] == [] and len(result["failed"]) == 1
    message = result["failed"][0]
    assert "\n" not in message and str(series) in message
    assert "1 slice(s) missing between IM-0001-0112-0001.dcm and IM-0001-0114-0001.dcm" in message
    assert "copy the complete series" in message
    assert not out.exists() or not any(out.glob("*.nii.gz"))


@pytest.mark.filterwarnings("ignore:The string .* is unlikely to represent the intended person name")
def test_series_that_are_not_one_regular_stack_are_refused(tmp_path):
    # Philips: magnitude and phase images of one series at the same four positions
    with pytest.raises(MedsegError, match=r"two images at one position .*SW_M_FFE.*SW_P_FFE.*several stacks"):
        read(requires_shared(MR / "philips" / "anatomical" / "002"))

    # one SeriesInstanceUID, two orientations (as a localizer is stored)
    mixed = tmp_path / "localizer"
    copy_series(MR / "ge" / "anatomical" / "001", mixed, "ge_")
    uid = pydicom.dcmread(next(mixed.iterdir()), stop_before_pixels=True).SeriesInstanceUID
    for f in copy_series(MR / "siemens" / "anatomical" / "001", mixed, "siemens_"):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.save_as(f)
    with pytest.raises(MedsegError, match=r"localizer: series 4 holds slices in several orientations"):
        read(mixed)

    # a multi-frame enhanced object (highdicom's legacy conversion of the real CT slices)
    datasets = [pydicom.dcmread(f) for f in sorted(CT.glob("0*.dcm"))]
    for ds in datasets:
        del ds.SpecificCharacterSet  # empty in the GE files: highdicom wants it absent
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(datasets, series_instance_uid=hd.UID(), series_number=9,
                                                        sop_instance_uid=hd.UID(), instance_number=1)
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "ct.dcm")
    with pytest.raises(MedsegError, match=r"ct.dcm: a multi-frame DICOM object \(Legacy Converted Enhanced CT Image Storage, 3 frames\)"):
        read(tmp_path / "enhanced")

    # a folder holding only a SEG is not a scan
    only_seg = tmp_path / "only_seg"
    only_seg.mkdir()
    shutil.copy(CT / "liver.dcm", only_seg)
    with pytest.raises(MedsegError, match="holds no DICOM image series"):
        discover_cases(only_seg)


# --- DICOM SEG --------------------------------------------------------------------------------------------------

def test_dcmqi_seg_maps_to_the_voxels_of_its_nrrd():
    seg = read_label_map(requires_shared(CT) / "liver.dcm")
    nrrd = read_label_map(CT / "liver_seg.nrrd")
    _, series_affine = read(CT)
    assert seg.array.shape == (512, 512, 3) and np.allclose(seg.affine, series_affine)  # the series' own grid
    (seg_voxels, seg_affine), (nrrd_voxels, nrrd_affine) = canonical(seg), canonical(nrrd)
    assert np.allclose(seg_affine, nrrd_affine, atol=1e-3)
    assert np.array_equal(seg_voxels, nrrd_voxels) and seg_voxels.sum() == 107098


def test_seg_written_by_medseg_reads_back_with_highdicom_and_scores_against_its_nrrd(tmp_path):
    _, series_affine = read(requires_shared(CT))
    liver = onto(read_label_map(CT / "liver_seg.nrrd"), series_affine).astype(np.uint8)
    preds = tmp_path / "preds"
    preds.mkdir()
    codes = {"liver": {"category": [91723000, "SCT", "Anatomical Structure"], "type": [10200004, "SCT", "Liver"]}}
    path = DicomSegWriter(codes=codes)("ct", str(CT), liver, series_affine, {0: "background", 1: "liver"}, preds)[0]
    assert path == preds / "ct.dcm" and [p.name for p in preds.iterdir()] == ["ct.dcm"]  # no temp file left

    seg = hd.seg.segread(path)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in sorted(CT.glob("0*.dcm"))]
    uids = [str(s.SOPInstanceUID) for s in sources]
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == sources[0].SeriesInstanceUID
    assert sorted(r.ReferencedSOPInstanceUID for r in referenced.ReferencedInstanceSequence) == sorted(uids)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in seg.SegmentSequence] == [(1, "liver")]
    assert seg.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"  # SNOMED CT liver
    for key in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyID", "AccessionNumber"):
        assert seg.get(key) == sources[0].get(key), key
    frames = seg.get_pixels_by_source_instance(uids, combine_segments=True)  # highdicom's own reading, by source slice
    # medseg's grid runs in acquisition order (01, 02, 03.dcm): slice k of the map is file k
    assert np.array_equal(frames, np.transpose(liver, (2, 1, 0)))

    # evaluate: dcmqi's SEG as the reference, medseg's SEG and a NRRD on the series' grid as predictions;
    # a SEG's source series is found through images=
    refs, scans, nrrd_preds = tmp_path / "refs", tmp_path / "scans", tmp_path / "nrrd_preds"
    refs.mkdir()
    nrrd_preds.mkdir()
    shutil.copy(CT / "liver.dcm", refs / "ct.dcm")
    copy_series(CT, scans / "ct")
    NrrdWriter()("ct", str(CT), liver, series_affine, {}, nrrd_preds)
    for pred in (preds, nrrd_preds):
        cfg = compose("evaluate", [f"pred={pred}", f"ref={refs}", f"images={scans}", f"output={tmp_path / 'eval'}",
                                   "overlays=false", "labels={1: liver}"])
        result = evaluate(cfg)
        assert result["problems"] == [] and [round(r["dice"], 6) for r in result["rows"]] == [1.0]


def test_predict_on_a_real_series_writes_a_seg_that_pydicom_and_highdicom_load(tiny_checkpoint, synthetic_data_dir, tmp_path):
    out = tmp_path / "preds"
    result = predict(predict_cfg(tiny_checkpoint, requires_shared(CT), out, "output_format=dicom-seg"))
    assert result == {"written": [str(out / "ct-3slice_dcmqi.dcm")], "failed": []}
    dataset = pydicom.dcmread(out / "ct-3slice_dcmqi.dcm")
    assert dataset.Modality == "SEG" and dataset.PatientID == pydicom.dcmread(CT / "01.dcm").PatientID
    seg = hd.seg.segread(out / "ct-3slice_dcmqi.dcm")
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver", "spleen"]  # the checkpoint's label names
    assert seg.SegmentSequence[1].SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "99MEDSEG"
    assert read_label_map(out / "ct-3slice_dcmqi.dcm", [CT]).array.shape == (512, 512, 3)

    # a NIfTI input has no instances to reference: refused before it is predicted, one line
    nifti = sorted((synthetic_data_dir / "Task99_Synthetic" / "imagesTs").iterdir())[0]
    result = predict(predict_cfg(tiny_checkpoint, nifti, tmp_path / "nifti_preds", "output_format=dicom-seg"))
    assert result["written"] == [] and len(result["failed"]) == 1
    assert result["failed"][0].startswith(f"{nifti}: output_format=dicom-seg needs a DICOM series input")


# --- NRRD ------------------------------------------------------------------------------------------------------

def nrrd_header(path: Path) -> dict[str, str]:
    """The NRRD text header, read as the format defines it (no imaging library involved)."""
    with open(path, "rb") as fh:
        head = fh.read(4096).split(b"\n\n")[0].decode("ascii")
    return dict(line.split(": ", 1) for line in head.splitlines()[1:] if ": " in line and not line.startswith("#"))


def vectors(text: str) -> np.ndarray:
    return np.array([[float(v) for v in group.split(",")] for group in text.replace(" ", "").strip("()").split(")(")])


@pytest.mark.parametrize("name", ["brain1_label.nrrd", "breast1_label.nrrd", "prostate_phantom_subvolume-label.nrrd"])
def test_nrrd_written_by_medseg_reopens_with_the_same_geometry(name, tmp_path):
    source = requires_shared(NRRD / name)
    label = read_label_map(source)
    path = NrrdWriter()("case", str(source), label.array.astype(np.uint8), label.affine, {}, tmp_path)[0]
    assert [p.name for p in tmp_path.iterdir()] == ["case.nrrd"]
    original, written = itk.imread(str(source)), itk.imread(str(path))
    assert np.allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
    assert np.allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-6)
    assert np.allclose(itk.array_from_matrix(written.GetDirection()), itk.array_from_matrix(original.GetDirection()), atol=1e-6)
    assert np.array_equal(itk.array_view_from_image(written), itk.array_view_from_image(original))
    simple = sitk.ReadImage(str(path))
    assert np.allclose(simple.GetOrigin(), original.GetOrigin(), atol=1e-4)
    assert np.allclose(np.array(simple.GetDirection()).reshape(3, 3) * simple.GetSpacing(),
                       itk.array_from_matrix(original.GetDirection()) * np.asarray(original.GetSpacing()), atol=1e-6)
    ours, theirs = nrrd_header(path), nrrd_header(source)
    assert ours["space"] == theirs["space"] == "left-posterior-superior"
    assert np.allclose(vectors(ours["space directions"]), vectors(theirs["space directions"]), atol=1e-6)
    assert np.allclose(vectors(ours["space origin"]), vectors(theirs["space origin"]), atol=1e-4)


def test_nrrd_inputs_keep_their_geometry_through_predict(tiny_checkpoint, tmp_path):
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("prostate_phantom_subvolume.nrrd", "breast1_image.nrrd"):
        shutil.copy(requires_shared(NRRD / name), scans / name)
    out = tmp_path / "preds"
    result = predict(predict_cfg(tiny_checkpoint, scans, out, "output_format=nrrd"))
    assert result["failed"] == [] and len(result["written"]) == 2
    for scan in scans.iterdir():
        original, written = itk.imread(str(scan)), itk.imread(str(out / scan.name))
        assert tuple(written.GetLargestPossibleRegion().GetSize()) == tuple(original.GetLargestPossibleRegion().GetSize())
        assert np.allclose(written.GetOrigin(), original.GetOrigin(), atol=1e-4)
        assert np.allclose(written.GetSpacing(), original.GetSpacing(), atol=1e-6)
        assert np.allclose(itk.array_from_matrix(written.GetDirection()), itk.array_from_matrix(original.GetDirection()), atol=1e-6)
