"""The Python API and model export: ``Predictor.predict`` on arrays, TorchScript, ONNX and MONAI
bundles, each checked against ``medseg.predict`` or the PyTorch network on generated data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from medseg.core.config import compose
from medseg.data.synthetic import generate_task

TASK = "Task99_Synthetic"
# Not RAS, not isotropic, a rotation and an offset: the geometry every path must give back.
SKEWED = np.array([[-2.5, 0.0, 0.0, 40.0], [0.0, 0.0, 3.0, -20.0], [0.0, -2.0, 0.0, 10.0], [0.0, 0.0, 0.0, 1.0]])


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    data = tmp_path_factory.mktemp("export_data")
    generate_task(data, cases=6, test_cases=1, seed=3)
    return data


@pytest.fixture(scope="session")
def checkpoint(tiny_checkpoint) -> Path:
    return tiny_checkpoint  # conftest: one tiny unet3d training step, shared by the suite


@pytest.fixture(scope="module")
def scans(data, tmp_path_factory) -> tuple[Path, np.ndarray]:
    """A test scan rewritten as float32 with an oblique, non-RAS affine; its folder and array."""
    folder = tmp_path_factory.mktemp("scans")
    src = sorted((data / TASK / "imagesTs").iterdir())[0]
    array = np.asarray(nib.load(str(src)).dataobj, dtype=np.float32)[::2, ::2, :]  # smaller: faster
    nib.save(nib.Nifti1Image(array, SKEWED), str(folder / "scan.nii.gz"))
    return folder, array


@pytest.fixture(scope="module")
def predicted(checkpoint, scans, tmp_path_factory) -> Path:
    """``medseg.predict`` on the scan folder; the written label file."""
    from medseg.predict import predict

    out = tmp_path_factory.mktemp("preds")
    result = predict(compose("predict", [f"ckpt={checkpoint}", f"input={scans[0]}", f"output={out}", "device=cpu",
                                         "save_overlays=false", "tta=false"]))  # exported models run one pass
    assert not result["failed"]
    return out / "scan.nii.gz"


def run_export(argv: list[str]) -> int:
    """``python -m medseg.export argv`` in this process (as tests/test_faults.py runs entries); its exit code."""
    from hydra.core.global_hydra import GlobalHydra

    from medseg import export

    GlobalHydra.instance().clear()
    old_argv, sys.argv = sys.argv, ["medseg.export", *argv]
    try:
        export.main()
        return 0
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else 1
    finally:
        sys.argv = old_argv
        GlobalHydra.instance().clear()


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Mean over the labels either holds (background included), 1 when both are empty."""
    labels = np.union1d(np.unique(a), np.unique(b))
    return float(np.mean([2 * np.sum((a == v) & (b == v)) / (np.sum(a == v) + np.sum(b == v)) for v in labels]))


def test_predict_on_an_array_is_what_medseg_predict_writes(checkpoint, scans, predicted):
    import medseg
    from medseg import Predictor

    assert "Predictor" in medseg.__all__
    predictor = Predictor.from_checkpoint(checkpoint.parents[1], device="cpu", tta=False)  # a run folder: its best.pt; as `predicted`
    written = nib.load(str(predicted))
    result = predictor.predict(scans[1], affine=SKEWED, with_probabilities=True)
    assert result.labels.shape == scans[1].shape == written.shape
    assert np.allclose(result.affine, SKEWED) and np.allclose(written.affine, SKEWED, atol=1e-5)
    assert np.array_equal(result.labels, np.asarray(written.dataobj))
    assert result.probabilities.shape == (*scans[1].shape, 3)
    assert result.probabilities.min() >= 0 and result.probabilities.max() <= 1 + 1e-6
    from_file = predictor.predict_file(scans[0] / "scan.nii.gz")
    assert np.array_equal(from_file.labels, result.labels) and np.array_equal(predictor(str(scans[0] / "scan.nii.gz")).labels, result.labels)


def test_predict_with_spacing_and_channels_last(checkpoint, scans, tmp_path):
    from medseg.core.errors import MedsegError
    from medseg.inference.predictor import Predictor

    spacing = (3.0, 2.5, 4.0)
    nib.save(nib.Nifti1Image(scans[1], np.diag([*spacing, 1.0])), str(tmp_path / "diag.nii.gz"))
    predictor = Predictor.from_checkpoint([checkpoint], device="cpu")
    result = predictor.predict(scans[1].astype(np.int16), spacing=spacing)
    assert np.allclose(result.affine, np.diag([*spacing, 1.0]))
    assert np.array_equal(result.labels, predictor.predict_file(tmp_path / "diag.nii.gz").labels)
    assert np.array_equal(predictor.predict(scans[1][..., None], spacing=spacing).labels, result.labels)
    for bad, kwargs in [(scans[1][None, None], {"spacing": spacing}), (scans[1], {}),
                        (scans[1], {"spacing": (1.0, 0.0, 1.0)}), (scans[1], {"affine": np.zeros((4, 4))})]:
        with pytest.raises(MedsegError):
            predictor.predict(bad, **kwargs)


