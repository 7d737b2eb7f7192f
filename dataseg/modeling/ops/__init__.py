"""Custom ops: multi-scale deformable attention (PyTorch path + optional CUDA kernel)."""
from .ms_deform_attn import (
    MSDeformAttn,
    kernel_available,
    kernel_status,
    ms_deform_attn_pytorch,
)

__all__ = ["MSDeformAttn", "kernel_available", "kernel_status", "ms_deform_attn_pytorch"]
