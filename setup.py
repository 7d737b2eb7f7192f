"""Installs the ``dataseg`` package; builds the CUDA deformable-attention kernel when it can.

The kernel (``dataseg._C``) is only an accelerator: the pure-PyTorch path in
``dataseg.modeling.ops.ms_deform_attn`` is always importable and is used when it is absent.
``DATASEG_BUILD_CUDA``: ``auto`` (default) builds it when torch is a CUDA build and a CUDA
toolkit whose major version matches torch's is found, and only warns if the build fails;
``1`` forces the build (failures are errors); ``0`` never builds it.
``TORCH_CUDA_ARCH_LIST`` defaults to "8.0;9.0+PTX" (A100, H100/H200) when no GPU is visible.
"""
import glob
import os
import re
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "dataseg" / "modeling" / "ops" / "csrc"


def _nvcc_major(cuda_home):
    try:
        out = subprocess.run([os.path.join(cuda_home, "bin", "nvcc"), "--version"],
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    m = re.search(r"release (\d+)\.", out)
    return int(m.group(1)) if m else None


def _fix_cuda_home():
    """torch guesses CUDA_HOME as the parent of ``which nvcc``; a wrapper such as
    /usr/local/bin/nvcc makes that /usr/local, which has no CUDA headers or libcudart. Then use
    /usr/local/cuda instead (must run before torch.utils.cpp_extension is imported)."""
    if os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH"):
        return
    import shutil
    nvcc = shutil.which("nvcc")
    guess = os.path.dirname(os.path.dirname(os.path.realpath(nvcc))) if nvcc else None
    if guess and os.path.exists(os.path.join(guess, "include", "cuda_runtime.h")):
        return
    if os.path.exists("/usr/local/cuda/include/cuda_runtime.h"):
        os.environ["CUDA_HOME"] = "/usr/local/cuda"


def cuda_build():
    """Returns (ext_modules, cmdclass) for the kernel, or ([], {}) when it is not built."""
    mode = os.environ.get("DATASEG_BUILD_CUDA", "auto")
    if mode == "0":
        return [], {}
    _fix_cuda_home()
    sources = sorted(glob.glob(str(CSRC / "*.cpp")) + glob.glob(str(CSRC / "*.cu")))
    if not sources:
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except ImportError as e:
        if mode == "1":
            raise
        print(f"dataseg: not building the CUDA kernel ({e})", file=sys.stderr)
        return [], {}
    reason = None
    if torch.version.cuda is None:
        reason = "torch is a CPU-only build"
    elif CUDA_HOME is None:
        reason = "no CUDA toolkit found (set CUDA_HOME)"
    elif _nvcc_major(CUDA_HOME) != int(torch.version.cuda.split(".")[0]):
        reason = (f"nvcc in {CUDA_HOME} (major {_nvcc_major(CUDA_HOME)}) does not match "
                  f"torch's CUDA {torch.version.cuda}")
    if reason is not None:
        if mode == "1":
            raise RuntimeError(f"DATASEG_BUILD_CUDA=1 but {reason}")
        print(f"dataseg: not building the CUDA kernel: {reason}", file=sys.stderr)
        return [], {}
    if "TORCH_CUDA_ARCH_LIST" not in os.environ and not torch.cuda.is_available():
        os.environ["TORCH_CUDA_ARCH_LIST"] = "8.0;9.0+PTX"

    class OptionalBuildExtension(BuildExtension):
        """In auto mode a failed kernel build warns instead of failing the install."""

        def build_extension(self, ext):
            try:
                super().build_extension(ext)
            except Exception as e:  # noqa: BLE001
                if mode == "1":
                    raise
                print(f"dataseg: WARNING: CUDA kernel build failed, using the PyTorch path: {e}",
                      file=sys.stderr)

    ext = CUDAExtension(
        name="dataseg._C",
        sources=[os.path.relpath(s, ROOT) for s in sources],
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},
    )
    return [ext], {"build_ext": OptionalBuildExtension.with_options(use_ninja=False)}


ext_modules, cmdclass = cuda_build()

setup(
    name="dataseg",
    version="0.1.0",
    description="DaTaSeg: universal multi-dataset multi-task segmentation for Detectron2",
    python_requires=">=3.9",
    packages=find_packages(include=["dataseg", "dataseg.*"]),
    include_package_data=True,
    package_data={"dataseg": ["data/vocabularies/*.json", "data/vocabularies/*.txt",
                              "configs/*.yaml", "modeling/ops/csrc/*", "web/static/*"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": [
        "dataseg-collect-env=dataseg.collect_env:main",
    ]},
)
