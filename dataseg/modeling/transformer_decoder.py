"""Masked-attention transformer decoder (Mask2Former) over N learnable segment queries.

Layers visit the multi-scale features round-robin (coarsest first); each layer's cross-attention
only sees pixels where the previous prediction's mask is >= 0.5 at that scale. A prediction
(class embedding + mask logits) is made from the learnable queries and after every layer, for
deep supervision. Class embeddings go to the text classifier outside this module, so the
decoder is vocabulary-free.

Dataset-specific switches (paper Table 5, ``MODEL.DATASEG.DATASET_SPECIFIC``): per-dataset
learnable queries and/or per-dataset class and mask heads, one copy per owner dataset, chosen
by ``forward(..., dataset=name)``. Off (the default), every parameter is shared.
"""
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from torch import nn

from .dataset_specific import DatasetIndex
from .position_encoding import PositionEmbeddingSine
from .text_classifier import build_class_head


class MLP(nn.Module):
    """Stack of linear layers with ReLU between them (not after the last)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int):
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))

    def forward(self, x):
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = F.relu(x)
        return x


class AttentionLayer(nn.Module):
    """Multi-head attention + residual + LayerNorm (post-norm, or pre-norm if asked).

    The parameters are ``nn.MultiheadAttention``'s (``attn.in_proj_weight``, ...: the layout
    Mask2Former's checkpoints convert to); the forward computes the same attention with
    ``scaled_dot_product_attention`` directly, in about half the operators of
    ``nn.MultiheadAttention``'s training path (its argument checks, mask conversion and
    per-head reshapes), and takes an attention mask broadcast over the heads (issue 22)."""

    def __init__(self, d_model: int, nhead: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout, batch_first=True)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for p in self.attn.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt, query_pos, memory, memory_pos, attn_mask=None, batch: int = 0,
                memory_with_pos=None):
        """Queries of ``batch`` images flattened, tgt and query_pos (B*Q, C) (or (B, Q, C));
        memory, memory_pos (B*L, C) (or (B, L, C)), or None for self-attention;
        ``memory_with_pos`` optionally memory + memory_pos already summed (shared by the
        layers that read the same level); attn_mask (B, 1, Q, L) bool, True where a query
        may attend (or None). Returns tgt's shape. Linear maps of 2-D inputs cost two
        operators instead of four (and fewer in backward)."""
        shape = tgt.shape
        if tgt.dim() == 3:
            batch = shape[0]
            tgt, query_pos = tgt.flatten(0, 1), query_pos.flatten(0, 1)
            if memory is not None:
                memory, memory_pos = memory.flatten(0, 1), memory_pos.flatten(0, 1)
        q_in = self.norm(tgt) if self.pre_norm else tgt
        a = self.attn
        c = q_in.shape[1]
        b, nq, h = batch, q_in.shape[0] // batch, a.num_heads
        if memory is None:  # self-attention: queries and keys from the same input
            w_qk, w_v = a.in_proj_weight.split([2 * c, c])
            b_qk, b_v = a.in_proj_bias.split([2 * c, c])
            q, k = F.linear(q_in + query_pos, w_qk, b_qk).view(b, nq, 2, h, c // h).permute(
                2, 0, 3, 1, 4).unbind(0)
            v = F.linear(q_in, w_v, b_v).view(b, nq, h, c // h).transpose(1, 2)
        else:
            nk = memory.shape[0] // b
            if memory_with_pos is None:
                memory_with_pos = memory + memory_pos
            w_q, w_k, w_v = a.in_proj_weight.split(c)
            b_q, b_k, b_v = a.in_proj_bias.split(c)
            q = F.linear(q_in + query_pos, w_q, b_q).view(b, nq, h, c // h).transpose(1, 2)
            k = F.linear(memory_with_pos, w_k, b_k).view(b, nk, h, c // h).transpose(1, 2)
            v = F.linear(memory, w_v, b_v).view(b, nk, h, c // h).transpose(1, 2)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask,
                                             dropout_p=a.dropout if self.training else 0.0)
        out = F.linear(out.transpose(1, 2).reshape(b * nq, c), a.out_proj.weight,
                       a.out_proj.bias)
        tgt = tgt + self.dropout(out)
        return (tgt if self.pre_norm else self.norm(tgt)).view(shape)


class FFNLayer(nn.Module):
    """Feed-forward block + residual + LayerNorm."""

    def __init__(self, d_model: int, dim_feedforward: int, dropout: float, pre_norm: bool):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.pre_norm = pre_norm
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, tgt):
        x = self.norm(tgt) if self.pre_norm else tgt
        tgt = tgt + self.dropout(self.linear2(self.dropout(F.relu(self.linear1(x)))))
        return tgt if self.pre_norm else self.norm(tgt)


class MaskedAttentionDecoder(nn.Module):
    """(multi-scale features, mask features) -> per-query class embeddings and mask logits."""

    @configurable
    def __init__(self, *, in_channels: int, text_dim: int, num_queries: int = 100,
                 hidden_dim: int = 256, nheads: int = 8, dim_feedforward: int = 2048,
                 dec_layers: int = 9, mask_dim: int = 256, num_feature_levels: int = 3,
                 dropout: float = 0.0, pre_norm: bool = False,
                 class_head: str = "linear_relu_linear",
                 specific_queries: bool = False, specific_heads: bool = False,
                 dataset_index: Optional[DatasetIndex] = None):
        super().__init__()
        if (specific_queries or specific_heads) and dataset_index is None:
            raise ValueError("dataset-specific queries/heads need a dataset_index")
        self.dataset_index = dataset_index if (specific_queries or specific_heads) else None
        self.specific_queries, self.specific_heads = specific_queries, specific_heads
        copies = len(dataset_index) if self.dataset_index is not None else 1
        self.num_queries = num_queries
        self.nheads = nheads
        self.num_layers = dec_layers
        self.num_feature_levels = num_feature_levels
        self.pe_layer = PositionEmbeddingSine(hidden_dim // 2, normalize=True)
        self.level_embed = nn.Embedding(num_feature_levels, hidden_dim)
        self.input_proj = nn.ModuleList()
        for _ in range(num_feature_levels):
            if in_channels != hidden_dim:
                conv = nn.Conv2d(in_channels, hidden_dim, 1)
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.zeros_(conv.bias)
                self.input_proj.append(conv)
            else:
                self.input_proj.append(nn.Identity())
        if specific_queries:
            self.query_feat = nn.ModuleList(nn.Embedding(num_queries, hidden_dim)
                                            for _ in range(copies))
            self.query_embed = nn.ModuleList(nn.Embedding(num_queries, hidden_dim)
                                             for _ in range(copies))
        else:
            self.query_feat = nn.Embedding(num_queries, hidden_dim)
            self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.cross_layers = nn.ModuleList(
            AttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers))
        self.self_layers = nn.ModuleList(
            AttentionLayer(hidden_dim, nheads, dropout, pre_norm) for _ in range(dec_layers))
        self.ffn_layers = nn.ModuleList(
            FFNLayer(hidden_dim, dim_feedforward, dropout, pre_norm) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        # class embedding head (MODEL.DATASEG.CLASS_HEAD): the paper's linear + ReLU, or that
        # followed by a linear projection into the text space (a ReLU output alone is
        # non-negative and cannot align with most text directions)
        def make_class_head():
            return build_class_head(class_head, hidden_dim, text_dim)

        if specific_heads:
            self.class_embed = nn.ModuleList(make_class_head() for _ in range(copies))
            self.mask_embed = nn.ModuleList(MLP(hidden_dim, hidden_dim, mask_dim, 3)
                                            for _ in range(copies))
        else:
            self.class_embed = make_class_head()
            self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    @classmethod
    def from_config(cls, cfg, in_channels: int, text_dim: int):
        d = cfg.MODEL.DATASEG
        class_head = d.CLASS_HEAD
        if d.CLASSIFIER.NAME == "linear":  # Mask2Former's class_embed: hidden -> K + 1 logits
            class_head, text_dim = "linear", int(d.CLASSIFIER.NUM_CLASSES) + 1
        return {"in_channels": in_channels, "text_dim": text_dim,
                "num_queries": d.NUM_OBJECT_QUERIES, "hidden_dim": d.HIDDEN_DIM,
                "nheads": d.NHEADS, "dim_feedforward": d.DIM_FEEDFORWARD,
                "dec_layers": d.DEC_LAYERS, "mask_dim": d.MASK_DIM,
                "num_feature_levels": len(d.PIXEL_DECODER.DEFORM_IN_FEATURES),
                "dropout": d.DROPOUT, "pre_norm": d.PRE_NORM, "class_head": class_head,
                "specific_queries": bool(d.DATASET_SPECIFIC.QUERIES),
                "specific_heads": bool(d.DATASET_SPECIFIC.HEADS),
                "dataset_index": (DatasetIndex.from_cfg(cfg) if d.DATASET_SPECIFIC.QUERIES
                                  or d.DATASET_SPECIFIC.HEADS else None)}

    def _attn_mask(self, mask_logits_small: torch.Tensor) -> torch.Tensor:
        """(B, N, h, w) logits at the target scale -> (B, 1, N, h*w) bool, True where a query
        may attend (sigmoid >= 0.5), broadcast over the heads. Rows that would block
        everything are opened entirely."""
        blocked = mask_logits_small.detach().flatten(2) < 0  # sigmoid < 0.5
        return (~blocked | blocked.all(-1, keepdim=True))[:, None]

    def forward(self, multi_scale_features: List[torch.Tensor], mask_features: torch.Tensor,
                return_aux=True, dataset: Optional[str] = None) -> Dict:
        """``dataset``: the batch's dataset name (used only by dataset-specific modules).

        ``return_aux``:
          - False: "class_embeds" (B,N,D) and "pred_masks" (B,N,H,W) of the last layer only;
            the attention masks come from mask features resized to each scale and only the
            last layer's masks are computed at full resolution (much cheaper).
          - True: the same plus "aux_outputs", a list with the same two keys for the query
            prediction and each earlier layer (views of the stacked tensors below).
          - "stacked": "class_embeds" (S,B,N,D) and "pred_masks" (S,B,N,H,W) of all S =
            layers + 1 predictions (the query prediction first, the last layer last), each
            computed in ONE call over all of them (the training path: deep supervision).

        The attention mask of every layer is computed from the mask features resized to that
        layer's scale: bilinear resizing is linear, so this equals resizing the
        full-resolution mask logits (up to rounding), without computing them per layer.
        """
        if len(multi_scale_features) != self.num_feature_levels:
            raise ValueError(f"decoder expects {self.num_feature_levels} feature levels, got "
                             f"{len(multi_scale_features)}")
        b = mask_features.shape[0]
        # tokens flattened over the batch, (B*L, C) and (B*Q, C): every linear map in the
        # layers is then one matrix product (issue 22)
        srcs, poses, with_pos, sizes = [], [], [], []
        for i, x in enumerate(multi_scale_features):
            sizes.append(x.shape[-2:])
            pos = self.pe_layer(x).flatten(2).transpose(1, 2).reshape(-1, x.shape[1])
            src = (self.input_proj[i](x).flatten(2).transpose(1, 2)
                   + self.level_embed.weight[i]).reshape(pos.shape[0], -1)
            poses.append(pos)
            srcs.append(src)
            with_pos.append(src + pos)  # the keys' input, shared by the layers of this level
        small_features = [F.interpolate(mask_features, size=s, mode="bilinear",
                                        align_corners=False) for s in sizes]
        copy = self.dataset_index(dataset) if self.dataset_index is not None else 0
        query_feat, query_embed = self.query_feat, self.query_embed
        if self.specific_queries:
            query_feat, query_embed = query_feat[copy], query_embed[copy]
        class_head, mask_head = self.class_embed, self.mask_embed
        if self.specific_heads:
            class_head, mask_head = class_head[copy], mask_head[copy]
        nq = query_feat.weight.shape[0]
        query_pos = query_embed.weight.repeat(b, 1)  # (B*Q, C)
        output = query_feat.weight.repeat(b, 1)
        every = bool(return_aux)  # predictions of every layer are kept

        decs, mask_embs = [], []

        def predict(out, level_next, final):
            """Keeps this prediction's normalised queries and mask embeddings; returns the
            next layer's attention mask (None after the last layer)."""
            dec = self.decoder_norm(out)
            mask_emb = mask_head(dec).view(b, nq, -1)
            if every or final:
                decs.append(dec)
                mask_embs.append(mask_emb)
            if final:
                return None
            small = torch.einsum("bqc,bchw->bqhw", mask_emb, small_features[level_next])
            return self._attn_mask(small)

        attn_mask = predict(output, 0, self.num_layers == 0)
        for i in range(self.num_layers):
            lvl = i % self.num_feature_levels
            output = self.cross_layers[i](output, query_pos, srcs[lvl], poses[lvl], attn_mask,
                                          batch=b, memory_with_pos=with_pos[lvl])
            output = self.self_layers[i](output, query_pos, None, None, batch=b)
            output = self.ffn_layers[i](output)
            attn_mask = predict(output, (i + 1) % self.num_feature_levels,
                                i == self.num_layers - 1)
        if not every:
            return {"class_embeds": class_head(decs[-1]).view(b, nq, -1),
                    "pred_masks": torch.einsum("bqc,bchw->bqhw", mask_embs[-1], mask_features)}
        # every prediction's class embeddings and full-resolution masks in one call each
        class_embeds = class_head(torch.cat(decs)).view(len(decs), b, nq, -1)
        pred_masks = torch.einsum("sbqc,bchw->sbqhw", torch.stack(mask_embs), mask_features)
        if return_aux == "stacked":
            return {"class_embeds": class_embeds, "pred_masks": pred_masks}
        return {"class_embeds": class_embeds[-1], "pred_masks": pred_masks[-1],
                "aux_outputs": [{"class_embeds": c, "pred_masks": m} for c, m in
                                zip(class_embeds[:-1], pred_masks[:-1])]}
