"""Mask2Former checkpoints -> DaTaSeg's module names.

Two layouts (facts from Mask2Former's and HF transformers' module structure; no code of theirs):

- Mask2Former's own (its model zoo: Detectron2 pickles, ``{"model": {name: numpy array}}``):
  ``backbone.*`` (Detectron2's ResNet, the same names as DaTaSeg's),
  ``sem_seg_head.pixel_decoder.*`` and ``sem_seg_head.predictor.*``;
- HF transformers' ``Mask2FormerForUniversalSegmentation`` (``model.pixel_level_module.encoder``
  = the backbone, ``model.pixel_level_module.decoder``, ``model.transformer_module``,
  ``class_predictor``); its decoder self-attention is split into q/k/v projections (the
  cross-attention fused), and either form is accepted for both attentions.

Both map onto DaTaSeg's ``MSDeformAttnPixelDecoder`` and ``MaskedAttentionDecoder`` one tensor to
one tensor, except split q/k/v projections, which are concatenated into ``in_proj_*``.
Mask2Former's ``class_embed`` / HF's ``class_predictor`` becomes
``transformer_decoder.class_embed`` (the fixed-vocabulary linear head,
``MODEL.DATASEG.CLASSIFIER.NAME: "linear"``); a model with the text classifier has no such key
and the caller drops it (reported).

Counting: Mask2Former's and HF's ``DEC_LAYERS``/``decoder_layers`` count the prediction made
from the learnable queries as a layer (10 in the model zoo = 9 attention layers); DaTaSeg's
``MODEL.DATASEG.DEC_LAYERS`` counts attention layers (9).
"""
import re
from typing import Callable, Dict, List, Tuple

from .resnet import convert_hf_resnet

M2F_PREFIXES = ("sem_seg_head.pixel_decoder.", "sem_seg_head.predictor.")
HF_PREFIXES = ("model.pixel_level_module.", "model.transformer_module.")

_FFN = {"fc1": "linear1", "fc2": "linear2"}


def _fpn_index(keys, pattern: str) -> Callable[[int], int]:
    """adapter_k / layer_k are numbered from the finest FPN level (k = 1); DaTaSeg's
    lateral_convs / output_convs start at the coarsest."""
    ks = {int(m.group(1)) for k in keys for m in [re.search(pattern, k)] if m}
    n = max(ks) if ks else 0
    return lambda k: n - k


def _m2f_rules(keys) -> List[Tuple[str, Callable]]:
    fpn = _fpn_index(keys, r"sem_seg_head\.pixel_decoder\.adapter_(\d+)\.")
    pd, pr = r"^sem_seg_head\.pixel_decoder\.", r"^sem_seg_head\.predictor\."
    td = "transformer_decoder."
    return [
        (r"^(backbone\..*)$", lambda m: m.group(1)),
        (pd + r"input_proj\.(\d+)\.([01])\.(weight|bias)$",
         lambda m: f"pixel_decoder.input_proj.{m.group(1)}.{m.group(2)}.{m.group(3)}"),
        (pd + r"transformer\.level_embed$", lambda m: "pixel_decoder.level_embed"),
        (pd + r"transformer\.encoder\.layers\.(\d+)\.(self_attn\.\w+|norm1|norm2|linear1|linear2)"
         r"\.(weight|bias)$",
         lambda m: f"pixel_decoder.layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"),
        (pd + r"mask_features\.(weight|bias)$",
         lambda m: f"pixel_decoder.mask_features.{m.group(1)}"),
        (pd + r"adapter_(\d+)\.(weight|bias|norm\.weight|norm\.bias)$",
         lambda m: f"pixel_decoder.lateral_convs.{fpn(int(m.group(1)))}.{m.group(2)}"),
        (pd + r"layer_(\d+)\.(weight|bias|norm\.weight|norm\.bias)$",
         lambda m: f"pixel_decoder.output_convs.{fpn(int(m.group(1)))}.{m.group(2)}"),
        (pr + r"transformer_self_attention_layers\.(\d+)\.self_attn\.(in_proj_weight|in_proj_bias|"
         r"out_proj\.weight|out_proj\.bias)$",
         lambda m: f"{td}self_layers.{m.group(1)}.attn.{m.group(2)}"),
        (pr + r"transformer_self_attention_layers\.(\d+)\.norm\.(weight|bias)$",
         lambda m: f"{td}self_layers.{m.group(1)}.norm.{m.group(2)}"),
        (pr + r"transformer_cross_attention_layers\.(\d+)\.multihead_attn\.(in_proj_weight|"
         r"in_proj_bias|out_proj\.weight|out_proj\.bias)$",
         lambda m: f"{td}cross_layers.{m.group(1)}.attn.{m.group(2)}"),
        (pr + r"transformer_cross_attention_layers\.(\d+)\.norm\.(weight|bias)$",
         lambda m: f"{td}cross_layers.{m.group(1)}.norm.{m.group(2)}"),
        (pr + r"transformer_ffn_layers\.(\d+)\.(linear1|linear2|norm)\.(weight|bias)$",
         lambda m: f"{td}ffn_layers.{m.group(1)}.{m.group(2)}.{m.group(3)}"),
        (pr + r"(decoder_norm\.(?:weight|bias)|query_feat\.weight|query_embed\.weight|"
         r"level_embed\.weight|input_proj\.\d+\.(?:weight|bias)|"
         r"mask_embed\.layers\.\d\.(?:weight|bias)|class_embed\.(?:weight|bias))$",
         lambda m: td + m.group(1)),
    ]


