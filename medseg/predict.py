"""Segment new scans: ``python -m medseg.predict ckpt=.../best.pt input=scans/ output=preds/``.

Writes ``<output>/<case>.nii.gz`` (or the ``output_format`` chosen) in each input's original geometry. A bad input file is
reported in one line and the others are still predicted; the exit code is non-zero if any failed.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from medseg.core.config import CONF_DIR
from medseg.core.errors import MedsegError, exit_on_user_error
from medseg.core.folders import claim_folder
from medseg.core.threads import apply_thread_policy
from medseg.core.utils import select_device
from medseg.core.visualize import save_overlay_png
from medseg.inference.cases import discover_cases
from medseg.inference.predictor import Predictor, expand_checkpoints
from medseg.inference.writers import LabelWriter, save_nifti

log = logging.getLogger("medseg.predict")


def refuse_overwriting_inputs(source: str | Path, output: Path) -> None:
    """Outputs never replace inputs: the output folder may not be, or contain, the folder of the scans.

    Raises:
        MedsegError: before any model is loaded or anything written; names the fix.
    """
    source = Path(source).resolve()
    scans = source.parent if source.is_file() else source
    out = output.resolve()
    if out == scans or out in scans.parents:
        raise MedsegError(f"output={output} is or contains the input folder {scans}: predictions could overwrite or mix "
                          "with the scans; choose an output folder outside the input")


def _predict_case(predictor: Predictor, writer: LabelWriter, case: str, image: str | list[str], output: Path,
                  cfg: DictConfig) -> Path:
    """Predicts and writes one case (labels, optional probabilities and overlay); returns the label file."""
    if hasattr(writer, "check_source"):  # a format that cannot be written for this input: say so before predicting
        writer.check_source(image)
    result = predictor(image, with_probabilities=cfg.save_probabilities)
    path = writer(case, image, result.labels, result.affine, predictor.label_names, output)[0]
    if result.probabilities is not None:
        save_nifti(result.probabilities, result.affine, output / f"{case}_probabilities.nii.gz")
    if cfg.save_overlays:
        (output / "overlays").mkdir(exist_ok=True)
        save_overlay_png(output / "overlays" / f"{case}.png", result.preview["image"], result.preview["pred"], title=case)
    log.info("%s -> %s", image, path)
    return path


def predict(cfg: DictConfig) -> dict[str, Any]:
    """Predicts every case under ``cfg.input``.

    Returns:
        ``{"written": [paths], "failed": ["file: reason", ...]}``.
    """
    output = Path(cfg.output)
    refuse_overwriting_inputs(cfg.input, output)
    apply_thread_policy(cfg.get("threads", "auto"))
    with claim_folder(output, "predict", "choose another output="):  # two predicts into one folder would mix
        return _predict_into(cfg, output)


def _predict_into(cfg: DictConfig, output: Path) -> dict[str, Any]:
    """:func:`predict` once the output folder is this process's."""
    ckpts = expand_checkpoints([cfg.ckpt] if isinstance(cfg.ckpt, str) else list(cfg.ckpt))
    log.info("%d checkpoint(s): %s", len(ckpts), ", ".join(ckpts))
    predictor = Predictor(
        ckpts, select_device(cfg.device), OmegaConf.to_container(cfg.inferer), amp=cfg.amp,
        mirror_axes=None if cfg.tta else (), largest_component=cfg.largest_component,
    )
    writer: LabelWriter = instantiate(cfg.output_format)
    cases, failed = discover_cases(cfg.input, predictor.in_channels)
    for line in failed:
        print(f"error: {line}", file=sys.stderr)
    written = []
    for case, image in tqdm(cases.items(), desc="predict", unit="case", disable=not sys.stderr.isatty()):
        try:
            written.append(str(_predict_case(predictor, writer, case, image, output, cfg)))
        except Exception as err:  # one bad case never stops the others; each failure is named
            name = image if isinstance(image, str) else image[0]
            message = str(err) if isinstance(err, MedsegError) else f"{name}: prediction failed ({type(err).__name__}: {str(err)[:160]})"
            print(f"error: {message}", file=sys.stderr)
            failed.append(message)
    print(f"predicted {len(written)} case(s) into {output}" + (f"; {len(failed)} failed" if failed else ""))
    return {"written": written, "failed": failed}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    if predict(cfg)["failed"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
