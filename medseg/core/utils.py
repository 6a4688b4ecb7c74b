"""Small torch helpers used across the package: seeding, device choice, memory format, autocast."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from monai.utils import set_determinism

from medseg.core.errors import MedsegError


def seed_everything(seed: int, deterministic: bool = False) -> None:
    """Seeds python, numpy and torch. ``deterministic`` also forces deterministic cuDNN (slower)."""
    set_determinism(seed=seed)
    if not deterministic:  # set_determinism switches cuDNN autotuning off; we want it unless asked
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = True


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks the GPU when there is one, else the CPU.

    Raises:
        MedsegError: a CUDA device was asked for on a machine without one (``trainer=gpu`` on a
            laptop): one line instead of the driver's traceback.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise MedsegError(f"device '{name}' is not a device torch knows ({err}); use auto, cpu or cuda[:N]") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise MedsegError(f"device '{name}' asked for, but this machine has no usable CUDA GPU: drop trainer=gpu "
                          "(or use trainer.device=auto / device=auto, which falls back to the CPU)")
    return device


def channels_last(model: torch.nn.Module) -> torch.memory_format | None:
    """Converts a conv net's weights to channels-last (3D or 2D by their rank) and returns that format.

    oneDNN/cuDNN convolutions run faster on channels-last tensors (measured in benchmarks/:
    about 1.1x on CPU for unet3d training and inference).
    """
    for p in model.parameters():
        if p.dim() in (4, 5):
            fmt = torch.channels_last_3d if p.dim() == 5 else torch.channels_last
            model.to(memory_format=fmt)
            return fmt
    return None


def autocast_context(device: torch.device, enabled: bool, inference: bool = False) -> AbstractContextManager:
    """Mixed precision on CUDA only: CPU autocast gains nothing for these 3D convolutions (bf16 is
    emulated on CPUs without AMX, ~60x slower; benchmarks/sliding_window.py).

    Training uses fp16 (with the trainer's GradScaler). Inference uses bf16 where the GPU supports
    it: fp32's exponent range, so no overflow in the logits, at fp16's speed.
    """
    if enabled and device.type == "cuda":
        bf16 = inference and torch.cuda.is_bf16_supported()
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16 if bf16 else torch.float16)
    return nullcontext()
