"""Detectron2's ``FrozenBatchNorm2d`` with its affine transform computed once, not per call.

While training, Detectron2's FrozenBN recomputes ``scale = weight * rsqrt(var + eps)`` and
``bias - mean * scale`` (and their reshapes) on every forward: about nine operators per layer,
all on frozen buffers, 53 layers in a ResNet-50. ``CachedFrozenBatchNorm2d`` computes the same
two tensors with the same operators once and keeps them until a buffer changes (in place, by
loading a checkpoint, or by moving the module), so a call is one multiply and one add: the same
values bit for bit, five times fewer operators launched (issue 22). Without gradients it is
Detectron2's forward (one fused ``batch_norm``).
"""
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["CachedFrozenBatchNorm2d", "cache_frozen_batchnorm"]


class CachedFrozenBatchNorm2d(FrozenBatchNorm2d):
    """``FrozenBatchNorm2d`` whose training-time scale and bias are cached (same state dict,
    same outputs)."""

    _BUFFERS = ("weight", "bias", "running_mean", "running_var")

    def __init__(self, num_features, eps=1e-5):
        super().__init__(num_features, eps)
        self.affine_key = None
        self.affine_cache = None

    def _key(self, x: torch.Tensor):
        bufs = [getattr(self, n) for n in self._BUFFERS]
        # a buffer changed in place bumps its version (torch.Tensor._version, autograd's
        # in-place counter); a new one (load, .to) has a new address
        return (x.dtype, x.device, self.eps, *(b._version for b in bufs),
                *(b.data_ptr() for b in bufs))

    def forward(self, x):
        if not x.requires_grad:
            return super().forward(x)
        key = self._key(x)
        if key != self.affine_key:
            with torch.no_grad():  # Detectron2's formula, operator for operator
                scale = self.weight * (self.running_var + self.eps).rsqrt()
                bias = self.bias - self.running_mean * scale
                self.affine_cache = (scale.reshape(1, -1, 1, 1).to(x.dtype),
                                bias.reshape(1, -1, 1, 1).to(x.dtype))
            self.affine_key = key
        scale, bias = self.affine_cache
        return x * scale + bias


def cache_frozen_batchnorm(module: nn.Module) -> nn.Module:
    """Replaces every ``FrozenBatchNorm2d`` (exactly that class) inside ``module`` by a
    ``CachedFrozenBatchNorm2d`` holding the same buffers; returns ``module``."""
    for name, child in list(module.named_children()):
        if type(child) is FrozenBatchNorm2d:
            new = CachedFrozenBatchNorm2d(child.num_features, child.eps)
            for n in CachedFrozenBatchNorm2d._BUFFERS:
                setattr(new, n, getattr(child, n))
            setattr(module, name, new)
        else:
            cache_frozen_batchnorm(child)
    return module
