"""A trained network out of medseg: TorchScript, ONNX, or a MONAI bundle that needs no medseg.

TorchScript and ONNX hold the network alone (logits of a preprocessed patch or volume, any spatial
size the network accepts); what a scan needs before and after it is in the sidecar metadata. The
bundle holds the whole pipeline as a MONAI bundle config, written from the same checkpoint config
and the same transform chain :class:`~medseg.inference.predictor.Predictor` runs, so
``python -m monai.bundle run`` writes what ``medseg.predict`` writes.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import warnings
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from monai import transforms as mt
from omegaconf import OmegaConf

from medseg.core.errors import MedsegError
from medseg.core.folders import claim_folder
from medseg.core.networks import state_of_network
from medseg.core.targets import Regions
from medseg.inference.predictor import Predictor, expand_checkpoints

FORMATS = ("bundle", "torchscript", "onnx")
FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}


MAIN_FILES = {"bundle": "configs/inference.json", **FILES}


def export_model(ckpt: str | Path | list[str | Path], fmt: str, output: str | Path, opset: int = 18,
                 overwrite: bool = False) -> Path:
    """Writes one checkpoint's network as ``fmt`` into the folder ``output``; returns the main file.

    Raises:
        MedsegError: unknown format, missing or corrupt checkpoint, several checkpoints (an
            ensemble has no single network to export), or an exporter that is not installed.
    """
    if fmt not in FORMATS:
        raise MedsegError(f"format={fmt} is not an export format; use one of {', '.join(FORMATS)}")
    if fmt == "onnx":
        missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
        if missing:
            raise MedsegError(f"format=onnx needs {' and '.join(missing)}: pip install onnx onnxscript onnxruntime")
    ckpts = expand_checkpoints(list(ckpt) if isinstance(ckpt, (list, tuple)) else [ckpt])
    if len(ckpts) != 1:
        raise MedsegError(f"ckpt={ckpt} holds {len(ckpts)} checkpoints; export one at a time (ckpt=<run>/checkpoints/best.pt)")
    existing = Path(output) / MAIN_FILES[fmt]
    if existing.exists() and not overwrite:
        raise MedsegError(f"{existing} already exists: export into a new folder, or add overwrite=true to replace it")
    predictor = Predictor(ckpts, torch.device("cpu"))
    if fmt == "bundle" and predictor.cfg.dataset.get("image_kind") == "2d":
        raise MedsegError(f"{ckpts[0]} was trained on 2D images: a MONAI bundle reads them with MONAI's PIL reader, which "
                          "transposes them; export format=torchscript or onnx (the network alone) instead")
    with claim_folder(output, "export", "choose another output="):
        output = Path(output)
        if fmt == "bundle":
            return export_bundle(predictor, output, source=ckpts[0])
        path = output / FILES[fmt]
        (export_torchscript if fmt == "torchscript" else export_onnx)(predictor, path, **({"opset": opset} if fmt == "onnx" else {}))
        write_atomically(path.with_name(path.name + ".json"), lambda tmp: tmp.write_text(json.dumps(model_card(predictor), indent=2)))
        return path


def write_atomically(path: Path, write: Callable[[Path], Any]) -> Path:
    """``write(tmp)`` then rename: an interrupted export never leaves a file that looks complete."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp{path.suffix}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def example_input(predictor: Predictor) -> torch.Tensor:
    """One training patch of zeros: the shape every network of the checkpoint is known to accept."""
    return torch.zeros(1, predictor.in_channels, *predictor.window)


def model_card(predictor: Predictor) -> dict[str, Any]:
    """What a user of the bare network must reproduce around it (medseg.predict does all of it)."""
    ds = predictor.cfg.dataset
    return {
        "input": "(B, in_channels, X, Y, Z) float32: RAS, resampled to spacing, intensity transform applied",
        "output": "(B, num_classes, X, Y, Z) logits: " + ("sigmoid per region" if isinstance(predictor.target, Regions)
                                                          else "softmax, argmax = class index"),
        "in_channels": int(ds.in_channels),
        "num_classes": int(ds.num_classes),
        "spacing": [float(s) for s in ds.spacing],
        "patch_size": [int(s) for s in ds.patch_size],
        "intensity": OmegaConf.to_container(ds.intensity, resolve=True),
        "label_names": {str(k): v for k, v in sorted(predictor.label_names.items())},
        "target": OmegaConf.to_container(ds.target, resolve=True),
        "inferer": OmegaConf.to_container(predictor.cfg.inferer, resolve=True),
        "versions": _versions(),
    }


