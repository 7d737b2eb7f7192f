"""Fixed 2-D sine position encoding (as in DETR/Mask2Former) for image feature maps.

The pixel decoder and the transformer decoder add it to keys/queries so that attention, which
is permutation-invariant, knows where each feature sits.
"""
import math

import torch
from torch import nn


class PositionEmbeddingSine(nn.Module):
    """Sine/cosine encoding of normalised (y, x) positions; ``num_pos_feats`` channels per axis."""

    def __init__(self, num_pos_feats: int = 128, temperature: float = 10000.0,
                 normalize: bool = True, scale: float = 2 * math.pi):
        super().__init__()
        self.num_pos_feats = num_pos_feats
        self.temperature = temperature
        self.normalize = normalize
        self.scale = scale
        self._cache = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C, H, W) -> (B, 2 * num_pos_feats, H, W); depends only on H, W (cached)."""
        b, _, h, w = x.shape
        if torch.jit.is_tracing():  # sizes are symbolic: computed in the graph, not cached
            return self._compute(h, w, x.device).to(x.dtype).expand(b, -1, -1, -1)
        key = (h, w, x.device, x.dtype)
        pos = self._cache.get(key)
        if pos is None:
            pos = self._compute(h, w, x.device).to(x.dtype)
            if len(self._cache) > 32:
                self._cache.clear()
            self._cache[key] = pos
        return pos.expand(b, -1, -1, -1)

    def _compute(self, h: int, w: int, device) -> torch.Tensor:
        y = torch.arange(1, h + 1, dtype=torch.float32, device=device)
        x = torch.arange(1, w + 1, dtype=torch.float32, device=device)
        if self.normalize:
            eps = 1e-6
            y = y / (h + eps) * self.scale
            x = x / (w + eps) * self.scale
        dim_t = torch.arange(self.num_pos_feats, dtype=torch.float32, device=device)
        dim_t = self.temperature ** (2 * torch.div(dim_t, 2, rounding_mode="floor")
                                     / self.num_pos_feats)
        px = x[:, None] / dim_t  # (W, F)
        py = y[:, None] / dim_t  # (H, F)
        px = torch.stack((px[:, 0::2].sin(), px[:, 1::2].cos()), dim=2).flatten(1)
        py = torch.stack((py[:, 0::2].sin(), py[:, 1::2].cos()), dim=2).flatten(1)
        pos_y = py[:, None, :].expand(h, w, -1)
        pos_x = px[None, :, :].expand(h, w, -1)
        return torch.cat((pos_y, pos_x), dim=2).permute(2, 0, 1).unsqueeze(0).contiguous()
