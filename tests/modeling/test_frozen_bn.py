"""CachedFrozenBatchNorm2d (issue 22): Detectron2's FrozenBatchNorm2d values bit for bit, its
affine transform computed once, and recomputed whenever a buffer changes."""
import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

from dataseg.modeling.frozen_bn import CachedFrozenBatchNorm2d, cache_frozen_batchnorm


def _pair(c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ref = FrozenBatchNorm2d(c)
    for n in ("weight", "bias", "running_mean"):
        getattr(ref, n).copy_(torch.randn(c, generator=g))
    ref.running_var.copy_(torch.rand(c, generator=g) + 0.1)
    net = nn.Sequential(nn.Conv2d(3, c, 3), nn.Sequential(ref))
    cached = cache_frozen_batchnorm(nn.Sequential(nn.Conv2d(3, c, 3), nn.Sequential(
        FrozenBatchNorm2d(c))))
    cached.load_state_dict(net.state_dict())
    return net, cached


def _out_and_grad(net, x):
    net.zero_grad()
    y = net(x)
    (y * torch.arange(y.numel()).view_as(y)).sum().backward()
    return y.detach(), net[0].weight.grad.clone()


def test_same_values_and_gradients_bit_for_bit_and_fewer_operators():
    net, cached = _pair()
    assert type(cached[1][0]) is CachedFrozenBatchNorm2d
    assert set(cached.state_dict()) == set(net.state_dict())
    x = torch.randn(2, 3, 9, 9)
    for _ in range(2):  # the second call reads the cache
        y_ref, g_ref = _out_and_grad(net, x)
        y, g = _out_and_grad(cached, x)
        assert torch.equal(y, y_ref) and torch.equal(g, g_ref)
    with torch.no_grad():  # no gradients: Detectron2's fused batch_norm, unchanged
        assert torch.equal(cached(x), net(x))
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    feat = torch.randn(2, 6, 5, 5, requires_grad=True)
    with Count():
        cached[1][0](feat)
    assert Count.n == 2  # one multiply, one add


def test_the_cache_follows_in_place_changes_loads_and_dtype():
    net, cached = _pair()
    x = torch.randn(2, 3, 9, 9)
    _out_and_grad(cached, x)
    # in place (e.g. a test or a converter writing the buffers)
    for m in (net[1][0], cached[1][0]):
        m.running_var.mul_(3.0)
        m.bias.add_(1.0)
    assert torch.equal(_out_and_grad(cached, x)[0], _out_and_grad(net, x)[0])
    # a checkpoint load
    _, other = _pair(seed=1)
    cached.load_state_dict(other.state_dict())
    net.load_state_dict(other.state_dict())
    assert torch.equal(_out_and_grad(cached, x)[0], _out_and_grad(net, x)[0])
    # another dtype
    net64, cached64 = net.double(), cached.double()
    assert torch.equal(_out_and_grad(cached64, x.double())[0],
                       _out_and_grad(net64, x.double())[0])