def _network_and_inputs(checkpoint: Path) -> tuple[torch.nn.Module, list[torch.Tensor]]:
    """The PyTorch network and inputs at the training patch size and at another size and batch."""
    from medseg.inference.predictor import Predictor

    generator = torch.Generator().manual_seed(0)
    model = Predictor.from_checkpoint(checkpoint, device="cpu").models[0]
    return model, [torch.rand(shape, generator=generator) for shape in [(1, 1, 32, 32, 32), (2, 1, 48, 32, 64)]]


def test_torchscript_matches_pytorch_at_two_sizes(checkpoint, tmp_path):
    from medseg.export import export

    path = export(compose("export", [f"ckpt={checkpoint}", "format=torchscript", f"output={tmp_path}"]))
    assert path == tmp_path / "model.ts" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    extra = {"medseg.json": ""}
    scripted = torch.jit.load(str(path), _extra_files=extra)
    assert json.loads(extra["medseg.json"])["spacing"] == [4.0, 4.0, 4.0]
    model, inputs = _network_and_inputs(checkpoint)
    with torch.no_grad():
        for x in inputs:
            assert np.abs(scripted(x).numpy() - model(x).numpy()).max() < 1e-3


def test_onnx_matches_pytorch_at_two_sizes(checkpoint, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from medseg.export import export

    path = export(compose("export", [f"ckpt={checkpoint}", "format=onnx", f"output={tmp_path}"]))
    assert path == tmp_path / "model.onnx" and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert json.loads((tmp_path / "model.onnx.json").read_text())["label_names"]["1"] == "liver"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    model, inputs = _network_and_inputs(checkpoint)
    with torch.no_grad():
        for x in inputs:
            assert np.abs(session.run(None, {"image": x.numpy()})[0] - model(x).numpy()).max() < 1e-3


def test_bundle_run_by_monai_agrees_with_medseg_predict(checkpoint, scans, predicted, tmp_path):
    from medseg.export import export

    bundle = tmp_path / "bundle"
    export(compose("export", [f"ckpt={checkpoint}", "format=bundle", f"output={bundle}"]))
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 1
    assert meta["medseg"]["spacing"] == [4.0, 4.0, 4.0] and meta["medseg"]["label_names"]["0"] == "background"
    assert (bundle / "models" / "model.pt").is_file()
    out = tmp_path / "preds"
    done = subprocess.run([sys.executable, "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.json"),
                           "--dataset_dir", str(scans[0]), "--output_dir", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    mine, theirs = nib.load(str(out / "scan.nii.gz")), nib.load(str(predicted))
    assert mine.shape == theirs.shape and np.allclose(mine.affine, theirs.affine, atol=1e-4)
    assert dice(np.asarray(mine.dataobj), np.asarray(theirs.dataobj)) >= 0.999


def test_bad_checkpoint_or_format_is_one_error_line_and_exit_2(checkpoint, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 not really a checkpoint")
    for args, names in [([f"ckpt={tmp_path / 'missing.pt'}", "format=onnx"], "missing.pt"),
                        ([f"ckpt={corrupt}", "format=bundle"], "corrupt.pt"),
                        ([f"ckpt={checkpoint}", "format=tflite"], "format=tflite")]:
        capsys.readouterr()
        code = run_export([*args, f"output={tmp_path / 'out'}", f"hydra.run.dir={tmp_path / 'hydra'}"])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("error:")]
        assert code == 2 and len(errors) == 1 and names in errors[0], err[-2000:]
        assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bundle_paints_regions_as_medseg_does():
    """BraTS-style targets: the bundle's one-expression painter equals ``Regions.label_map``."""
    from medseg.core.targets import Regions
    from medseg.inference.export import _label_painter

    target = Regions(threshold=0.5, label_values=[1, 2, 4], paint_order=[1, 0, 2])
    probs = torch.rand(1, 3, 6, 5, 4, generator=torch.Generator().manual_seed(0))
    paint = eval(_label_painter(target, 3)[1:], {"torch": torch})
    assert torch.equal(paint(target.discretize(probs)[0]), target.label_map(probs)[0].float())