def export_torchscript(predictor: Predictor, path: Path) -> Path:
    """``torch.jit.script`` (any spatial size the network takes); ``trace`` at the training patch
    size for networks scripting cannot compile, which may fix the size where the network branches on it."""
    model = predictor.models[0].eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, torch.jit.TracerWarning))
        try:
            module = torch.jit.script(model)
        except Exception:  # not scriptable (dynamic Python in forward): trace instead
            with torch.no_grad():
                module = torch.jit.trace(model, example_input(predictor))
        card = json.dumps(model_card(predictor))
        return write_atomically(path, lambda tmp: torch.jit.save(module, str(tmp), _extra_files={"medseg.json": card}))


def export_onnx(predictor: Predictor, path: Path, opset: int = 18) -> Path:
    """``torch.onnx.export`` (the ``torch.export`` based exporter) with batch and spatial axes
    dynamic; the model card is stored in the file's metadata as ``medseg``."""
    import onnx

    model = predictor.models[0].eval()
    dynamic = {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC,
               4: torch.export.Dim.DYNAMIC}

    def write(tmp: Path) -> None:
        quiet = {logging.getLogger(name): logging.getLogger(name).level for name in ("onnx_ir", "onnxscript", "torch.onnx")}
        try:
            for log in quiet:  # their INFO lines (one per merged weight) would bury medseg's output
                log.setLevel(logging.WARNING)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
                torch.onnx.export(model, (example_input(predictor),), str(tmp), input_names=["image"],
                                  output_names=["logits"], dynamic_shapes=(dynamic,), opset_version=opset,
                                  dynamo=True, verbose=False, external_data=False)
        except Exception as err:  # the exporter's many failure types for code it cannot capture
            raise MedsegError(f"{type(model).__name__} could not be exported to ONNX opset {opset} ({type(err).__name__}: "
                              f"{str(err).splitlines()[0][:160] if str(err) else ''}); try format=torchscript or format=bundle") from err
        finally:
            for log, level in quiet.items():
                log.setLevel(level)
        proto = onnx.load(str(tmp))
        onnx.helper.set_model_props(proto, {"medseg": json.dumps(model_card(predictor))})
        onnx.save(proto, str(tmp))

    return write_atomically(path, write)


# --- MONAI bundle --------------------------------------------------------------------------------

def bundle_config(node: Any, where: str) -> Any:
    """A resolved Hydra ``_target_`` config as MONAI bundle config: same ``_target_`` paths and
    keyword arguments; ``_partial_`` becomes ``_mode_: callable``, ``_convert_`` is Hydra-only.

    Raises:
        MedsegError: a Hydra key with no bundle equivalent (``_args_``, ``_recursive_: false``).
    """
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            key = str(key)
            if key == "_partial_":
                if value:
                    out["_mode_"] = "callable"
            elif key == "_convert_" or (key == "_recursive_" and value):
                continue
            elif key.startswith("_") and key != "_target_":
                raise MedsegError(f"{where}: Hydra key {key} has no MONAI bundle equivalent; "
                                  "export format=torchscript or onnx, or give the transform keyword arguments")
            else:
                out[key] = bundle_config(value, f"{where}.{key}")
        return out
    if isinstance(node, (list, tuple)):
        return [bundle_config(v, f"{where}[{i}]") for i, v in enumerate(node)]
    return node


