"""Host-to-device copies that do not make the host wait for the GPU."""
import torch

__all__ = ["host_to_device"]


def host_to_device(t: torch.Tensor, device) -> torch.Tensor:
    """``t`` on ``device``; a host tensor goes to a CUDA device through pinned memory,
    asynchronously (a plain copy from pageable memory makes the host wait for the GPU)."""
    device = torch.device(device)
    if t.device == device:
        return t
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
