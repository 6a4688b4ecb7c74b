"""Building the network of a config: a 3D network, or a 2D network run on slices of the volume.

The 2D configuration does not duplicate the pipeline. Cases stay volumes (a 2D image is a volume
of one slice), patches are windows one voxel thick along the slice axis (``dataset.window``),
sliding-window inference runs such windows, and only the network is 2D: :class:`SliceNetwork`
squeezes the slice axis on the way in and restores it on the way out. Crops, flips, losses,
validation, test-time mirroring and the inversion to the scan's grid are the 3D code, unchanged.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from hydra.utils import instantiate


class SliceNetwork(torch.nn.Module):
    """A 2D network applied to ``(B, C, X, Y, Z)`` windows that are one voxel thick along ``axis``.

    Args:
        net: the 2D network (``spatial_dims=2``), built from ``model``.
        axis: the spatial axis (0, 1 or 2) the windows are thin along.
    """

    def __init__(self, net: torch.nn.Module, axis: int):
        super().__init__()
        self.net = net
        self.axis = int(axis)

    def _channels_last(self) -> bool:
        weight = next((p for p in self.net.parameters() if p.dim() == 4), None)
        return weight is not None and weight.is_contiguous(memory_format=torch.channels_last) \
            and not weight.is_contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dim = self.axis + 2
        if x.shape[dim] != 1:
            raise ValueError(f"a 2D network on slices along axis {self.axis} got a window {tuple(x.shape[2:])} "
                             "that is not one voxel thick there")
        plane = x.squeeze(dim)
        if self._channels_last():  # the weights were made channels-last (trainer.channels_last): match them
            plane = plane.contiguous(memory_format=torch.channels_last)
        out = self.net(plane)
        # DynUNet's training output stacks its deep-supervision heads on dim 1: (B, heads, C, *S)
        return out.unsqueeze(dim + (out.dim() - x.dim() + 1))


def build_network(model: Mapping[str, Any], slice_axis: int | None = None) -> torch.nn.Module:
    """``instantiate(model)``, wrapped in :class:`SliceNetwork` when the configuration is 2D (a
    ``slice_axis``). The one place a network is built: training, prediction and export."""
    net = instantiate(model, _convert_="all")
    return net if slice_axis is None else SliceNetwork(net, int(slice_axis))


def state_of_network(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The weights of the network itself (a 2D network without its slice wrapper): what an export
    that runs the network on its own (a MONAI bundle with ``SliceInferer``) loads."""
    return (model.net if isinstance(model, SliceNetwork) else model).state_dict()
