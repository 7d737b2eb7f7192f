"""Pixel decoder: a multi-scale deformable-attention encoder over res3-res5 and an FPN-style
fusion with res2 into the stride-4 mask feature map F (Mask2Former's MSDeformAttn decoder).

Returns ``mask_features`` (B, MASK_DIM, H/4, W/4) and ``multi_scale_features``: the encoder
outputs ordered from the coarsest level (res5) to the finest deformable level (res3), which the
transformer decoder visits round-robin.
"""
from typing import Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from torch import nn

from .ops.ms_deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine


class DeformEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then an FFN."""

    def __init__(self, d_model: int, dim_feedforward: int, n_levels: int, n_heads: int,
                 n_points: int, dropout: float = 0.0, impl: str = "auto"):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=impl)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index):
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes,
                              level_start_index, None)
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(F.relu(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


def encoder_reference_points(spatial_shapes: List[tuple], batch: int, device, dtype):
    """Centres of every cell of every level, normalised to [0, 1]: (B, S, L, 2) as (x, y)."""
    refs = []
    for h, w in spatial_shapes:
        ys = (torch.arange(h, device=device, dtype=dtype) + 0.5) / h
        xs = (torch.arange(w, device=device, dtype=dtype) + 0.5) / w
        ref_y, ref_x = torch.meshgrid(ys, xs, indexing="ij")
        refs.append(torch.stack((ref_x.reshape(-1), ref_y.reshape(-1)), -1))
    ref = torch.cat(refs, 0)  # (S, 2)
    return ref[None, :, None, :].expand(batch, -1, len(spatial_shapes), -1)


class MSDeformAttnPixelDecoder(nn.Module):
    """Backbone features -> (mask_features, multi_scale_features)."""

    @configurable
    def __init__(self, *, input_shape: Dict[str, ShapeSpec], deform_in_features: List[str],
                 fuse_in_features: List[str], conv_dim: int = 256, mask_dim: int = 256,
                 enc_layers: int = 6, enc_heads: int = 8, enc_points: int = 4,
                 enc_dim_feedforward: int = 1024, norm: str = "GN", dropout: float = 0.0,
                 deform_attn_impl: str = "auto"):
        super().__init__()
        for f in list(deform_in_features) + list(fuse_in_features):
            if f not in input_shape:
                raise KeyError(f"PIXEL_DECODER: backbone feature '{f}' not produced by the "
                               f"backbone (it gives {sorted(input_shape)})")
        # coarsest first, as the transformer decoder consumes them
        self.deform_in_features = sorted(deform_in_features, key=lambda f: -input_shape[f].stride)
        self.fuse_in_features = sorted(fuse_in_features, key=lambda f: -input_shape[f].stride)
        n_levels = len(self.deform_in_features)
        self.input_proj = nn.ModuleList()
        for f in self.deform_in_features:
            conv = nn.Conv2d(input_shape[f].channels, conv_dim, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            self.input_proj.append(nn.Sequential(conv, nn.GroupNorm(32, conv_dim)))
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.randn(n_levels, conv_dim) * 0.02)
        self.layers = nn.ModuleList(
            DeformEncoderLayer(conv_dim, enc_dim_feedforward, n_levels, enc_heads, enc_points,
                               dropout, deform_attn_impl) for _ in range(enc_layers))

        use_bias = norm == ""
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for f in self.fuse_in_features:
            lateral = Conv2d(input_shape[f].channels, conv_dim, 1, bias=use_bias,
                             norm=get_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, 3, padding=1, bias=use_bias,
                            norm=get_norm(norm, conv_dim), activation=F.relu)
            for m in (lateral, output):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            self.lateral_convs.append(lateral)
            self.output_convs.append(output)
        self.mask_features = Conv2d(conv_dim, mask_dim, 1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)
        self.mask_dim = mask_dim
        self.conv_dim = conv_dim

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        p = cfg.MODEL.DATASEG.PIXEL_DECODER
        return {"input_shape": input_shape, "deform_in_features": list(p.DEFORM_IN_FEATURES),
                "fuse_in_features": list(p.FUSE_IN_FEATURES), "conv_dim": p.CONVS_DIM,
                "mask_dim": cfg.MODEL.DATASEG.MASK_DIM, "enc_layers": p.ENC_LAYERS,
                "enc_heads": p.ENC_HEADS, "enc_points": p.ENC_POINTS,
                "enc_dim_feedforward": p.ENC_DIM_FEEDFORWARD, "norm": p.NORM,
                "dropout": cfg.MODEL.DATASEG.DROPOUT, "deform_attn_impl": p.DEFORM_ATTN_IMPL}

    def forward(self, features: Dict[str, torch.Tensor]):
        srcs, pos, shapes = [], [], []
        for lvl, f in enumerate(self.deform_in_features):
            x = self.input_proj[lvl](features[f])
            b, c, h, w = x.shape
            shapes.append((h, w))
            srcs.append(x.flatten(2).transpose(1, 2))
            pos.append(self.pe_layer(x).flatten(2).transpose(1, 2) + self.level_embed[lvl])
        src = torch.cat(srcs, 1)
        pos = torch.cat(pos, 1)
        spatial_shapes = torch.as_tensor(shapes, dtype=torch.long, device=src.device)
        sizes = [h * w for h, w in shapes]
        level_start = torch.as_tensor([0] + sizes[:-1], device=src.device).cumsum(0)
        ref = encoder_reference_points(shapes, src.shape[0], src.device, src.dtype)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, level_start)

        multi_scale = [s.transpose(1, 2).reshape(src.shape[0], self.conv_dim, h, w)
                       for s, (h, w) in zip(src.split(sizes, 1), shapes)]
        out = multi_scale[-1]
        for lvl, f in enumerate(self.fuse_in_features):
            lateral = self.lateral_convs[lvl](features[f])
            out = lateral + F.interpolate(out, size=lateral.shape[-2:], mode="bilinear",
                                          align_corners=False)
            out = self.output_convs[lvl](out)
        return self.mask_features(out), multi_scale
