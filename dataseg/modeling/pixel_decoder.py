"""Pixel decoders: backbone features -> the stride-4 mask feature map F and the multi-scale
features the transformer decoder visits round-robin.

``build_pixel_decoder(cfg, input_shape)`` picks one by ``MODEL.DATASEG.PIXEL_DECODER.NAME``:

- "msdeform" (default): Mask2Former's multi-scale deformable-attention encoder over res3-res5
  and an FPN-style fusion with res2.
- "transformer_fpn": the paper's ResNet decoder, "a transformer encoder and a modified FPN
  following MaskFormer, except that we use Layer Norm and GeLU": a post-norm transformer
  encoder on the coarsest level, then a top-down FPN over the finer ones.
- "vitdet_sum": the paper's ViTDet decoder: the backbone's simple-feature-pyramid levels go to
  the transformer decoder as they are, and F is the sum of all levels upsampled to stride 4.

Every decoder returns ``mask_features`` (B, MASK_DIM, H/4, W/4) and ``multi_scale_features``:
CONVS_DIM-channel maps ordered from the coarsest level to the finest of DEFORM_IN_FEATURES.
"""
from typing import Callable, Dict, List

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from timm.layers import LayerNorm2d
from torch import nn

from .ops.ms_deform_attn import MSDeformAttn
from .position_encoding import PositionEmbeddingSine

ACTIVATIONS: Dict[str, Callable] = {"relu": F.relu, "gelu": F.gelu}


def get_activation(name: str) -> Callable:
    """PIXEL_DECODER.ACTIVATION -> function."""
    if name not in ACTIVATIONS:
        raise ValueError(f"MODEL.DATASEG.PIXEL_DECODER.ACTIVATION: {name!r} is not one of "
                         f"{sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def make_norm(norm: str, channels: int):
    """PIXEL_DECODER.NORM -> a module over (B, C, H, W) maps, or None for "" ("LN" is a
    LayerNorm over channels, "GN" a 32-group GroupNorm, others Detectron2's ``get_norm``)."""
    if norm == "LN":
        return LayerNorm2d(channels, eps=1e-6)
    try:
        return get_norm(norm, channels)
    except KeyError:
        raise ValueError(f"MODEL.DATASEG.PIXEL_DECODER.NORM: unknown norm {norm!r} (GN, LN, "
                         "BN, SyncBN, FrozenBN, '')") from None


def _check_features(input_shape, names):
    for f in names:
        if f not in input_shape:
            raise KeyError(f"PIXEL_DECODER: backbone feature '{f}' not produced by the "
                           f"backbone (it gives {sorted(input_shape)})")


class DeformEncoderLayer(nn.Module):
    """Post-norm layer: deformable self-attention over all levels, then an FFN."""

    def __init__(self, d_model: int, dim_feedforward: int, n_levels: int, n_heads: int,
                 n_points: int, dropout: float = 0.0, impl: str = "auto",
                 activation: Callable = F.relu):
        super().__init__()
        self.activation = activation
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points, impl=impl)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index,
                level_shapes=None):
        """src, pos: (B, S, C), or (B*S, C) flattened over the batch; ``level_shapes``: the
        host copy of ``spatial_shapes`` (MSDeformAttn). Returns src's shape."""
        attn = self.self_attn(src + pos, reference_points, src, spatial_shapes,
                              level_start_index, None, level_shapes)
        src = self.norm1(src + self.dropout(attn))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


def level_shapes_tensor(shapes: List[tuple], device) -> torch.Tensor:
    """[(H_l, W_l)] -> (L, 2) int64. The sizes are ints when run eagerly and traced 0-dim
    tensors while an export traces the model: stacking them keeps them symbolic, so the
    exported graph accepts any input size (dataseg/export.py)."""
    if torch.jit.is_tracing():
        return torch.stack([torch.stack([torch.as_tensor(h), torch.as_tensor(w)])
                            for h, w in shapes]).to(device=device, dtype=torch.long)
    # cached per (sizes, device): a tensor made from host ints on a GPU is a blocking copy
    key = (tuple((int(h), int(w)) for h, w in shapes), str(device))
    cached = _LEVEL_SHAPES.get(key)
    if cached is None:
        if len(_LEVEL_SHAPES) >= 256:  # many input sizes (evaluation): start over
            _LEVEL_SHAPES.clear()
        cached = _LEVEL_SHAPES[key] = torch.as_tensor(shapes, dtype=torch.long, device=device)
    return cached


