"""Shared fixtures of the modeling tests: exact point sampling.

The matcher draws its points with ``torch.rand`` and the criterion picks its points with
``sample_points`` (random + uncertainty); both read mask values by bilinear interpolation. The
fixtures below replace those draws by the pixel centres of the mask grid, where interpolation
returns the pixel values exactly, so the tests can write the expected costs and losses out
pixel by pixel (every pixel sampled exactly once).
"""
import pytest
import torch

import dataseg.modeling.criterion as criterion_module
import dataseg.modeling.matcher as matcher_module


def pixel_centres(h: int, w: int) -> torch.Tensor:
    """(h*w, 2) normalised (x, y) coordinates of the pixel centres, row-major."""
    ys, xs = torch.meshgrid((torch.arange(h) + 0.5) / h, (torch.arange(w) + 0.5) / w,
                            indexing="ij")
    return torch.stack([xs.flatten(), ys.flatten()], -1)


@pytest.fixture
def exact_matcher_points(monkeypatch):
    """Call with (h, w): the matcher then samples every pixel centre once (num_points = h*w)."""

    def install(h, w):
        real_rand = torch.rand

        def rand(*size, **kwargs):
            # the matcher's point draws: (..., h*w, 2), one set of points per (set, image)
            if len(size) >= 3 and size[-1] == 2 and size[-2] == h * w:
                return pixel_centres(h, w).expand(*size).clone().to(
                    kwargs.get("device") or "cpu")
            return real_rand(*size, **kwargs)

        monkeypatch.setattr(matcher_module.torch, "rand", rand)

    return install


@pytest.fixture
def exact_loss_points(monkeypatch):
    """Call with (h, w): the criterion's mask losses then use every pixel centre once."""

    def install(h, w):
        def sample_points(mask_logits, num_points, oversample_ratio, importance_sample_ratio):
            assert num_points == h * w, "set the criterion's num_points to h * w"
            return pixel_centres(h, w)[None].expand(len(mask_logits), -1, -1)

        monkeypatch.setattr(criterion_module, "sample_points", sample_points)

    return install
