#!/usr/bin/env python
"""Train from a named experiment: ``python scripts/train.py --config configs/medmnist_example.yaml [overrides]``.

``--config`` takes an experiment name (``medmnist_example``), a file in ``conf/experiment/``, or
the seed's paths ``configs/<name>.yaml``: all resolve to ``conf/experiment/<name>.yaml`` (there is
one config tree). Further arguments are Hydra overrides passed to ``python -m medseg.train``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXPERIMENTS = Path(__file__).resolve().parents[1] / "conf" / "experiment"


def experiment_name(config: str) -> str:
    name = Path(config).name
    name = name[: -len(".yaml")] if name.endswith(".yaml") else name
    if not (EXPERIMENTS / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in EXPERIMENTS.glob("*.yaml")))
        raise SystemExit(f"error: no experiment '{name}' in {EXPERIMENTS} (from --config {config}); known: {known}")
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--config", required=True, help="experiment name or configs/<name>.yaml")
    args, overrides = parser.parse_known_args()
    sys.argv = [sys.argv[0], f"experiment={experiment_name(args.config)}", *overrides]
    from medseg.train import main as train_main

    train_main()


if __name__ == "__main__":
    main()