_LEVEL_SHAPES: Dict[tuple, torch.Tensor] = {}


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
                 deform_attn_impl: str = "auto", activation: str = "relu"):
        super().__init__()
        _check_features(input_shape, list(deform_in_features) + list(fuse_in_features))
        act = get_activation(activation)
        # coarsest first, as the transformer decoder consumes them
        self.deform_in_features = sorted(deform_in_features, key=lambda f: -input_shape[f].stride)
        self.fuse_in_features = sorted(fuse_in_features, key=lambda f: -input_shape[f].stride)
        n_levels = len(self.deform_in_features)
        self.input_proj = nn.ModuleList()
        for f in self.deform_in_features:
            conv = nn.Conv2d(input_shape[f].channels, conv_dim, kernel_size=1)
            nn.init.xavier_uniform_(conv.weight, gain=1)
            nn.init.zeros_(conv.bias)
            proj_norm = make_norm(norm, conv_dim)
            self.input_proj.append(nn.Sequential(conv, proj_norm) if proj_norm is not None
                                   else nn.Sequential(conv))
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.level_embed = nn.Parameter(torch.randn(n_levels, conv_dim) * 0.02)
        self.layers = nn.ModuleList(
            DeformEncoderLayer(conv_dim, enc_dim_feedforward, n_levels, enc_heads, enc_points,
                               dropout, deform_attn_impl, act) for _ in range(enc_layers))

        use_bias = norm == ""
        self.lateral_convs = nn.ModuleList()
        self.output_convs = nn.ModuleList()
        for f in self.fuse_in_features:
            lateral = Conv2d(input_shape[f].channels, conv_dim, 1, bias=use_bias,
                             norm=make_norm(norm, conv_dim))
            output = Conv2d(conv_dim, conv_dim, 3, padding=1, bias=use_bias,
                            norm=make_norm(norm, conv_dim), activation=act)
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
                "dropout": cfg.MODEL.DATASEG.DROPOUT, "deform_attn_impl": p.DEFORM_ATTN_IMPL,
                "activation": p.ACTIVATION}

    def forward(self, features: Dict[str, torch.Tensor]):
        """{name: (B, C_f, H_f, W_f)} backbone maps -> (mask_features (B, MASK_DIM, H/4, W/4),
        [CONVS_DIM maps of DEFORM_IN_FEATURES, coarsest first])."""
        srcs, pos, shapes = [], [], []
        for lvl, f in enumerate(self.deform_in_features):
            x = self.input_proj[lvl](features[f])
            b, c, h, w = x.shape
            shapes.append((h, w))
            srcs.append(x.flatten(2).transpose(1, 2))
            pos.append(self.pe_layer(x).flatten(2).transpose(1, 2) + self.level_embed[lvl])
        src = torch.cat(srcs, 1)
        pos = torch.cat(pos, 1)
        b, s_total = src.shape[:2]
        spatial_shapes = level_shapes_tensor(shapes, src.device)
        sizes = spatial_shapes.prod(1)
        level_start = sizes.cumsum(0) - sizes
        ref = encoder_reference_points(shapes, b, src.device, src.dtype)
        tracing = torch.jit.is_tracing()
        # eager: the layers get the level sizes as ints too (nothing read back from the
        # device) and tokens flattened over the batch (each linear map one matrix product)
        host_shapes = None if tracing else [(int(h), int(w)) for h, w in shapes]
        if not tracing:
            src, pos = src.reshape(b * s_total, -1), pos.reshape(b * s_total, -1)
        for layer in self.layers:
            src = layer(src, pos, ref, spatial_shapes, level_start, host_shapes)
        src = src.view(b, s_total, -1)

        # split at the level offsets; while tracing they stay tensors (symbolic sizes)
        if tracing:
            starts = [level_start[i] for i in range(len(shapes))]
        else:
            starts = [0]
            for h, w in host_shapes[:-1]:
                starts.append(starts[-1] + h * w)
        multi_scale = [src[:, start:start + h * w].transpose(1, 2).reshape(
            b, self.conv_dim, h, w) for start, (h, w) in zip(starts, shapes)]
        out = multi_scale[-1]
        for lvl, f in enumerate(self.fuse_in_features):
            lateral = self.lateral_convs[lvl](features[f])
            out = lateral + F.interpolate(out, size=lateral.shape[-2:], mode="bilinear",
                                          align_corners=False)
            out = self.output_convs[lvl](out)
        return self.mask_features(out), multi_scale


