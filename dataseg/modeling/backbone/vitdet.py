"""ViTDet backbone: a plain ViT (patch 16) whose blocks use windowed attention except a few with
global attention, decomposed relative position biases, an absolute position embedding
interpolated from the pretraining grid, drop path, optional activation checkpointing, and
ViTDet's simple feature pyramid (strides 4, 8, 16, 32 from the stride-16 map).

Building blocks come from timm (pinned in requirements/): ``timm.models.vision_transformer_sam``
``Block`` is ViTDet's block (pre-norm attention + MLP on an NHWC map, optional window partition
with padding, decomposed relative position bias interpolated to the actual sizes, drop path);
``PatchEmbed``, ``LayerNorm2d`` and ``resample_abs_pos_embed`` likewise. What is written here: the
trunk that wires them as ViTDet does, the pyramid, and checkpoint conversion (MAE / timm ViT
layouts -> this module's names).

Output features are named ``res2``..``res5`` (strides 4..32) so the pixel-decoder keys of the
ResNet configs (``DEFORM_IN_FEATURES``/``FUSE_IN_FEATURES``) work unchanged.

Pretrained weights follow Detectron2's convention: building the backbone reads no file.
``MODEL.VIT.WEIGHTS`` is loaded by ``load_pretrained_vit`` when a training starts
(``DaTaSegTrainer.resume_or_load``: not when resuming, nor when MODEL.WEIGHTS already gave the
ViT), so evaluation, predictors and export need only MODEL.WEIGHTS.
"""
import argparse
import logging
import math
import os
from typing import Collection, Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import configurable
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, Backbone
from timm.layers import LayerNorm2d, PatchEmbed, resample_abs_pos_embed
from timm.models.vision_transformer_sam import Block, window_partition, window_unpartition
from torch import nn
from torch.utils.checkpoint import checkpoint

__all__ = ["ViT", "ViTDetBackbone", "SimpleFeaturePyramid", "build_vitdet_backbone",
           "convert_vit_state_dict", "load_vit_checkpoint", "load_pretrained_vit",
           "window_partition", "window_unpartition", "NotAViTCheckpointError"]

logger = logging.getLogger(__name__)

_STRIDES = {"res2": 4, "res3": 8, "res4": 16, "res5": 32}