def _hf_rules(keys) -> List[Tuple[str, Callable]]:
    fpn = _fpn_index(keys, r"pixel_level_module\.decoder\.adapter_(\d+)\.")
    pd, tm = r"^model\.pixel_level_module\.decoder\.", r"^model\.transformer_module\."
    td = "transformer_decoder."
    norm = {"0": "", "1": "norm."}
    return [
        (pd + r"level_embed$", lambda m: "pixel_decoder.level_embed"),
        (pd + r"input_projections\.(\d+)\.([01])\.(weight|bias)$",
         lambda m: f"pixel_decoder.input_proj.{m.group(1)}.{m.group(2)}.{m.group(3)}"),
        (pd + r"encoder\.layers\.(\d+)\.self_attn\.(sampling_offsets|attention_weights|value_proj|"
         r"output_proj)\.(weight|bias)$",
         lambda m: f"pixel_decoder.layers.{m.group(1)}.self_attn.{m.group(2)}.{m.group(3)}"),
        (pd + r"encoder\.layers\.(\d+)\.(self_attn_layer_norm|final_layer_norm|fc1|fc2)\."
         r"(weight|bias)$",
         lambda m: "pixel_decoder.layers.{}.{}.{}".format(
             m.group(1), {"self_attn_layer_norm": "norm1", "final_layer_norm": "norm2",
                          **_FFN}[m.group(2)], m.group(3))),
        (pd + r"mask_projection\.(weight|bias)$",
         lambda m: f"pixel_decoder.mask_features.{m.group(1)}"),
        (pd + r"adapter_(\d+)\.([01])\.(weight|bias)$",
         lambda m: f"pixel_decoder.lateral_convs.{fpn(int(m.group(1)))}."
                   f"{norm[m.group(2)]}{m.group(3)}"),
        (pd + r"layer_(\d+)\.([01])\.(weight|bias)$",
         lambda m: f"pixel_decoder.output_convs.{fpn(int(m.group(1)))}."
                   f"{norm[m.group(2)]}{m.group(3)}"),
        (tm + r"queries_features\.weight$", lambda m: td + "query_feat.weight"),
        (tm + r"queries_embedder\.weight$", lambda m: td + "query_embed.weight"),
        (tm + r"level_embed\.weight$", lambda m: td + "level_embed.weight"),
        (tm + r"input_projections\.(\d+)\.(weight|bias)$",
         lambda m: f"{td}input_proj.{m.group(1)}.{m.group(2)}"),
        (tm + r"decoder\.layers\.(\d+)\.(self_attn|cross_attn)\.(in_proj_weight|in_proj_bias|"
         r"out_proj\.weight|out_proj\.bias)$",
         lambda m: f"{td}{_attn(m.group(2))}.{m.group(1)}.attn.{m.group(3)}"),
        # split projections: q/k/v are concatenated below (see _fuse_qkv)
        (tm + r"decoder\.layers\.(\d+)\.(self_attn|cross_attn)\.([qkv])_proj\.(weight|bias)$",
         lambda m: f"{td}{_attn(m.group(2))}.{m.group(1)}.attn.in_proj_{m.group(4)}#{m.group(3)}"),
        (tm + r"decoder\.layers\.(\d+)\.(self_attn_layer_norm|cross_attn_layer_norm)\."
         r"(weight|bias)$",
         lambda m: "{}{}.{}.norm.{}".format(td, _attn(m.group(2)[:-len("_layer_norm")]),
                                            m.group(1), m.group(3))),
        (tm + r"decoder\.layers\.(\d+)\.(fc1|fc2)\.(weight|bias)$",
         lambda m: f"{td}ffn_layers.{m.group(1)}.{_FFN[m.group(2)]}.{m.group(3)}"),
        (tm + r"decoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)$",
         lambda m: f"{td}ffn_layers.{m.group(1)}.norm.{m.group(2)}"),
        (tm + r"decoder\.layernorm\.(weight|bias)$", lambda m: f"{td}decoder_norm.{m.group(1)}"),
        (tm + r"decoder\.mask_predictor\.mask_embedder\.(\d)\.0\.(weight|bias)$",
         lambda m: f"{td}mask_embed.layers.{m.group(1)}.{m.group(2)}"),
        (r"^class_predictor\.(weight|bias)$", lambda m: f"{td}class_embed.{m.group(1)}"),
    ]