def _transform_config(transform: Any, intensity: dict[str, Any]) -> dict[str, Any]:
    """One step of the Predictor's chain as bundle config. Every step is listed explicitly, so a
    step added to ``medseg.data.transforms.preprocessing`` fails here rather than silently differing."""
    if isinstance(transform, mt.LoadImaged):
        return {"_target_": "LoadImaged", "keys": "image", "ensure_channel_first": True, "image_only": True}
    if isinstance(transform, mt.EnsureTyped):
        return {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"}
    if isinstance(transform, mt.Orientationd):
        ornt = transform.ornt_transform
        return {"_target_": "Orientationd", "keys": "image", "axcodes": ornt.axcodes,
                "labels": [list(pair) for pair in ornt.labels]}
    if isinstance(transform, mt.Spacingd):
        return {"_target_": "Spacingd", "keys": "image",
                "pixdim": [float(p) for p in np.atleast_1d(transform.spacing_transform.pixdim)],
                "mode": [str(m) for m in transform.mode]}
    if isinstance(transform, mt.CropForegroundd):
        return {"_target_": "CropForegroundd", "keys": "image", "source_key": "image",
                "select_fn": "$lambda x: x != 0", "margin": int(np.max(transform.cropper.margin))}
    if type(transform).__name__ == intensity["_target_"].rsplit(".", 1)[-1]:
        return intensity
    raise MedsegError(f"preprocessing step {type(transform).__name__} has no MONAI bundle form yet; "
                      "export format=torchscript or onnx")


def _label_painter(target: Regions, num_channels: int) -> str:
    """``Regions.label_map`` as one bundle expression: later-painted channels win."""
    order = target.paint_order or list(range(num_channels))
    values = target.label_values or list(range(1, num_channels + 1))
    expr = "torch.zeros_like(x[0:1])"
    for channel in order:  # the last painted is the outermost where
        expr = f"torch.where(x[{channel}:{channel + 1}] > 0, {float(values[channel])}, {expr})"
    return f"$lambda x: {expr}"


def _inferer_config(cfg: Any) -> dict[str, Any]:
    """The sliding window as a bundle component. The 2D configuration runs its 2D network through
    MONAI's ``SliceInferer`` (the bundle holds the bare network, without medseg's slice wrapper)."""
    inferer = bundle_config(OmegaConf.to_container(cfg.inferer, resolve=True), "inferer")
    axis = cfg.dataset.get("slice_axis")
    if axis is None:
        return inferer
    return {**inferer, "_target_": "SliceInferer", "spatial_dim": int(axis),
            "roi_size": [int(p) for p in cfg.dataset.patch_size]}


def inference_config(predictor: Predictor, bundle_root: Path) -> dict[str, Any]:
    """``configs/inference.json``: the Predictor's chain, network and sliding window as MONAI
    bundle components, run without ignite (a loop over a ``Dataset``)."""
    cfg = predictor.cfg
    intensity = bundle_config(OmegaConf.to_container(cfg.dataset.intensity, resolve=True), "dataset.intensity")
    preprocessing = [_transform_config(t, intensity) for t in predictor.transform.transforms]
    regions = isinstance(predictor.target, Regions)
    num_classes = int(cfg.dataset.num_classes)
    discretize: list[Any] = (
        [{"_target_": "AsDiscreted", "keys": "pred", "threshold": float(predictor.target.threshold)},
         {"_target_": "Lambdad", "keys": "pred", "func": _label_painter(predictor.target, num_classes)}]
        if regions else [{"_target_": "AsDiscreted", "keys": "pred", "argmax": True}]
    )
    return {
        "imports": ["$import glob", "$import os"],
        "bundle_root": str(bundle_root.resolve()),
        "dataset_dir": "$@bundle_root + '/scans'",
        "output_dir": "$@bundle_root + '/eval'",
        "extensions": [".nii.gz", ".nii", ".mha", ".nrrd"],
        "datalist": "$sorted(f for e in @extensions for f in glob.glob(os.path.join(@dataset_dir, '*' + e)))",
        "device": "$torch.device('cuda' if torch.cuda.is_available() else 'cpu')",
        "network_def": bundle_config(OmegaConf.to_container(cfg.model, resolve=True), "model"),
        "network": "$@network_def.to(@device).eval()",
        "preprocessing": {"_target_": "Compose", "transforms": preprocessing},
        "dataset": {"_target_": "Dataset", "data": "$[{'image': f} for f in @datalist]", "transform": "@preprocessing"},
        "inferer": _inferer_config(cfg),
        "infer": ("$torch.no_grad()(lambda d: dict(d, pred=monai.data.MetaTensor("
                  "@inferer(d['image'][None].to(@device), @network)[0].cpu(), meta=d['image'].meta)))"),
        "postprocessing": {"_target_": "Compose", "transforms": [
            # Logits are resampled, then activated: medseg.predict's order (and nnU-Net's).
            {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
             "nearest_interp": False, "to_tensor": True},
            {"_target_": "Activationsd", "keys": "pred", "sigmoid": regions, "softmax": not regions},
            *discretize,
            {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_postfix": "",
             "output_ext": ".nii.gz", "output_dtype": "$numpy.uint8", "separate_folder": False,
             "resample": False, "print_log": False},
            "$lambda d: d['pred'].meta['filename_or_obj']",
        ]},
        "initialize": [
            "$@network.load_state_dict(torch.load(@bundle_root + '/models/model.pt', map_location=@device, weights_only=True))",
        ],
        "run": [
            "$print('segmented %d scan(s) of %s into %s' % (len([@postprocessing(@infer(d)) for d in @dataset]), "
            "@dataset_dir, @output_dir))",
        ],
    }


def _versions() -> dict[str, str]:
    def version(name: str) -> str:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "unknown"

    return {name: version(name) for name in ("medseg", "monai", "torch", "numpy", "nibabel")}


def metadata_config(predictor: Predictor, source: str | Path) -> dict[str, Any]:
    """``configs/metadata.json`` in the MONAI model-zoo layout, plus a ``medseg`` section."""
    ds, card, versions = predictor.cfg.dataset, model_card(predictor), _versions()
    names = card["label_names"]
    regions = isinstance(predictor.target, Regions)
    shape = card["patch_size"]
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.1.0",
        "changelog": {"0.1.0": f"exported by medseg {versions['medseg']} from {Path(source).name}"},
        "monai_version": versions["monai"],
        "pytorch_version": versions["torch"].split("+")[0],
        "numpy_version": versions["numpy"],
        "required_packages_version": {"nibabel": versions["nibabel"]},  # not medseg: the bundle runs without it
        "name": f"medseg {ds.name}",
        "task": f"{ds.name} segmentation",
        "description": f"{predictor.cfg.model._target_.rsplit('.', 1)[-1]} trained with medseg on {ds.name}",
        "authors": "medseg",
        "copyright": "see the training data's licence",
        "data_source": str(ds.name),
        "data_type": "nibabel",
        "image_classes": f"{card['in_channels']} channel(s) {ds.modality}, RAS, resampled to {card['spacing']} mm, "
                         f"intensity {card['intensity']['_target_']}",
        "label_classes": json.dumps(names),
        "pred_classes": (f"{card['num_classes']} channels, sigmoid per region" if regions
                         else f"{card['num_classes']} channels, softmax, argmax = class index"),
        "intended_use": "research only, not for diagnostic purposes",
        "network_data_format": {
            "inputs": {"image": {
                "type": "image", "format": "hounsfield" if ds.modality == "CT" else "magnitude",
                "modality": str(ds.modality), "num_channels": card["in_channels"], "spatial_shape": shape,
                "dtype": "float32", "value_range": [], "is_patch_data": True, "pixdim": card["spacing"],
                "channel_def": {str(i): f"channel {i}" for i in range(card["in_channels"])},
            }},
            "outputs": {"pred": {
                "type": "image", "format": "segmentation", "num_channels": card["num_classes"], "spatial_shape": shape,
                "dtype": "float32", "value_range": [0, 1], "is_patch_data": True, "channel_def": names,
            }},
        },
        "medseg": card,
    }


