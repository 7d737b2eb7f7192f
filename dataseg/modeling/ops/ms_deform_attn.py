"""Multi-scale deformable attention (Deformable DETR, used by the Mask2Former pixel decoder).

Two implementations of the same core op share one contract:

- ``ms_deform_attn_pytorch``: pure PyTorch (``F.grid_sample``), always importable; used on CPU
  and wherever the compiled kernel is absent.
- the CUDA kernel in ``csrc/`` (extension ``dataseg._C``, built by
  ``DATASEG_BUILD_CUDA=1 pip install --no-build-isolation -e .``), wrapped in
  ``MSDeformAttnFunction``; faster and lighter on memory on the GPU.

``MSDeformAttn`` is the attention module; its ``impl`` picks the path ("auto", "pytorch",
"cuda"). ``kernel_status()`` says whether the kernel can be used (printed by
``python -m dataseg.collect_env``).

Conventions (both paths): sampling locations are normalised (x, y) in [0, 1] of each level's
(W, H); pixel centres sit at ((i + 0.5) / W), i.e. ``align_corners=False``; samples outside a
level read zeros (bilinear with zero padding).
"""
import math
from typing import List, Optional, Tuple

import torch  # must be imported before dataseg._C, whose symbols come from libtorch
import torch.nn.functional as F
from torch import nn
from torch.autograd import Function
from torch.autograd.function import once_differentiable

__all__ = [
    "ms_deform_attn_pytorch",
    "ms_deform_attn_cuda",
    "MSDeformAttnFunction",
    "MSDeformAttn",
    "kernel_status",
    "kernel_available",
    "BUILD_HINT",
]

BUILD_HINT = "DATASEG_BUILD_CUDA=1 pip install --no-build-isolation -e ."
_IMPLS = ("auto", "pytorch", "cuda")

# Lazily imported extension: (module or None, reason it could not be imported or None).
_KERNEL = None


def _load_kernel():
    """Imports ``dataseg._C`` once; returns (module or None, failure reason or None)."""
    global _KERNEL
    if _KERNEL is None:
        try:
            from dataseg import _C
        except (ImportError, OSError) as e:  # absent, or built against another torch/CUDA
            _KERNEL = (None, f"{type(e).__name__}: {e}")
        else:
            if hasattr(_C, "ms_deform_attn_forward"):
                _KERNEL = (_C, None)
            else:
                _KERNEL = (None, f"{_C.__file__} has no ms_deform_attn_forward")
    return _KERNEL


def kernel_available() -> bool:
    """True when the compiled kernel imports (it still needs CUDA tensors to run)."""
    return _load_kernel()[0] is not None


def kernel_status() -> str:
    """One line on the compiled kernel: "built (<path>)" or "not built (<reason>)"."""
    mod, reason = _load_kernel()
    if mod is None:
        return f"not built ({reason}); build it with: {BUILD_HINT}"
    gpu = "" if torch.cuda.is_available() else "; no GPU visible, the PyTorch path is used"
    return f"built ({mod.__file__}){gpu}"


def _check_core_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                       attention_weights, shapes_list=None):
    """Validates the shapes shared by both implementations; errors name the bad argument."""
    if value.dim() != 4:
        raise ValueError(f"ms_deform_attn: value must be (N, S, M, D), got {tuple(value.shape)}")
    n, s, m, _ = value.shape
    if spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2:
        raise ValueError("ms_deform_attn: spatial_shapes must be (L, 2) (H, W) per level, got "
                         f"{tuple(spatial_shapes.shape)}")
    n_levels = spatial_shapes.shape[0]
    if tuple(level_start_index.shape) != (n_levels,):
        raise ValueError(f"ms_deform_attn: level_start_index must be ({n_levels},), got "
                         f"{tuple(level_start_index.shape)}")
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2:
        raise ValueError("ms_deform_attn: sampling_locations must be (N, Lq, M, L, P, 2), got "
                         f"{tuple(sampling_locations.shape)}")
    sn, lq, sm, sl, p, _ = sampling_locations.shape
    if (sn, sm, sl) != (n, m, n_levels):
        raise ValueError(f"ms_deform_attn: sampling_locations {tuple(sampling_locations.shape)} "
                         f"does not match value (N={n}, M={m}) and spatial_shapes (L={n_levels})")
    if tuple(attention_weights.shape) != (n, lq, m, n_levels, p):
        raise ValueError(f"ms_deform_attn: attention_weights must be {(n, lq, m, n_levels, p)}, "
                         f"got {tuple(attention_weights.shape)}")
    if torch.jit.is_tracing():  # sizes are symbolic in an exported graph: nothing to compare
        return
    if shapes_list is not None:  # the caller's host copy: no device read
        if len(shapes_list) != n_levels:
            raise ValueError(f"ms_deform_attn: {len(shapes_list)} level shapes given for "
                             f"{n_levels} levels")
        total = sum(h * w for h, w in shapes_list)
    else:
        total = int((spatial_shapes[:, 0] * spatial_shapes[:, 1]).sum())
    if total != s:
        raise ValueError(f"ms_deform_attn: value has S={s} positions but spatial_shapes "
                         f"{shapes_list or spatial_shapes.tolist()} sum to {total}")


