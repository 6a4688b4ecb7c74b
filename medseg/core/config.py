"""Where the config tree lives, and composing it outside a Hydra app (benchmarks, notebooks, tests).

``compose_train(overrides, output_dir)`` gives exactly the config ``python -m medseg.train
<overrides>`` would run with, so code that drives medseg from Python needs no Hydra internals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, open_dict

# conf/ lives beside the package in the source checkout (editable install, see README).
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def compose(config_name: str, overrides: Sequence[str] = (), output_dir: str | Path | None = None) -> DictConfig:
    """Composes ``conf/<config_name>.yaml`` with command-line style overrides.

    ``${hydra:...}`` interpolations resolve as in a real run; ``paths.output_dir`` (or the
    top-level ``output`` of predict/evaluate) is set to ``output_dir`` when given.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = hydra_compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig().set_config(cfg)  # lets ${hydra:...} interpolations resolve outside a Hydra app
    with open_dict(cfg):
        if output_dir is not None:
            if "paths" in cfg:
                cfg.paths.output_dir = str(output_dir)
            else:
                cfg.output = str(output_dir)
        del cfg["hydra"]
    return cfg


def compose_train(overrides: Sequence[str], output_dir: str | Path) -> DictConfig:
    """``conf/train.yaml`` as ``python -m medseg.train <overrides>`` composes it, writing to ``output_dir``."""
    return compose("train", overrides, output_dir)
