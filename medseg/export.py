"""Export a trained network: ``python -m medseg.export ckpt=.../best.pt format=bundle|torchscript|onnx output=out/``.

The logic is in :mod:`medseg.inference.export`; this is the command line around it.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig

from medseg.core.config import CONF_DIR
from medseg.core.errors import exit_on_user_error
from medseg.inference.export import export_model


def export(cfg: DictConfig) -> Path:
    """Exports ``cfg.ckpt`` as ``cfg.format`` into ``cfg.output``; returns the main file written."""
    ckpt = cfg.ckpt if isinstance(cfg.ckpt, str) else list(cfg.ckpt)
    path = export_model(ckpt, str(cfg.format), cfg.output, opset=int(cfg.opset), overwrite=bool(cfg.overwrite))
    print(f"exported {cfg.ckpt} as {cfg.format}: {path}")
    return path


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
@exit_on_user_error
def main(cfg: DictConfig) -> None:
    export(cfg)


if __name__ == "__main__":
    main()
