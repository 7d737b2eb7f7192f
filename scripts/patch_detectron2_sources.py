"""Make the detectron2 v0.6 PyPI sources (pb1-detectron2) installable without their C++ sources.

The archive lacks ``detectron2/layers/csrc``, so its setup.py cannot build ``detectron2._C``.
Two minimal changes, both documented in docs/INSTALL.md and tested in tests/test_install.py:

1. setup.py builds no extension (``ext_modules=[]``).
2. ``detectron2/_C.py`` is added: a pure-Python module that answers the module-level
   ``from detectron2 import _C`` imports (deform_conv, roi_align_rotated, rotated_boxes,
   fast_eval_api) and raises ``Detectron2OpUnavailableError`` naming the op when one is called.

Usage: python scripts/patch_detectron2_sources.py <unpacked pb1-detectron2-0.6 dir>
"""
import sys
from pathlib import Path

STUB = Path(__file__).resolve().parent / "detectron2_C_stub.py"


def patch(src: Path) -> None:
    setup_py = src / "setup.py"
    text = setup_py.read_text()
    needle = "ext_modules=get_extensions(),"
    if needle not in text:
        raise SystemExit(f"{setup_py}: expected '{needle}' (is this pb1-detectron2 0.6?)")
    setup_py.write_text(text.replace(needle, "ext_modules=[],  # dataseg: no csrc in this archive"))
    target = src / "detectron2" / "_C.py"
    if (src / "detectron2" / "layers" / "csrc").exists():
        raise SystemExit(f"{src}: has csrc sources; build it normally instead of patching")
    target.write_text(STUB.read_text())
    print(f"patched {setup_py} and wrote {target}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit(__doc__)
    patch(Path(sys.argv[1]))