def _attn(name: str) -> str:
    return {"self_attn": "self_layers", "cross_attn": "cross_layers"}[name]


def _rename(state: Dict, rules) -> Tuple[Dict, Dict[str, str], List[str]]:
    compiled = [(re.compile(p), f) for p, f in rules]
    out, mapping, unused = {}, {}, []
    for key, value in state.items():
        for pattern, fn in compiled:
            m = pattern.match(key)
            if m:
                target = fn(m)
                out[target] = value
                mapping[key] = target.split("#")[0]
                break
        else:
            unused.append(key)
    return out, mapping, unused


def _fuse_qkv(state: Dict, concat: Callable) -> Dict:
    """``...in_proj_weight#q/#k/#v`` entries -> one ``in_proj_weight`` (q, k, v stacked, as
    ``nn.MultiheadAttention`` stores them)."""
    out, parts = {}, {}
    for key, value in state.items():
        if "#" in key:
            base, which = key.split("#")
            parts.setdefault(base, {})[which] = value
        else:
            out[key] = value
    for base, qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            missing = sorted({"q", "k", "v"} - set(qkv))
            raise KeyError(f"{base}: split attention projections lack {missing}")
        out[base] = concat([qkv["q"], qkv["k"], qkv["v"]])
    return out


def convert_mask2former(state: Dict, concat: Callable):
    """Mask2Former's Detectron2 layout -> (DaTaSeg state, {source: target}, [unused])."""
    return _rename(state, _m2f_rules(state.keys()))


def convert_hf_mask2former(state: Dict, concat: Callable):
    """HF transformers' layout -> (DaTaSeg state, {source: target}, [unused])."""
    backbone_prefix = "model.pixel_level_module.encoder."
    backbone = {k[len(backbone_prefix):]: v for k, v in state.items()
                if k.startswith(backbone_prefix)}
    rest = {k: v for k, v in state.items() if not k.startswith(backbone_prefix)}
    out, mapping, unused = _rename(rest, _hf_rules(rest.keys()))
    out = _fuse_qkv(out, concat)
    bb, bb_map, bb_unused = convert_hf_resnet(backbone)
    out.update(bb)
    mapping.update({backbone_prefix + k: v for k, v in bb_map.items()})
    unused += [backbone_prefix + k for k in bb_unused]
    return out, mapping, unused
