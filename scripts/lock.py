"""Writes the version locks that scripts/install.sh installs with, one per stack and Python.

    python scripts/lock.py                      # every stack, every supported Python
    python scripts/lock.py --stack main --python 3.12

A stack is what scripts/install.sh chooses between (see docs/INSTALL.md):

- ``main``: Detectron2 main at the pinned commit (``requirements/detectron2.txt``), built from
  source with its compiled ops, on the newest releases: numpy 2, Pillow 11+, ...
- ``legacy``: Detectron2 v0.6's Python sources from PyPI (pb1-detectron2) without compiled ops,
  with the 2021 pins they need (``requirements/legacy.txt``: numpy<1.24, Pillow<10, ...);
  Python 3.11 and older only.

Each lock, ``requirements/locks/<stack>-py<X.Y>.txt``, is the full list of ``name==version``
that pip resolves for ``requirements/torch.txt`` + ``requirements/base.txt`` (+ legacy.txt) on
CPython X.Y, linux x86_64. It is resolved by that Python itself (so that environment markers
such as ``python_version >= "3.13"`` are those of the target) in a temporary virtual
environment with a recent pip, without installing anything (``pip install --dry-run
--report``): about a minute each. Each ``python3.X`` is looked for on PATH, then in pyenv's
versions.

Detectron2 itself, this project and ``requirements/nodeps.txt`` (hash-checked) are installed
apart from the lock and are not in it.
"""
import argparse
import datetime
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REQ = ROOT / "requirements"
LOCKS = REQ / "locks"
PYTHONS = ("3.10", "3.11", "3.12", "3.13")
STACKS = {"main": PYTHONS, "legacy": ("3.10", "3.11")}  # v0.6's numpy<1.24 stops at 3.11


def _pip(pip, *args, **kw):
    return subprocess.run([*pip, "--isolated", "--disable-pip-version-check", *args],
                          check=True, **kw)


def _inputs(stack):
    files = [REQ / "torch.txt", REQ / "base.txt"]
    return files + [REQ / "legacy.txt"] if stack == "legacy" else files


def find_python(version):
    """A working ``python3.X`` for ``version`` "3.X": pyenv's, else one on PATH (a pyenv shim
    on PATH may not run)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(Path(root, "versions").glob(f"{version}.*/bin/python{version}"),
                        reverse=True) + [shutil.which(f"python{version}")]
    for c in candidates:
        if c and subprocess.run([str(c), "-c", "pass"], capture_output=True).returncode == 0:
            return str(c)
    raise SystemExit(f"scripts/lock.py: no working python{version} in {root}/versions or on "
                     f"PATH: install Python {version}, or leave it out with --python")


def _resolve(pip, stack, report):
    """pip's resolution of the stack's requirements by the venv's own Python (a dry run)."""
    args = ["install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report)]
    for f in _inputs(stack):
        args += ["-r", str(f)]
    _pip(pip, *args)
    return {i["metadata"]["name"]: i["metadata"]["version"]
            for i in json.loads(report.read_text())["install"]}


def write_lock(stack, py, versions):
    LOCKS.mkdir(parents=True, exist_ok=True)
    path = LOCKS / f"{stack}-py{py}.txt"
    inputs = " + ".join(str(f.relative_to(ROOT)) for f in _inputs(stack))
    lines = [f"# Lock of the '{stack}' stack for CPython {py} (linux x86_64): {inputs}.",
             f"# Written by `python scripts/lock.py` on {datetime.date.today()}; do not edit.",
             "# scripts/install.sh installs with it as a pip constraints file."]
    lines += [f"{name}=={versions[name]}" for name in sorted(versions, key=str.lower)]
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stack", choices=sorted(STACKS), nargs="*", default=sorted(STACKS))
    parser.add_argument("--python", nargs="*", default=list(PYTHONS), choices=PYTHONS)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="dataseg_lock") as tmp:
        tmp = Path(tmp)
        for py in args.python:
            stacks = [s for s in args.stack if py in STACKS[s]]
            if not stacks:
                continue
            venv = tmp / f"venv{py}"
            subprocess.run([find_python(py), "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "python"), "-m", "pip"]
            _pip(pip, "install", "--quiet", "--upgrade", "pip")  # --report needs pip >= 22.2
            for stack in stacks:
                versions = _resolve(pip, stack, tmp / f"{stack}-{py}.json")
                print(f"{write_lock(stack, py, versions)}: {len(versions)} packages", flush=True)


if __name__ == "__main__":
    main()