class TransformerEncoderLayer(nn.Module):
    """Post-norm self-attention layer (DETR/MaskFormer): positions are added to queries and keys."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int, dropout: float,
                 activation: Callable):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.activation = activation
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(B, S, C) tokens and positions -> (B, S, C)."""
        q = src + pos
        src = self.norm1(src + self.dropout(self.self_attn(q, q, src, need_weights=False)[0]))
        ffn = self.linear2(self.dropout(self.activation(self.linear1(src))))
        return self.norm2(src + self.dropout(ffn))


class TransformerEncoderFPNPixelDecoder(nn.Module):
    """The paper's ResNet pixel decoder (MaskFormer's transformer encoder + FPN, with the norm
    and activation of PIXEL_DECODER.NORM / ACTIVATION; the paper uses LN and GeLU).

    The coarsest input level is projected to CONVS_DIM, encoded by ENC_LAYERS post-norm
    self-attention layers with sine positions, then a 3x3 conv; each finer level adds its 1x1
    lateral conv to the nearest-upsampled coarser output, followed by a 3x3 conv. The outputs at
    DEFORM_IN_FEATURES go to the transformer decoder; a 3x3 conv on the finest output is F.
    """

    @configurable
    def __init__(self, *, input_shape: Dict[str, ShapeSpec], decoder_features: List[str],
                 fuse_in_features: List[str], conv_dim: int = 256, mask_dim: int = 256,
                 enc_layers: int = 6, enc_heads: int = 8, enc_dim_feedforward: int = 1024,
                 dropout: float = 0.0, norm: str = "LN", activation: str = "gelu"):
        super().__init__()
        names = list(dict.fromkeys(list(decoder_features) + list(fuse_in_features)))
        _check_features(input_shape, names)
        act = get_activation(activation)
        # coarsest first
        self.in_features = sorted(names, key=lambda f: -input_shape[f].stride)
        self.decoder_features = sorted(decoder_features, key=lambda f: -input_shape[f].stride)
        self.conv_dim = conv_dim
        coarsest = self.in_features[0]
        self.input_proj = nn.Conv2d(input_shape[coarsest].channels, conv_dim, 1)
        nn.init.xavier_uniform_(self.input_proj.weight)
        nn.init.zeros_(self.input_proj.bias)
        self.pe_layer = PositionEmbeddingSine(conv_dim // 2, normalize=True)
        self.encoder = nn.ModuleList(
            TransformerEncoderLayer(conv_dim, enc_heads, enc_dim_feedforward, dropout, act)
            for _ in range(enc_layers))
        use_bias = norm == ""

        def conv(cin, k, with_act):
            c = Conv2d(cin, conv_dim, k, padding=k // 2, bias=use_bias,
                       norm=make_norm(norm, conv_dim), activation=act if with_act else None)
            nn.init.kaiming_uniform_(c.weight, a=1)
            if c.bias is not None:
                nn.init.zeros_(c.bias)
            return c

        self.encoder_output = conv(conv_dim, 3, True)
        self.lateral_convs = nn.ModuleList(conv(input_shape[f].channels, 1, False)
                                           for f in self.in_features[1:])
        self.output_convs = nn.ModuleList(conv(conv_dim, 3, True) for _ in self.in_features[1:])
        self.mask_features = Conv2d(conv_dim, mask_dim, 3, padding=1)
        nn.init.kaiming_uniform_(self.mask_features.weight, a=1)
        nn.init.zeros_(self.mask_features.bias)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        p = cfg.MODEL.DATASEG.PIXEL_DECODER
        return {"input_shape": input_shape, "decoder_features": list(p.DEFORM_IN_FEATURES),
                "fuse_in_features": list(p.FUSE_IN_FEATURES), "conv_dim": p.CONVS_DIM,
                "mask_dim": cfg.MODEL.DATASEG.MASK_DIM, "enc_layers": p.ENC_LAYERS,
                "enc_heads": p.ENC_HEADS, "enc_dim_feedforward": p.ENC_DIM_FEEDFORWARD,
                "dropout": cfg.MODEL.DATASEG.DROPOUT, "norm": p.NORM,
                "activation": p.ACTIVATION}

    def forward(self, features: Dict[str, torch.Tensor]):
        """{name: (B, C_f, H_f, W_f)} -> (mask_features (B, MASK_DIM, H/4, W/4),
        [CONVS_DIM maps of DEFORM_IN_FEATURES, coarsest first])."""
        x = self.input_proj(features[self.in_features[0]])
        b, c, h, w = x.shape
        pos = self.pe_layer(x).flatten(2).transpose(1, 2)
        src = x.flatten(2).transpose(1, 2)
        for layer in self.encoder:
            src = layer(src, pos)
        y = self.encoder_output(src.transpose(1, 2).reshape(b, c, h, w))
        outs = {self.in_features[0]: y}
        for f, lateral, output in zip(self.in_features[1:], self.lateral_convs,
                                      self.output_convs):
            cur = lateral(features[f])
            y = output(cur + F.interpolate(y, size=cur.shape[-2:], mode="nearest"))
            outs[f] = y
        return self.mask_features(y), [outs[f] for f in self.decoder_features]


class ViTDetSumPixelDecoder(nn.Module):
    """The paper's ViTDet pixel decoder: the simple feature pyramid's DEFORM_IN_FEATURES levels
    go to the transformer decoder unchanged (a 1x1 projection only if their channels differ
    from CONVS_DIM), and F is the sum of all levels (DEFORM_IN_FEATURES + FUSE_IN_FEATURES)
    bilinearly upsampled to the finest one (1x1 projection only if channels != MASK_DIM).
    """

    @configurable
    def __init__(self, *, input_shape: Dict[str, ShapeSpec], decoder_features: List[str],
                 fuse_in_features: List[str], conv_dim: int = 256, mask_dim: int = 256):
        super().__init__()
        names = list(dict.fromkeys(list(decoder_features) + list(fuse_in_features)))
        _check_features(input_shape, names)
        channels = {input_shape[f].channels for f in names}
        if len(channels) != 1:
            raise ValueError("vitdet_sum pixel decoder: the summed levels must have one channel "
                             f"count, got { {f: input_shape[f].channels for f in names} }")
        c = channels.pop()
        self.sum_features = sorted(names, key=lambda f: -input_shape[f].stride)
        self.decoder_features = sorted(decoder_features, key=lambda f: -input_shape[f].stride)
        self.decoder_proj = nn.ModuleList(
            nn.Identity() if c == conv_dim else nn.Conv2d(c, conv_dim, 1)
            for _ in self.decoder_features)
        self.mask_proj = nn.Identity() if c == mask_dim else nn.Conv2d(c, mask_dim, 1)

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        p = cfg.MODEL.DATASEG.PIXEL_DECODER
        return {"input_shape": input_shape, "decoder_features": list(p.DEFORM_IN_FEATURES),
                "fuse_in_features": list(p.FUSE_IN_FEATURES), "conv_dim": p.CONVS_DIM,
                "mask_dim": cfg.MODEL.DATASEG.MASK_DIM}

    def forward(self, features: Dict[str, torch.Tensor]):
        """{name: (B, C, H_f, W_f)} -> (F = sum of levels at the finest size (B, MASK_DIM, ...),
        [DEFORM_IN_FEATURES maps, coarsest first])."""
        finest = features[self.sum_features[-1]]
        size = finest.shape[-2:]
        total = finest
        for f in self.sum_features[:-1]:
            total = total + F.interpolate(features[f], size=size, mode="bilinear",
                                          align_corners=False)
        multi_scale = [proj(features[f]) for f, proj in zip(self.decoder_features,
                                                             self.decoder_proj)]
        return self.mask_proj(total), multi_scale


PIXEL_DECODERS = {
    "msdeform": MSDeformAttnPixelDecoder,
    "transformer_fpn": TransformerEncoderFPNPixelDecoder,
    "vitdet_sum": ViTDetSumPixelDecoder,
}


def build_pixel_decoder(cfg, input_shape: Dict[str, ShapeSpec]) -> nn.Module:
    """The pixel decoder named by MODEL.DATASEG.PIXEL_DECODER.NAME over these backbone shapes."""
    name = cfg.MODEL.DATASEG.PIXEL_DECODER.NAME
    if name not in PIXEL_DECODERS:
        raise ValueError(f"MODEL.DATASEG.PIXEL_DECODER.NAME: {name!r} is not one of "
                         f"{sorted(PIXEL_DECODERS)}")
    return PIXEL_DECODERS[name](cfg, input_shape)