class ViT(nn.Module):
    """Plain ViT trunk: (B, 3, H, W) images (H, W multiples of the patch) -> (B, C, H/p, W/p)."""

    def __init__(self, *, pretrain_img_size: int = 224, img_size: int = 1024, patch_size: int = 16,
                 in_chans: int = 3, embed_dim: int = 768, depth: int = 12, num_heads: int = 12,
                 mlp_ratio: float = 4.0, qkv_bias: bool = True, drop_path_rate: float = 0.0,
                 window_size: int = 14, global_blocks: Sequence[int] = (2, 5, 8, 11),
                 use_rel_pos: bool = True, use_act_checkpoint: bool = False):
        """
        Args:
            pretrain_img_size: image side the absolute position embedding was learned at (its
                grid is pretrain_img_size / patch_size, interpolated to every input).
            img_size: training image side; sets the length of the global blocks' relative
                position tables (interpolated to other sizes at run time).
            window_size: window side in tokens of the windowed blocks (0 = all global).
            global_blocks: indexes of the blocks with global attention.
            drop_path_rate: stochastic depth of the last block; it rises linearly from 0.
            use_act_checkpoint: recompute each block's activations in the backward pass
                (saves memory on GPUs, costs one more forward per block).
        """
        super().__init__()
        bad = [i for i in global_blocks if not 0 <= i < depth]
        if bad:
            raise ValueError(f"MODEL.VIT.GLOBAL_BLOCKS {list(global_blocks)}: indexes {bad} "
                             f"outside 0..{depth - 1}")
        if embed_dim % num_heads:
            raise ValueError(f"MODEL.VIT.EMBED_DIM {embed_dim} not divisible by NUM_HEADS "
                             f"{num_heads}")
        if pretrain_img_size % patch_size or img_size % patch_size:
            raise ValueError(f"MODEL.VIT: PRETRAIN_IMG_SIZE {pretrain_img_size} and IMG_SIZE "
                             f"{img_size} must be multiples of PATCH_SIZE {patch_size}")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.use_act_checkpoint = use_act_checkpoint
        self.patch_embed = PatchEmbed(img_size=None, patch_size=patch_size, in_chans=in_chans,
                                      embed_dim=embed_dim, output_fmt="NHWC",
                                      strict_img_size=False)
        self.pretrain_grid = pretrain_img_size // patch_size
        self.pos_embed = nn.Parameter(torch.zeros(1, self.pretrain_grid ** 2, embed_dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        grid = img_size // patch_size
        dpr = torch.linspace(0, drop_path_rate, depth).tolist()
        self.global_blocks = sorted(set(global_blocks))
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                  drop_path=dpr[i], norm_layer=_layer_norm, use_rel_pos=use_rel_pos,
                  window_size=0 if i in self.global_blocks else window_size,
                  input_size=(grid, grid))
            for i in range(depth))
        self.apply(_init_weights)

    def abs_pos(self, h: int, w: int) -> torch.Tensor:
        """The pretraining-grid position embedding resized (bicubic) to (1, h, w, C)."""
        g = self.pretrain_grid
        pos = self.pos_embed
        if (h, w) != (g, g):
            pos = resample_abs_pos_embed(pos, new_size=[h, w], old_size=[g, g],
                                         num_prefix_tokens=0, interpolation="bicubic",
                                         antialias=False)
        return pos.reshape(1, h, w, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, embed_dim, H / patch, W / patch)."""
        x = self.patch_embed(x)
        x = x + self.abs_pos(x.shape[1], x.shape[2])
        for blk in self.blocks:
            if self.use_act_checkpoint and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        return x.permute(0, 3, 1, 2)


def _layer_norm(dim, **kwargs):
    return nn.LayerNorm(dim, eps=1e-6, **kwargs)


def _init_weights(m):
    # ViTDet/MAE: truncated-normal linear weights, zero biases, unit LayerNorms.
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class SimpleFeaturePyramid(nn.Module):
    """ViTDet's simple feature pyramid: the stride-16 map -> one map per requested stride.

    Stride 4: deconv 2x2/2, LayerNorm, GELU, deconv 2x2/2; stride 8: deconv 2x2/2; stride 16:
    identity; stride 32: max-pool 2x2/2. Each is followed by a 1x1 and a 3x3 conv (no bias), each
    with a channel LayerNorm.
    """

    def __init__(self, in_channels: int, out_channels: int, in_stride: int,
                 out_features: Sequence[str]):
        super().__init__()
        self.out_features = [f for f in _STRIDES if f in out_features]
        self.stages = nn.ModuleDict()
        c = in_channels
        for f in self.out_features:
            scale = in_stride / _STRIDES[f]
            if scale == 4:
                layers, dim = [nn.ConvTranspose2d(c, c // 2, 2, 2), LayerNorm2d(c // 2),
                               nn.GELU(), nn.ConvTranspose2d(c // 2, c // 4, 2, 2)], c // 4
            elif scale == 2:
                layers, dim = [nn.ConvTranspose2d(c, c // 2, 2, 2)], c // 2
            elif scale == 1:
                layers, dim = [], c
            elif scale == 0.5:
                layers, dim = [nn.MaxPool2d(2, 2)], c
            else:
                raise ValueError(f"simple feature pyramid: no stage for {f} (stride "
                                 f"{_STRIDES[f]}) from a stride-{in_stride} map")
            lateral = nn.Conv2d(dim, out_channels, 1, bias=False)
            output = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
            for conv in (lateral, output):  # Caffe2-style Xavier fill, as ViTDet
                nn.init.kaiming_uniform_(conv.weight, a=1)
            layers += [lateral, LayerNorm2d(out_channels), output, LayerNorm2d(out_channels)]
            self.stages[f] = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, C, h, w) -> {name: (B, out_channels, h * 16 / stride, w * 16 / stride)}."""
        return {f: self.stages[f](x) for f in self.out_features}


