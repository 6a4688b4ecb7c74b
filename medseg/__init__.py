"""medseg: MONAI + Hydra framework for 3D medical image segmentation."""

__version__ = "0.1.0"

from pathlib import Path as _Path

# conf/ lives beside the package in the source checkout (editable install, see README).
CONF_DIR = str(_Path(__file__).resolve().parents[1] / "conf")
