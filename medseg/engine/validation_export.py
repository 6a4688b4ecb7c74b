"""A fold run's held-out predictions, kept for choosing configurations and ensembles afterwards.

With ``trainer.export_validation=true`` (``make cv`` sets it), the model at the end of training
predicts the fold's validation cases exactly as ``medseg.predict`` would (same checkpoint, same
test-time mirroring, the input's own grid) and their class probabilities are kept in
``validation/``; ``medseg.cv_summary`` scores every configuration and ensemble from them
(``medseg.metrics.ensembles``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from medseg.data.datalist import Datalist
from medseg.inference.predictor import Predictor
from medseg.metrics.ensembles import save_validation_case

log = logging.getLogger(__name__)


def export_validation(cfg: DictConfig, run_dir: Path, cases: Sequence[str], device: torch.device) -> int:
    """Predicts ``cases`` with ``checkpoints/last.pt`` and saves their probabilities; returns how many."""
    data: Datalist = instantiate(cfg.dataset.source)
    files = {**data.cases, **(data.fixed_val or {})}
    predictor = Predictor([run_dir / "checkpoints" / "last.pt"], device, mirror_axes=None)
    for case in cases:
        result = predictor.predict_file(files[case]["image"], with_probabilities=True)
        save_validation_case(run_dir, case, result.probabilities, files[case]["label"])
    log.info("validation probabilities of %d case(s) kept in %s", len(cases), run_dir / "validation")
    return len(cases)