def ms_deform_attn_pytorch(value, spatial_shapes, level_start_index, sampling_locations,
                           attention_weights, shapes_list=None):
    """Deformable attention core in plain PyTorch (bilinear ``grid_sample`` per level).

    Args:
        value: (N, S, M, D), S = sum_l H_l * W_l, levels flattened row-major one after another.
        spatial_shapes: (L, 2) int64, (H_l, W_l).
        level_start_index: (L,) int64, offset of each level in S.
        sampling_locations: (N, Lq, M, L, P, 2), normalised (x, y) in [0, 1].
        attention_weights: (N, Lq, M, L, P), already normalised over L * P.
        shapes_list: optional host copy of ``spatial_shapes`` as [(H_l, W_l)] ints (levels
            back to back from 0, as ``level_start_index`` must then say): nothing is read
            from the device (a sync on a GPU).
    Returns:
        (N, Lq, M * D).
    """
    _check_core_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                       attention_weights, shapes_list)
    n, _, m, d = value.shape
    _, lq, _, n_levels, p, _ = sampling_locations.shape
    if torch.jit.is_tracing():
        # exported graphs (tools/export_model.py) take any input size: the level split reads
        # the sizes as traced 0-dim tensors, so it follows the input instead of being frozen
        shapes = [(spatial_shapes[i, 0], spatial_shapes[i, 1]) for i in range(n_levels)]
        starts = [level_start_index[i] for i in range(n_levels)]
    elif shapes_list is not None:
        shapes = shapes_list
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
    else:
        shapes = spatial_shapes.tolist()
        starts = level_start_index.tolist()
    # grid_sample wants coordinates in [-1, 1]; with align_corners=False, -1 is the left edge
    # of pixel 0, the same convention as x * W - 0.5 in pixel units.
    # Points ahead of queries: (N, Lq, M, L, P, 2) -> (N, M, L, P, Lq, 2), so each level's
    # samples come out as (N*M, D, P, Lq) and the weighted sum over P adds P contiguous
    # (D, Lq) slabs (a reduction over the innermost size-P axis is several times slower on
    # CPU: this path is 0.66x the time of the (.., Lq, P) layout, same values).
    grids = (2.0 * sampling_locations - 1.0).permute(0, 2, 3, 4, 1, 5)
    weights = attention_weights.permute(0, 2, 3, 4, 1)  # (N, M, L, P, Lq)
    in_place = not torch.is_grad_enabled()
    out = None
    for lvl, ((h, w), start) in enumerate(zip(shapes, starts)):
        # (N, H*W, M, D) -> (N*M, D, H, W)
        v = value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * m, d, h, w)
        g = grids[:, :, lvl].reshape(n * m, p, lq, 2)
        sampled = F.grid_sample(v, g.to(v.dtype), mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (N*M, D, P, Lq)
        wl = weights[:, :, lvl].reshape(n * m, 1, p, lq).to(sampled.dtype)
        # Accumulate level by level: no (N*M, D, L*P, Lq) stack of all levels in memory.
        level_out = (sampled.mul_(wl) if in_place else sampled * wl).sum(2)  # (N*M, D, Lq)
        out = level_out if out is None else (out.add_(level_out) if in_place
                                              else out + level_out)
    return out.view(n, m * d, lq).transpose(1, 2).contiguous()


class MSDeformAttnFunction(Function):
    """Autograd wrapper of the compiled kernel (``dataseg._C``); inputs are CUDA tensors.

    Runs in fp32 under autocast: sampling locations need more precision than fp16 gives
    (a 1e-3 step in [0, 1] is most of a pixel on a 128-wide level).
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda", cast_inputs=torch.float32)
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights):
        mod, reason = _load_kernel()
        if mod is None:
            raise RuntimeError(f"dataseg CUDA deformable-attention kernel is not built "
                               f"({reason}); build it with: {BUILD_HINT}")
        dtype = value.dtype
        sampling_locations = sampling_locations.to(dtype).contiguous()
        attention_weights = attention_weights.to(dtype).contiguous()
        value = value.contiguous()
        spatial_shapes = spatial_shapes.to(torch.int64).contiguous()
        level_start_index = level_start_index.to(torch.int64).contiguous()
        out = mod.ms_deform_attn_forward(value, spatial_shapes, level_start_index,
                                         sampling_locations, attention_weights)
        ctx.save_for_backward(value, spatial_shapes, level_start_index, sampling_locations,
                              attention_weights)
        return out

    @staticmethod
    @once_differentiable
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_output):
        mod, _ = _load_kernel()
        value, spatial_shapes, level_start_index, sampling_locations, attention_weights = \
            ctx.saved_tensors
        grad_value, grad_loc, grad_attn = mod.ms_deform_attn_backward(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            grad_output.contiguous())
        return grad_value, None, None, grad_loc, grad_attn


def ms_deform_attn_cuda(value, spatial_shapes, level_start_index, sampling_locations,
                        attention_weights, shapes_list=None):
    """Same contract as ``ms_deform_attn_pytorch``, computed by the compiled kernel."""
    _check_core_inputs(value, spatial_shapes, level_start_index, sampling_locations,
                       attention_weights, shapes_list)
    if not value.is_cuda:
        raise RuntimeError("ms_deform_attn_cuda: the kernel needs CUDA tensors, got "
                           f"value on {value.device}")
    return MSDeformAttnFunction.apply(value, spatial_shapes, level_start_index,
                                      sampling_locations, attention_weights)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable attention: each query samples n_points per head and level around
    its reference point, at learned offsets, and mixes them with learned softmax weights.
    """

    def __init__(self, d_model: int = 256, n_levels: int = 4, n_heads: int = 8,
                 n_points: int = 4, impl: str = "auto"):
        super().__init__()
        if d_model % n_heads != 0:
            raise ValueError(f"MSDeformAttn: d_model={d_model} is not divisible by "
                             f"n_heads={n_heads}")
        if impl not in _IMPLS:
            raise ValueError(f"MSDeformAttn: impl must be one of {_IMPLS}, got {impl!r}")
        if impl == "cuda" and not kernel_available():
            raise RuntimeError(f"MSDeformAttn(impl='cuda'): the CUDA kernel dataseg._C is not "
                               f"built ({_load_kernel()[1]}); build it with: {BUILD_HINT}")
        self.d_model = d_model
        self.n_levels = n_levels
        self.n_heads = n_heads
        self.n_points = n_points
        self.impl = impl
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self):
        """Deformable DETR's init: at start each head looks in its own direction on a ring
        (point k at distance k + 1 pixels), with uniform attention over its samples.
        """
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float64) * (2.0 * math.pi / self.n_heads)
        dirs = torch.stack([angles.cos(), angles.sin()], dim=-1)  # (M, 2)
        # Stretch each direction so its larger component is 1 (square ring, one pixel).
        dirs = dirs / dirs.abs().max(dim=-1, keepdim=True).values
        scale = torch.arange(1, self.n_points + 1, dtype=torch.float64).view(1, 1, -1, 1)
        bias = dirs.view(self.n_heads, 1, 1, 2).repeat(1, self.n_levels, self.n_points, 1) * scale
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.flatten().to(self.sampling_offsets.bias.dtype))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _use_kernel(self, value: torch.Tensor) -> bool:
        if self.impl == "pytorch":
            return False
        if self.impl == "cuda":
            if not value.is_cuda:
                raise RuntimeError("MSDeformAttn(impl='cuda') got tensors on "
                                   f"{value.device}; the kernel runs on CUDA tensors only")
            return True
        return value.is_cuda and kernel_available()

    def forward(self, query, reference_points, input_flatten, input_spatial_shapes,
                input_level_start_index, input_padding_mask: Optional[torch.Tensor] = None,
                level_shapes: Optional[List[Tuple[int, int]]] = None):
        """
        Args:
            query: (N, Lq, C), or (N*Lq, C) flattened over the batch (then ``input_flatten``
                is (N*S, C) too and the output is (N*Lq, C): every linear map is one matrix
                product).
            reference_points: (N, Lq, L, 2) normalised (x, y) in [0, 1], or (N, Lq, L, 4)
                boxes (cx, cy, w, h); offsets are then relative to half the box size.
            input_flatten: (N, S, C), all levels flattened.
            input_spatial_shapes: (L, 2) int64 (H, W); input_level_start_index: (L,) int64.
            input_padding_mask: (N, S) bool, True at padded positions (they contribute 0).
            level_shapes: optional host copy of ``input_spatial_shapes`` [(H, W)] (ints):
                then nothing is read back from the device.
        Returns:
            (N, Lq, C) (or (N*Lq, C)).
        """
        flat = query.dim() == 2
        n, lq = reference_points.shape[:2]
        c = query.shape[-1]
        if c != self.d_model:
            raise ValueError(f"MSDeformAttn: query has {c} channels, expected {self.d_model}")
        if flat:
            if query.shape[0] != n * lq or input_flatten.dim() != 2 \
                    or input_flatten.shape[0] % n or input_flatten.shape[1] != c:
                raise ValueError(f"MSDeformAttn: flattened query must be (N*Lq={n * lq}, C) "
                                 f"and input_flatten (N*S, C={c}), got {tuple(query.shape)}, "
                                 f"{tuple(input_flatten.shape)}")
            s = input_flatten.shape[0] // n
        else:
            if query.dim() != 3 or tuple(query.shape[:2]) != (n, lq):
                raise ValueError(f"MSDeformAttn: query must be (N={n}, Lq={lq}, C), got "
                                 f"{tuple(query.shape)}")
            if input_flatten.dim() != 3 or input_flatten.shape[0] != n \
                    or input_flatten.shape[2] != c:
                raise ValueError(f"MSDeformAttn: input_flatten must be (N={n}, S, C={c}), got "
                                 f"{tuple(input_flatten.shape)}")
            s = input_flatten.shape[1]
        if tuple(input_spatial_shapes.shape) != (self.n_levels, 2):
            raise ValueError(f"MSDeformAttn: input_spatial_shapes must be ({self.n_levels}, 2), "
                             f"got {tuple(input_spatial_shapes.shape)}")
        if reference_points.dim() != 4 or reference_points.shape[2] != self.n_levels \
                or reference_points.shape[-1] not in (2, 4):
            raise ValueError(f"MSDeformAttn: reference_points must be (N, Lq, "
                             f"L={self.n_levels}, 2 or 4), got {tuple(reference_points.shape)}")

        m, nl, p = self.n_heads, self.n_levels, self.n_points
        value = self.value_proj(input_flatten)
        if input_padding_mask is not None:
            if tuple(input_padding_mask.shape) != (n, s):
                raise ValueError(f"MSDeformAttn: input_padding_mask must be (N={n}, S={s}), got "
                                 f"{tuple(input_padding_mask.shape)}")
            value = value.masked_fill(input_padding_mask.reshape(value.shape[:-1])[..., None]
                                      .bool(), 0.0)
        value = value.view(n, s, m, c // m)
        offsets = self.sampling_offsets(query).view(n, lq, m, nl, p, 2)
        weights = self.attention_weights(query).view(n, lq, m, nl * p)
        weights = weights.softmax(-1).view(n, lq, m, nl, p)

        if reference_points.shape[-1] == 2:
            # Offsets are in pixels of each level: divide by its (W, H).
            # from the device tensor (a host list would be a blocking copy to a GPU)
            normalizer = input_spatial_shapes.flip(-1).to(offsets.dtype)  # (L, 2) as (W, H)
            locations = (reference_points.reshape(n, lq, 1, nl, 1, 2)
                         + offsets / normalizer[:, None, :])
        else:
            locations = (reference_points[:, :, None, :, None, :2]
                         + offsets / p * reference_points[:, :, None, :, None, 2:] * 0.5)

        if self._use_kernel(value):
            out = ms_deform_attn_cuda(value, input_spatial_shapes, input_level_start_index,
                                      locations, weights, level_shapes)
            out = out.to(query.dtype)
        else:
            out = ms_deform_attn_pytorch(value, input_spatial_shapes, input_level_start_index,
                                         locations, weights, level_shapes)
        if flat:
            out = out.view(n * lq, c)
        return self.output_proj(out)