LOGGING_CONF = """[loggers]
keys=root

[handlers]
keys=consoleHandler

[formatters]
keys=fullFormatter

[logger_root]
level=INFO
handlers=consoleHandler

[handler_consoleHandler]
class=StreamHandler
level=INFO
formatter=fullFormatter
args=(sys.stdout,)

[formatter_fullFormatter]
format=%(asctime)s - %(name)s - %(levelname)s - %(message)s
"""

BUNDLE_README = """# {name}

Exported by medseg {version} from `{source}`. Runs with MONAI alone (no medseg, no ignite):

    python -m monai.bundle run --config_file configs/inference.json --dataset_dir <scans> --output_dir <preds>

Every `.nii.gz`, `.nii`, `.mha` or `.nrrd` file in `<scans>` becomes `<preds>/<name>.nii.gz`: a label map in
the scan's own grid (shape and affine), as `python -m medseg.predict` writes it. Multi-channel scans must be
one 4D file (channels last). `bundle_root` is the folder this was exported to; after moving the bundle add
`--bundle_root <new folder>`. Labels: {labels}.
"""


def export_bundle(predictor: Predictor, output: Path, source: str | Path) -> Path:
    """``models/model.pt`` (state dict), ``configs/metadata.json``, ``configs/logging.conf``,
    ``docs/README.md`` and, last, ``configs/inference.json``: each written atomically, the runnable
    config last, so a bundle that has one is complete."""
    state = {k: v.contiguous() for k, v in state_of_network(predictor.models[0]).items()}
    meta = metadata_config(predictor, source)
    write_atomically(output / "models" / "model.pt", lambda tmp: torch.save(state, tmp))
    write_atomically(output / "configs" / "metadata.json", lambda tmp: tmp.write_text(json.dumps(meta, indent=4)))
    write_atomically(output / "configs" / "logging.conf", lambda tmp: tmp.write_text(LOGGING_CONF))
    readme = BUNDLE_README.format(name=meta["name"], version=meta["medseg"]["versions"]["medseg"], source=Path(source).name,
                                  labels=meta["label_classes"])
    write_atomically(output / "docs" / "README.md", lambda tmp: tmp.write_text(readme))
    return write_atomically(output / "configs" / "inference.json",
                            lambda tmp: tmp.write_text(json.dumps(inference_config(predictor, output), indent=4)))
