"""Stand-in for detectron2's compiled ``_C`` extension (installed by DaTaSeg's scripts/install.sh).

This detectron2 is the v0.6 Python sources from PyPI (pb1-detectron2), which ship without the
C++/CUDA sources, so its compiled ops do not exist. The Mask2Former-style DaTaSeg model needs none
of them. Importing this module works; calling any op raises ``Detectron2OpUnavailableError``.
"""

DATASEG_STUB = True
# Bumped when this file changes, so scripts/install.sh reinstalls an older copy.
STUB_VERSION = 3

UNAVAILABLE_OPS = (
    "deformable convolution on CUDA tensors (detectron2.layers.DeformConv on CPU tensors "
    "runs through torchvision; ModulatedDeformConv not at all)",
    "rotated boxes (detectron2.layers.nms_rotated, batched_nms_rotated, "
    "pairwise_iou_rotated, ROIAlignRotated, RotatedBoxes.iou)",
    "fast COCO evaluation (COCOeval_opt; use COCOEvaluator(..., use_fast_impl=False))",
)


class Detectron2OpUnavailableError(RuntimeError):
    """A compiled detectron2 op was called but this install has no compiled ops."""


def get_compiler_version():
    """Informational (detectron2.utils.collect_env calls it): there is no compiled extension."""
    return "none (detectron2 installed without compiled ops by DaTaSeg)"


def get_cuda_version():
    return "none (detectron2 installed without compiled ops by DaTaSeg)"


def has_cuda():
    return False


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    raise Detectron2OpUnavailableError(
        f"detectron2 compiled op '_C.{name}' is unavailable: this detectron2 is the v0.6 Python "
        "sources from PyPI (pb1-detectron2), installed without its C++/CUDA extension. "
        "Unavailable: " + "; ".join(UNAVAILABLE_OPS) + ". Install detectron2 from its GitHub "
        "repository to get them (see DaTaSeg's docs/INSTALL.md)."
    )


def _register_torch_ops():
    """detectron2.layers.nms_rotated calls torch.ops.detectron2.nms_rotated, an operator the
    compiled extension registers; define it here so that calling it raises the same error."""
    import torch

    def unavailable(*args, **kwargs):
        __getattr__("nms_rotated")

    try:
        lib = torch.library.Library("detectron2", "DEF")
        lib.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
        lib.impl("nms_rotated", unavailable, "CompositeExplicitAutograd")
    except RuntimeError:  # already defined (a real extension is loaded): leave it alone
        return None
    return lib


_TORCH_OPS = _register_torch_ops()