class ViTDetBackbone(Backbone):
    """ViT trunk + simple feature pyramid, as a Detectron2 ``Backbone`` (res2..res5). Built at
    random init: ``load_pretrained_vit`` loads MODEL.VIT.WEIGHTS at training start."""

    @configurable
    def __init__(self, *, vit: ViT, out_channels: int = 256,
                 out_features: Sequence[str] = ("res2", "res3", "res4", "res5")):
        super().__init__()
        bad = [f for f in out_features if f not in _STRIDES]
        if bad or not out_features:
            raise ValueError(f"MODEL.VIT.OUT_FEATURES {list(out_features)} must be a non-empty "
                             f"subset of {list(_STRIDES)}")
        self.vit = vit
        self.pyramid = SimpleFeaturePyramid(vit.embed_dim, out_channels, vit.patch_size,
                                            out_features)
        self.feature_names = list(self.pyramid.out_features)
        self.feature_strides = {f: _STRIDES[f] for f in self.feature_names}
        self.feature_channels = {f: out_channels for f in self.feature_names}


    def output_shape(self) -> Dict[str, ShapeSpec]:
        """Channels and stride of each output feature (``feature_names``)."""
        return {f: ShapeSpec(channels=self.feature_channels[f], stride=self.feature_strides[f])
                for f in self.feature_names}

    @classmethod
    def from_config(cls, cfg, input_shape: ShapeSpec):
        v = cfg.MODEL.VIT
        vit = ViT(pretrain_img_size=v.PRETRAIN_IMG_SIZE, img_size=v.IMG_SIZE,
                  patch_size=v.PATCH_SIZE, in_chans=input_shape.channels or 3,
                  embed_dim=v.EMBED_DIM, depth=v.DEPTH, num_heads=v.NUM_HEADS,
                  mlp_ratio=v.MLP_RATIO, qkv_bias=v.QKV_BIAS, drop_path_rate=v.DROP_PATH_RATE,
                  window_size=v.WINDOW_SIZE, global_blocks=list(v.GLOBAL_BLOCKS),
                  use_rel_pos=v.USE_REL_POS, use_act_checkpoint=v.ACTIVATION_CHECKPOINT)
        return {"vit": vit, "out_channels": v.OUT_CHANNELS,
                "out_features": list(v.OUT_FEATURES)}

    @property
    def num_layers(self) -> int:
        """Transformer depth, for layer-wise lr decay (engine/optimizer.py)."""
        return self.vit.depth

    def forward(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """(B, 3, H, W), H and W multiples of 32 -> {res2..res5: (B, OUT_CHANNELS, H/s, W/s)}."""
        if x.dim() != 4:
            raise ValueError(f"ViTDet expects (N, C, H, W) images, got {tuple(x.shape)}")
        return self.pyramid(self.vit(x))

    @property
    def size_divisibility(self) -> int:
        # the stride-32 level max-pools the stride-16 map
        return self.vit.patch_size * 2


@BACKBONE_REGISTRY.register()
def build_vitdet_backbone(cfg, input_shape: ShapeSpec) -> Backbone:
    """``MODEL.BACKBONE.NAME = "build_vitdet_backbone"``; reads MODEL.VIT."""
    return ViTDetBackbone(cfg, input_shape)


# ------------------------------------------------------------------ pretrained checkpoints
class NotAViTCheckpointError(ValueError):
    """The file holds no plain-ViT weights (patch embedding + transformer blocks)."""


# keys of a plain ViT that ViTDet does not use (classification token, final norms, heads)
_UNUSED_PREFIXES = ("cls_token", "reg_token", "dist_token", "norm.", "fc_norm.", "head.",
                    "head_dist.", "pre_logits.", "mask_token", "decoder", "attn_pool.")


def _unwrap(obj, path: str) -> Dict[str, torch.Tensor]:
    """The state dict inside a checkpoint: MAE's ``model``, ``state_dict``/``module`` wrappers,
    a ``module.`` / ``backbone.`` / ``encoder.`` prefix shared by all keys."""
    for key in ("model", "state_dict", "module", "model_ema"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise NotAViTCheckpointError(f"{path}: no state dict found (got {type(obj).__name__})")
    sd = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    for prefix in ("module.", "backbone.", "encoder."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def convert_vit_state_dict(sd: Dict[str, torch.Tensor], grid: int,
                           path: str = "<state dict>") -> Tuple[Dict[str, torch.Tensor], Dict]:
    """MAE / timm ViT keys -> this ``ViT``'s keys.

    ``pos_embed`` may carry prefix tokens (class/register tokens: MAE and most timm ViTs) and
    may be flat (1, P + g*g, C) or NHWC (1, g, g, C) (timm's SAM layout); the prefix is dropped
    and the grid resized (bicubic) to the model's pretraining grid ``grid``. Returns the
    converted dict and info {"pos_embed_from": (g, g), "dropped": [keys not used by ViTDet]}.
    """
    if "patch_embed.proj.weight" not in sd or not any(k.startswith("blocks.") for k in sd):
        some = sorted(sd)[:8]
        hint = ""
        if any(k.startswith("backbone.vit.") for k in sd):
            hint = " It looks like a DaTaSeg checkpoint: give it as MODEL.WEIGHTS instead."
        raise NotAViTCheckpointError(
            f"{path} is not a ViT checkpoint: no 'patch_embed.proj.weight' and 'blocks.N.*' "
            f"keys (MAE / timm ViT layout expected); its first keys are {some}.{hint}")
    out, dropped, info = {}, [], {}
    for k, v in sd.items():
        if k.startswith(_UNUSED_PREFIXES):
            dropped.append(k)
        elif k == "pos_embed":
            if v.dim() == 4:  # (1, g, g, C)
                old = [v.shape[1], v.shape[2]]
                v = v.reshape(1, -1, v.shape[-1])
                prefix = 0
            else:
                n = v.shape[1]
                side = math.isqrt(n)
                prefix = n - side * side
                if prefix > 8:  # not a square grid plus a few prefix tokens
                    raise NotAViTCheckpointError(
                        f"{path}: pos_embed of shape {tuple(v.shape)} is not a square grid "
                        "with at most 8 prefix tokens")
                old = [side, side]
            info["pos_embed_from"] = tuple(old)
            info["pos_embed_prefix_tokens"] = prefix
            v = v[:, prefix:]
            if old != [grid, grid]:
                v = resample_abs_pos_embed(v, new_size=[grid, grid], old_size=old,
                                           num_prefix_tokens=0, interpolation="bicubic",
                                           antialias=False)
            out[k] = v
        else:
            out[k] = v
    info["dropped"] = sorted(dropped)
    return out, info


def _read(path: str):
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    # MAE's published files may hold the training argparse.Namespace next to the weights
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def load_vit_checkpoint(vit: ViT, path: str) -> Dict[str, List[str]]:
    """Loads MAE / timm ViT weights from ``path`` into ``vit``; logs and returns the report
    {"missing": model keys left at their init, "new_in_vitdet": the subset that the plain ViT
    has no counterpart for (relative position tables), "unused": checkpoint keys not loaded,
    "shape_mismatch": ..., "pos_embed_from": (g, g) grid of the checkpoint}.

    Raises FileNotFoundError for a missing file and NotAViTCheckpointError for a file without
    ViT weights. Nothing is downloaded.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"MODEL.VIT.WEIGHTS: {path} not found (see "
                                "docs/GETTING_STARTED.md, 'ViTDet backbones', for where to get "
                                "the MAE / timm checkpoints)")
    try:
        raw = _read(path)
    except Exception as e:  # noqa: BLE001 - name the file in any read failure
        raise NotAViTCheckpointError(f"MODEL.VIT.WEIGHTS: cannot read {path} as a PyTorch / "
                                     f"safetensors checkpoint: {e}") from e
    sd, info = convert_vit_state_dict(_unwrap(raw, path), vit.pretrain_grid, path)
    own = vit.state_dict()
    mismatch = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                for k, v in sd.items() if k in own and own[k].shape != v.shape]
    if mismatch:
        raise ValueError(f"MODEL.VIT.WEIGHTS {path} does not fit MODEL.VIT (embed dim, depth, "
                         f"patch size?): {mismatch[:5]}")
    result = vit.load_state_dict(sd, strict=False)
    missing = sorted(result.missing_keys)
    new = [k for k in missing if ".rel_pos_" in k]
    report = {"missing": missing, "new_in_vitdet": new,
              "unused": sorted(result.unexpected_keys) + info["dropped"],
              "pos_embed_from": info.get("pos_embed_from")}
    logger.info("ViT weights %s: %d tensors loaded; pos_embed %s -> %s grid; new in ViTDet "
                "(left at init): %d relative-position tables; unused: %s", path,
                len(sd) - len(result.unexpected_keys), info.get("pos_embed_from"),
                (vit.pretrain_grid, vit.pretrain_grid), len(new), report["unused"])
    other = [k for k in missing if k not in new]
    if other:
        logger.warning("ViT weights %s: model keys missing from the file: %s", path, other)
    return report


def load_pretrained_vit(model: nn.Module, path: str,
                        missing_from_weights: Optional[Collection[str]] = None
                        ) -> Optional[Dict[str, List[str]]]:
    """Loads MODEL.VIT.WEIGHTS ``path`` into the ViT trunk of ``model`` (a DaTaSeg model, its
    DDP wrapper, or any module whose ``backbone`` is a ``ViTDetBackbone``); what a training
    start does. ``missing_from_weights``: when MODEL.WEIGHTS was loaded first, the model keys
    it lacked (the checkpointer's missing keys): if it held any key of the ViT trunk, the
    trunk came from it and ``path`` is not read. Returns ``load_vit_checkpoint``'s report, or
    None when nothing was loaded (``path`` empty, no ViTDet backbone, trunk already loaded).
    """
    if not path:
        return None
    model = getattr(model, "module", model)  # DistributedDataParallel
    backbone = getattr(model, "backbone", None)
    if not isinstance(backbone, ViTDetBackbone):
        logger.warning("MODEL.VIT.WEIGHTS %s not read: the backbone is %s, not ViTDet", path,
                       type(backbone).__name__)
        return None
    if missing_from_weights is not None:
        prefix = next(n for n, m in model.named_modules() if m is backbone.vit) + "."
        missing = set(missing_from_weights)
        held = [k for k in model.state_dict() if k.startswith(prefix) and k not in missing]
        if held:
            logger.info("MODEL.VIT.WEIGHTS %s not read: MODEL.WEIGHTS gave the ViT trunk "
                        "(%d tensors)", path, len(held))
            return None
    return load_vit_checkpoint(backbone.vit, path)
